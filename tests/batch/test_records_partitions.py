"""Batch input validation, partitioning and part files (pure Python, no engine, no cluster)."""

import json

import pytest

from kaon.batch.job import default_partition_size
from kaon.batch.partitions import PartStore, job_fingerprint, split
from kaon.batch.records import read_records, records_from_prompts
from kaon.cli import main
from kaon.sampling_params import SamplingParams

DEFAULTS = SamplingParams(temperature=0.0, max_tokens=8)


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_records_take_line_fields_over_defaults(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [
        json.dumps({"id": "a", "prompt": "Hi", "max_tokens": 3, "stop": "x"}),
        "",  # blank lines are skipped and do not count as records
        json.dumps({"messages": [{"role": "user", "content": "Hello"}], "seed": 5}),
        json.dumps({"id": 9, "prompt": [1, 2, 3], "temperature": 0.5}),
    ])  # fmt: skip
    records = read_records(path, DEFAULTS)
    assert [r.index for r in records] == [0, 1, 2]
    assert [r.id for r in records] == ["a", 1, 9]  # a missing id defaults to the index
    assert records[0].sampling_params.max_tokens == 3
    assert records[0].sampling_params.stop == ["x"]
    assert records[0].sampling_params.temperature == 0.0
    assert records[1].messages == [{"role": "user", "content": "Hello"}]
    assert records[1].sampling_params.seed == 5 and records[1].sampling_params.max_tokens == 8
    assert records[2].prompt == [1, 2, 3] and records[2].sampling_params.temperature == 0.5


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": 1, "prompt": "x", "temprature": 0.5}', "line 2: unknown field 'temprature'"),
        ('{"id": 1}', "line 2: exactly one of the fields 'prompt' and 'messages'"),
        ('{"prompt": "x", "messages": []}', "line 2: exactly one of the fields"),
        ('{"prompt": ""}', "line 2: field 'prompt' must be a non-empty string"),
        ('{"prompt": [1, "a"]}', "line 2: field 'prompt' must be"),
        ('{"messages": [{"role": "user"}]}', "line 2: field 'messages' must be"),
        ('{"prompt": "x", "max_tokens": 0}', "line 2: field 'max_tokens': max_tokens must be >= 1"),
        ('{"prompt": "x", "temperature": -1}', "line 2: field 'temperature'"),
        ('{"prompt": "x", "id": [1]}', "line 2: field 'id' must be a string or a number"),
        ('{"prompt": "x"', "line 2: invalid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_bad_line_names_the_line_and_field(tmp_path, line, message):
    path = write_lines(tmp_path / "in.jsonl", ['{"prompt": "fine"}', line])
    with pytest.raises(ValueError) as info:
        read_records(path, DEFAULTS)
    assert str(info.value).startswith(f"{path} {message}"), str(info.value)


def test_empty_input_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no input records"):
        read_records(write_lines(tmp_path / "in.jsonl", [""]), DEFAULTS)


def test_python_api_records_name_the_prompt_index():
    records = records_from_prompts(["a", [{"role": "user", "content": "b"}], [5, 6]], DEFAULTS)
    assert [r.prompt for r in records] == ["a", None, [5, 6]]
    assert records[1].messages == [{"role": "user", "content": "b"}]
    with pytest.raises(ValueError, match=r"^prompts\[1\]: field 'prompt'"):
        records_from_prompts(["a", ""], DEFAULTS)
    with pytest.raises(ValueError, match="sampling_params has 1 entries for 2 prompts"):
        records_from_prompts(["a", "b"], [DEFAULTS])


def test_cli_rejects_a_bad_line_before_starting_a_cluster(tmp_path, capsys):
    path = write_lines(tmp_path / "in.jsonl", ['{"prompt": "ok"}', '{"prompt": "x", "top_p": 2}'])
    code = main(["batch", path, str(tmp_path / "out.jsonl"), "--local-workers", "1"])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"kaon: error: {path} line 2: field 'top_p': top_p must be in (0, 1], got 2"
    assert not (tmp_path / "out.jsonl.parts").exists()


def test_split_covers_every_record_once():
    assert split(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert split(8, 4) == [range(0, 4), range(4, 8)]
    assert split(3, 100) == [range(0, 3)]
    with pytest.raises(ValueError, match="partition_size must be a positive integer"):
        split(3, 0)
    assert default_partition_size(200, 2) == 25
    assert default_partition_size(3, 4) == 1
    assert default_partition_size(100_000, 2) == 256


def test_part_store_resumes_only_the_same_job(tmp_path):
    input_path = write_lines(tmp_path / "in.jsonl", ['{"prompt": "a"}'] * 5)
    partitions = split(5, 2)
    fingerprint = job_fingerprint(input_path, 2, {"max_tokens": 8})
    store = PartStore(tmp_path / "out.jsonl")
    store.open(fingerprint, len(partitions))
    assert store.finished(len(partitions)) == set()
    store.write_part(1, [{"index": 2, "text": "c"}, {"index": 3, "text": "d"}])
    assert store.finished(len(partitions)) == {1}
    assert not [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="part-00000.jsonl is missing"):
        store.assemble(partitions)
    store.write_part(0, [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}])
    store.write_part(2, [{"index": 4, "text": "e"}])
    assert store.assemble(partitions) == 5
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["a", "b", "c", "d", "e"]
    # Same job: resumes. Other options or input: refuses to mix old parts in.
    PartStore(tmp_path / "out.jsonl").open(fingerprint, len(partitions))
    other = job_fingerprint(input_path, 2, {"max_tokens": 9})
    with pytest.raises(ValueError, match="holds partitions of a different job"):
        PartStore(tmp_path / "out.jsonl").open(other, len(partitions))
