"""``kaon eval generate | choice`` end to end on the shipped data sets (first items only), with
the real default model; scores are checked against the per-item records of the same JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaon.cli import main
from kaon.eval.metrics import best_over_references

ENGINE_FLAGS = ["--kv-cache-memory-bytes", str(32 * 2**20), "--max-model-len", "256",
                "--quantization", "none"]  # fmt: skip


def test_generate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "generate.json"
    argv = ["eval", "generate", "--limit", "3", "--max-tokens", "12", "--output-json", str(path)]
    assert main(argv + ENGINE_FLAGS) == 0
    result = json.loads(path.read_text())
    assert result["eval"] == "generate" and result["num_items"] == 3
    assert result["settings"]["data"].endswith("kaon/eval/data/qa.jsonl")
    items = result["items"]
    # Greedy answer of SmolLM2-135M-Instruct (float32) to the first shipped question.
    assert items[0]["answers"] == ["Paris"] and "Paris" in items[0]["prediction"]
    for item in items:
        assert item["f1"] == best_over_references(item["prediction"], item["answers"], "f1")
        assert item["em"] == best_over_references(item["prediction"], item["answers"], "em")
    assert result["f1"] == pytest.approx(sum(item["f1"] for item in items) / 3)
    assert result["exact_match"] == pytest.approx(sum(item["em"] for item in items) / 3)
    speed = result["speed"]
    assert speed["num_requests"] == 3 and 3 <= speed["num_output_tokens"] <= 36
    assert speed["output_tokens_per_s"] == pytest.approx(
        speed["num_output_tokens"] / speed["elapsed_s"]
    )
    assert 0 < speed["ttft_s"]["median"] <= speed["e2e_s"]["median"]
    assert "token F1" in capsys.readouterr().out


def test_choice_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "choice.json"
    argv = ["eval", "choice", "--limit", "2", "--output-json", str(path)]
    assert main(argv + ENGINE_FLAGS) == 0
    result = json.loads(path.read_text())
    assert result["eval"] == "choice" and result["num_items"] == 2
    items = result["items"]
    # "What is the capital of France?": " Paris" is by far the likeliest of the four choices.
    france = items[0]["logprobs"]
    assert len(france) == 4 and all(value < 0 for value in france)
    assert items[0]["pick"] == 0 and france[0] == pytest.approx(-4.51, abs=0.05)
    for item in items:
        assert item["pick"] == max(range(4), key=item["logprobs"].__getitem__)
    assert result["acc"] == pytest.approx(sum(i["pick"] == i["answer"] for i in items) / 2)
    assert result["acc_norm"] == pytest.approx(
        sum(i["pick_norm"] == i["answer"] for i in items) / 2
    )
    # One request per choice, each generating one token.
    assert result["speed"]["num_requests"] == 8 and result["speed"]["num_output_tokens"] == 8
    assert "acc_norm" in capsys.readouterr().out


def test_bad_data_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q"}\n')
    assert main(["eval", "generate", "--data", str(path)]) == 2
    assert main(["eval", "choice", "--data", str(tmp_path / "missing.jsonl")]) == 2
