"""`kaon batch` on a real Dask LocalCluster (2 worker processes, the default model on each):
outputs equal single-process generation, a killed worker loses nothing, a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from kaon.batch import generate, run_batch_job
from kaon.batch.cluster import dask_client
from kaon.sampling_params import SamplingParams
from tests.conftest import ENGINE_TEST_OPTIONS

NUM_PROMPTS = 96
PARTITION_SIZE = 12  # 8 partitions
WORKER_OPTIONS = {**ENGINE_TEST_OPTIONS, "num_threads": 1}  # 2 workers x 1 thread on 2 cores
DEFAULTS = SamplingParams(temperature=0.0, max_tokens=8)


def input_lines() -> list[dict]:
    """Mixed input: plain prompts, every 10th a chat conversation, every 7th its own max_tokens."""
    lines = []
    for i in range(NUM_PROMPTS):
        line: dict = {"id": f"req-{i}"}
        if i % 10 == 0:
            line["messages"] = [{"role": "user", "content": f"Name a color, number {i}."}]
        else:
            line["prompt"] = f"Fact number {i} about the sea:"
        if i % 7 == 0:
            line["max_tokens"] = 4
        lines.append(line)
    return lines


@pytest.fixture(scope="module")
def input_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("batch") / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in input_lines()))
    return str(path)


@pytest.fixture(scope="module")
def expected(llm) -> list[tuple[str, list[int]]]:
    """(text, token_ids) of every line from the single-process LLM (same options, greedy): one
    generate for the prompts, one chat for the conversations, each with per-line params."""
    lines = input_lines()
    params = [
        SamplingParams(temperature=0.0, max_tokens=line.get("max_tokens", 8)) for line in lines
    ]
    chat_rows = [i for i, line in enumerate(lines) if "messages" in line]
    text_rows = [i for i, line in enumerate(lines) if "prompt" in line]
    texts = llm.generate(
        [lines[i]["prompt"] for i in text_rows], [params[i] for i in text_rows], use_tqdm=False
    )
    chats = llm.chat(
        [lines[i]["messages"] for i in chat_rows], [params[i] for i in chat_rows], use_tqdm=False
    )
    outputs = dict(zip(text_rows + chat_rows, texts + chats, strict=True))
    return [(o.outputs[0].text, list(o.outputs[0].token_ids)) for _, o in sorted(outputs.items())]


@pytest.fixture(scope="module")
def client():
    with dask_client(None, 2) as dask:
        yield dask


def read_output(path) -> list[dict]:
    with open(path) as file:
        return [json.loads(line) for line in file]


def assert_output_matches(path, expected) -> None:
    lines = read_output(path)
    assert [line["index"] for line in lines] == list(range(NUM_PROMPTS))
    assert [line["id"] for line in lines] == [f"req-{i}" for i in range(NUM_PROMPTS)]
    assert [(line["text"], line["token_ids"]) for line in lines] == expected
    for line in lines:
        assert line["finish_reason"] in ("stop", "length")
        usage = line["usage"]
        assert usage["completion_tokens"] == len(line["token_ids"])
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_job_equals_single_process_and_rerun_skips_written_parts(
    client, input_path, expected, tmp_path
):
    output = tmp_path / "out.jsonl"
    report = run_batch_job(
        client, input_path, output, DEFAULTS, WORKER_OPTIONS, PARTITION_SIZE, use_tqdm=False
    )
    assert report.num_partitions == 8 and report.skipped_partitions == []
    assert sorted(report.executed_partitions) == list(range(8))
    # One engine per worker process, loaded once and reused for all its partitions.
    assert 1 <= len(report.engine_loads) <= 2
    assert set(report.engine_loads.values()) == {1}
    assert_output_matches(output, expected)
    first = output.read_text()

    # An interrupted job: two parts and the output are gone. The rerun runs only those two.
    parts = output.with_name("out.jsonl.parts")
    (parts / "part-00003.jsonl").unlink()
    (parts / "part-00006.jsonl").unlink()
    output.unlink()
    rerun = run_batch_job(
        client, input_path, output, DEFAULTS, WORKER_OPTIONS, PARTITION_SIZE, use_tqdm=False
    )
    assert sorted(rerun.executed_partitions) == [3, 6]
    assert rerun.skipped_partitions == [0, 1, 2, 4, 5, 7]
    assert output.read_text() == first

    # A complete job: nothing runs again.
    again = run_batch_job(
        client, input_path, output, DEFAULTS, WORKER_OPTIONS, PARTITION_SIZE, use_tqdm=False
    )
    assert again.executed_partitions == [] and len(again.skipped_partitions) == 8
    assert output.read_text() == first


def test_killed_worker_loses_nothing(client, input_path, expected, tmp_path):
    output = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    pids = client.run(os.getpid)  # worker address -> process id
    outcome: dict = {}

    def job() -> None:
        try:
            outcome["report"] = run_batch_job(
                client, input_path, output, DEFAULTS, WORKER_OPTIONS, PARTITION_SIZE,
                use_tqdm=False,
            )  # fmt: skip
        except BaseException as error:  # surfaced by the assertions below
            outcome["error"] = error

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 600
    while not list(parts.glob("part-*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(parts.glob("part-*.jsonl")), "no partition finished"
    busy = [address for address, keys in client.processing().items() if keys]
    assert busy, "no worker had a partition running when the first part was written"
    os.kill(pids[busy[0]], signal.SIGKILL)  # mid-partition: its tasks must run again elsewhere
    thread.join(timeout=900)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert sorted(report.executed_partitions) == list(range(8))
    assert_output_matches(output, expected)


def test_python_api_returns_request_outputs_in_input_order(client, llm):
    prompts = [f"Fact number {i} about the sea:" for i in range(12)]
    prompts.append([{"role": "user", "content": "Name a color."}])
    results = generate(client, prompts, DEFAULTS, use_tqdm=False, **WORKER_OPTIONS)
    reference = llm.generate(prompts[:-1], DEFAULTS, use_tqdm=False)
    reference += llm.chat([prompts[-1]], DEFAULTS, use_tqdm=False)
    assert [r.request_id for r in results] == [str(i) for i in range(len(prompts))]
    assert [r.outputs[0].token_ids for r in results] == [r.outputs[0].token_ids for r in reference]
    assert [r.outputs[0].text for r in results] == [r.outputs[0].text for r in reference]
    with pytest.raises(ValueError, match=r"^prompts\[1\]: field 'prompt'"):
        generate(client, ["ok", ""], DEFAULTS, **WORKER_OPTIONS)
