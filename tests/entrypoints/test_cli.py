"""`kaon generate` and `kaon chat` as a user runs them (a real subprocess, the default model)."""

import subprocess
import sys

FRANCE = "The capital of France is"
# --quantization none: the exact greedy strings below were recorded on float32 weights.
SMALL = ["--kv-cache-memory", "100M", "--max-model-len", "1024", "--quantization", "none"]


def run_kaon(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kaon", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_prints_the_greedy_text():
    result = run_kaon("generate", "--no-chat-template", FRANCE, "--max-tokens", "20", *SMALL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == " Paris.\n\nThe answer is: 2018-01-22 \n"
    assert "KV cache:" in result.stderr and "maximum concurrency" in result.stderr


def test_chat_streams_a_multi_turn_conversation():
    turns = "Write a haiku about the sea\n/reset\nWrite a haiku about the sea\n"
    result = run_kaon("chat", "--max-tokens", "12", *SMALL, stdin=turns)
    assert result.returncode == 0, result.stderr
    first = "In the depths of the ocean, a lone soul,\n"
    # Same question after /reset: the same greedy answer, printed twice.
    assert result.stdout == f"{first}\n{first}\n"


def test_bad_arguments_give_one_clear_line():
    result = run_kaon("generate", "hi", "--max-tokens", "0", *SMALL)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "kaon: error: max_tokens must be >= 1, got 0"
    result = run_kaon("generate", "hi", "--model", "/nonexistent.gguf")
    assert result.returncode == 2
    assert "model path /nonexistent.gguf does not exist" in result.stderr
    assert "Traceback" not in result.stderr
