"""kaon.tokenizer against llama.cpp's tokenization of the Gemma 3 GGUF (SentencePiece vocabulary
of 262,144 pieces with byte fallback, no space prefix, BOS added)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "gemma3_tokenization.json").read_text(encoding="utf-8")
)
CASES = FIXTURE["cases"]
BOS, EOS, END_OF_TURN = 2, 1, 106


@pytest.fixture(scope="module")
def gemma3_tokenizer(gemma3_llm):
    return gemma3_llm.tokenizer


def test_fixture_covers_varied_text():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_encode_matches_llama_cpp(gemma3_tokenizer, case: dict) -> None:
    assert gemma3_tokenizer.encode(case["text"], add_special_tokens=False) == case["ids"]
    assert gemma3_tokenizer.decode(case["ids"], skip_special_tokens=False) == case["text"]


def test_bos_eos_end_of_turn_and_chat_template(gemma3_tokenizer) -> None:
    tok = gemma3_tokenizer
    assert tok.encode(FIXTURE["with_bos"]["text"]) == FIXTURE["with_bos"]["ids"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.add_bos_token) == (BOS, EOS, True)
    assert tok.eos_token_ids == {EOS, END_OF_TURN}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi! "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    assert tok.apply_chat_template(messages) == (
        "<start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
