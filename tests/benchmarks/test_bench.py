"""``kaon bench throughput | latency`` end to end on tiny settings (real default model, no
transformers: too slow here), plus the arithmetic of the helpers behind them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kaon.benchmarks.common import (
    percentile,
    random_prompts,
    read_dataset,
    sample_lengths,
    summarize,
)
from kaon.benchmarks.hf_baseline import left_pad
from kaon.cli import main

# A small KV cache keeps start-up and RSS low; max_model_len must fit it.
ENGINE_FLAGS = ["--kv-cache-memory-bytes", str(32 * 2**20), "--max-model-len", "256"]


def _close(actual: float, expected: float) -> bool:
    return math.isclose(actual, expected, rel_tol=1e-6)


def test_percentile_interpolates_linearly_like_numpy() -> None:
    values = [10.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0]  # unsorted on purpose
    # rank = (n - 1) * q / 100 into the sorted list 1..10
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == pytest.approx(5.5)  # rank 4.5
    assert percentile(values, 90) == pytest.approx(9.1)  # rank 8.1
    assert percentile(values, 99) == pytest.approx(9.91)  # rank 8.91
    assert percentile(values, 100) == 10.0
    assert percentile([3.0, 1.0, 2.0], 25) == pytest.approx(1.5)  # rank 0.5
    assert percentile([4.0], 99) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_gives_mean_median_p90_p99() -> None:
    summary = summarize([1.0, 2.0, 3.0, 4.0])
    assert summary == pytest.approx({"mean": 2.5, "median": 2.5, "p90": 3.7, "p99": 3.97})


def test_random_prompts_are_seeded_and_skip_special_ids() -> None:
    prompts = random_prompts(3, 50, vocab_size=10, special_ids=[0, 1], seed=7)
    assert prompts == random_prompts(3, 50, vocab_size=10, special_ids=[0, 1], seed=7)
    assert prompts != random_prompts(3, 50, vocab_size=10, special_ids=[0, 1], seed=8)
    assert [len(prompt) for prompt in prompts] == [50, 50, 50]
    assert {token_id for prompt in prompts for token_id in prompt} == set(range(2, 10))


def test_read_dataset_jsonl_and_text_repeat_to_num_prompts(tmp_path: Path) -> None:
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "a b"}\n\n{"prompt": "c", "other": 1}\n')
    assert read_dataset(str(jsonl), 5) == ["a b", "c", "a b", "c", "a b"]
    text = tmp_path / "prompts.txt"
    text.write_text("first line\nsecond line\n")
    assert read_dataset(str(text), 1) == ["first line"]
    jsonl.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_dataset(str(jsonl), 1)


def test_left_pad_masks_the_padding() -> None:
    input_ids, attention_mask = left_pad([[5, 6], [7, 8, 9]], pad_token_id=0)
    assert input_ids.tolist() == [[0, 5, 6], [7, 8, 9]]
    assert attention_mask.tolist() == [[0, 1, 1], [1, 1, 1]]


def test_bad_size_is_an_error_before_loading() -> None:
    assert main(["bench", "throughput", "--num-prompts", "0"]) == 2
    assert main(["bench", "latency", "--output-len", "1"]) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "latency"],
        ["bench", "throughput"],
        ["eval", "generate"],
        ["eval", "choice"],
        ["chat"],
    ],  # fmt: skip
)
def test_one_engine_commands_refuse_data_parallel_before_loading(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--data-parallel-size", "2"]) == 2
    error = capsys.readouterr().err
    assert f"data_parallel_size must be 1 for kaon {' '.join(argv)}" in error
    assert "kaon serve --data-parallel-size N" in error


def test_throughput_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "throughput.json"
    argv = ["bench", "throughput", "--num-prompts", "4", "--input-len", "8", "--output-len", "4"]
    assert main([*argv, "--output-json", str(path), *ENGINE_FLAGS]) == 0
    result = json.loads(path.read_text())
    settings, kaon = result["settings"], result["kaon"]
    assert (settings["num_prompts"], settings["input_len"], settings["output_len"]) == (4, 8, 4)
    assert settings["engine_options"]["max_model_len"] == 256
    assert result["machine"]["num_cores"] >= 1 and result["machine"]["torch_num_threads"] >= 1
    assert "transformers" not in result
    assert [(r["prompt_len"], r["output_len"]) for r in kaon["requests"]] == [(8, 4)] * 4
    for request in kaon["requests"]:
        assert 0 < request["ttft"] <= request["e2e"] and request["tpot"] > 0
    elapsed = kaon["elapsed_s"]
    assert (kaon["num_prompt_tokens"], kaon["num_output_tokens"]) == (32, 16)
    assert _close(kaon["output_tokens_per_s"], 4 * 4 / elapsed)
    assert _close(kaon["requests_per_s"], 4 / elapsed)
    assert _close(kaon["total_tokens_per_s"], (32 + 16) / elapsed)
    assert kaon["ttft_s"] == pytest.approx(summarize([r["ttft"] for r in kaon["requests"]]))
    assert 0 < kaon["peak_kv_cache_usage"] <= 1 and kaon["peak_rss_mib"] > 100
    stdout = capsys.readouterr().out
    assert "machine: " in stdout and "output tokens/s" in stdout


def test_latency_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latency.json"
    argv = ["bench", "latency", "--input-len", "8", "--output-len", "4", "--num-iters", "2"]
    argv += ["--num-iters-warmup", "0", "--bandwidth-mib", "64", "--output-json", str(path)]
    assert main(argv + ENGINE_FLAGS) == 0
    result = json.loads(path.read_text())
    kaon, floor = result["kaon"], result["floor"]
    assert result["settings"]["num_iters"] == 2 and len(kaon["requests"]) == 2
    assert [(r["prompt_len"], r["output_len"]) for r in kaon["requests"]] == [(8, 4)] * 2
    for key in ("ttft", "tpot", "e2e"):
        assert kaon[key] == pytest.approx(summarize([r[key] for r in kaon["requests"]]))
    assert _close(kaon["decode_tokens_per_s"], 1 / kaon["tpot"]["mean"])
    # SmolLM2-135M on its own GGUF blocks (the default): Q4_1 layers and the Q8_0 tied
    # embedding counted once, 96.6 MB; float32 would be 134.5M parameters x 4 bytes = 538 MB.
    assert 95e6 < floor["weight_bytes_per_step"] < 98e6
    expected_floor = floor["memory_bandwidth_bytes_per_s"] / floor["weight_bytes_per_step"]
    assert _close(floor["floor_tokens_per_s"], expected_floor)
    assert _close(floor["kaon_ratio_to_floor"], kaon["decode_tokens_per_s"] / expected_floor)
    stdout = capsys.readouterr().out
    assert "TPOT (s/token)" in stdout and "bandwidth floor" in stdout


def test_sample_lengths_uniform_in_range() -> None:
    assert sample_lengths(4, 10, 0.0, seed=1) == [10, 10, 10, 10]
    lengths = sample_lengths(200, 10, 0.5, seed=1)
    assert lengths == sample_lengths(200, 10, 0.5, seed=1)
    assert set(lengths) == set(range(5, 16))  # round(5) .. round(15), every value drawn
    assert sample_lengths(50, 2, 0.9, seed=0) and min(sample_lengths(50, 2, 0.9, seed=0)) >= 1
    with pytest.raises(ValueError):
        sample_lengths(1, 10, 1.0, seed=0)


def test_throughput_sampled_lengths(tmp_path: Path) -> None:
    path = tmp_path / "sampled.json"
    argv = ["bench", "throughput", "--num-prompts", "3", "--input-len", "8", "--output-len", "4"]
    argv += ["--range-ratio", "0.5", "--seed", "5", "--output-json", str(path)]
    assert main(argv + ENGINE_FLAGS) == 0
    kaon = json.loads(path.read_text())["kaon"]
    expected_in = sample_lengths(3, 8, 0.5, seed=5)
    expected_out = sample_lengths(3, 4, 0.5, seed=7)  # output lengths use seed + 2
    assert [r["prompt_len"] for r in kaon["requests"]] == expected_in
    assert [r["output_len"] for r in kaon["requests"]] == expected_out
    assert kaon["num_output_tokens"] == sum(expected_out)
    assert main(["bench", "throughput", "--range-ratio", "0.5", "--compare-hf"]) == 2
