"""IncrementalDetokenizer: UTF-8 hold-back, stop strings, and incremental == one-shot decode."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kaon.detokenizer import IncrementalDetokenizer
from kaon.tokenizer import Tokenizer

CASES = json.loads(
    (Path(__file__).parent / "fixtures" / "smollm2_tokenization.json").read_text(encoding="utf-8")
)["cases"]
FOX = "The quick brown fox jumps over the lazy dog"
# "The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog"
FOX_IDS = [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767]


def feed(detokenizer: IncrementalDetokenizer, ids: list[int], chunk: int = 1) -> list[str]:
    """Deltas of update() over `ids` in chunks of `chunk`, then finish(); stops at a stop string."""
    deltas = []
    for start in range(0, len(ids), chunk):
        delta, stop = detokenizer.update(ids[start : start + chunk])
        deltas.append(delta)
        if stop is not None:
            return deltas
    deltas.append(detokenizer.finish())
    return deltas


def test_emoji_and_cjk_one_token_at_a_time(smollm2_tokenizer: Tokenizer) -> None:
    text = "😀🎉 中文"
    ids = smollm2_tokenizer.encode(text)
    assert ids == [10813, 242, 218, 10813, 232, 227, 216, 28589, 29184]
    deltas = feed(IncrementalDetokenizer(smollm2_tokenizer, None), ids)
    # Each emoji spans 3 tokens: nothing is emitted until its last byte arrives.
    assert deltas == ["", "", "😀", "", "", "🎉", " ", "中", "文", ""]


@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_incremental_equals_one_shot(smollm2_tokenizer: Tokenizer, case: dict, chunk: int) -> None:
    ids = case["ids"]
    for skip_special_tokens in (True, False):
        detokenizer = IncrementalDetokenizer(
            smollm2_tokenizer, ids[:3], skip_special_tokens=skip_special_tokens
        )
        deltas = feed(detokenizer, ids, chunk)
        assert not any("\ufffd" in delta for delta in deltas)
        expected = smollm2_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        assert "".join(deltas) == detokenizer.output_text == expected


def test_special_tokens_skipped(smollm2_tokenizer: Tokenizer) -> None:
    ids = smollm2_tokenizer.encode("Hi<|im_end|>")
    assert feed(IncrementalDetokenizer(smollm2_tokenizer, None), ids) == ["Hi", "", ""]
    kept = IncrementalDetokenizer(smollm2_tokenizer, None, skip_special_tokens=False)
    assert feed(kept, ids) == ["Hi", "<|im_end|>", ""]


def test_stop_string_spanning_tokens(smollm2_tokenizer: Tokenizer) -> None:
    stop = "own fox ju"  # starts inside " brown", ends inside " jumps"
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, None, stop=["zzz", stop])
    results = [detokenizer.update([i]) for i in FOX_IDS[:5]]
    # " brown" is emitted only up to where the stop string could begin.
    assert results == [("The", None), (" quick", None), (" br", None), ("", None), ("", stop)]
    assert detokenizer.output_text == "The quick br" == FOX[: FOX.index(stop)]
    assert detokenizer.stop_reason == stop
    # After the stop, further tokens and finish() add nothing.
    assert detokenizer.update([690]) == ("", None)
    assert detokenizer.finish() == ""
    assert detokenizer.output_text == "The quick br"


def test_stop_prefix_released_when_it_does_not_complete(smollm2_tokenizer: Tokenizer) -> None:
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, None, stop=["fox cat"])
    deltas = feed(detokenizer, FOX_IDS)
    # "fox" is held after " fox" arrives, released with " jumps"; no prefix leaks early.
    assert deltas == [
        "The",
        " quick",
        " brown",
        " ",
        "fox jumps",
        " over",
        " the",
        " lazy",
        " dog",
        "",
    ]
    assert detokenizer.output_text == FOX and detokenizer.stop_reason is None


def test_include_stop_str_in_output(smollm2_tokenizer: Tokenizer) -> None:
    detokenizer = IncrementalDetokenizer(
        smollm2_tokenizer, None, stop=["own fox ju"], include_stop_str_in_output=True
    )
    assert feed(detokenizer, FOX_IDS) == ["The", " quick", " br", "", "own fox ju"]
    assert detokenizer.output_text == "The quick brown fox ju"


def test_first_completed_stop_string_wins(smollm2_tokenizer: Tokenizer) -> None:
    # Both complete in the same update; "fox" ends first although "brown fox" starts first.
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, None, stop=["brown fox jumps", "fox"])
    assert detokenizer.update(FOX_IDS) == ("The quick brown ", "fox")
    assert detokenizer.output_text == "The quick brown "


def test_finish_flushes_held_text(smollm2_tokenizer: Tokenizer) -> None:
    # The text ends in "dog", a prefix of the stop string that never completes.
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, None, stop=["dog!!"])
    deltas = feed(detokenizer, FOX_IDS)
    assert deltas[-2:] == [" ", "dog"]
    assert "".join(deltas) == detokenizer.output_text == FOX
    # A trailing incomplete character comes out as U+FFFD only at the end, as in one-shot decode.
    partial = [504, 10813, 242]  # "The" + first 3 bytes of 😀
    detokenizer = IncrementalDetokenizer(smollm2_tokenizer, None)
    assert feed(detokenizer, partial) == ["The", "", "", "\ufffd"]
    assert detokenizer.output_text == smollm2_tokenizer.decode(partial) == "The\ufffd"


def test_bad_stop(smollm2_tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="stop"):
        IncrementalDetokenizer(smollm2_tokenizer, None, stop=["ok", ""])


def test_sentencepiece_window(tiny_spm_fields: dict[str, object]) -> None:
    tok = Tokenizer.from_gguf(tiny_spm_fields)
    # "▁h", <0xC3>, <0xA9>: a run of byte tokens is held until it ends (here: at finish()).
    detokenizer = IncrementalDetokenizer(tok, None)
    assert feed(detokenizer, [20, 4, 5]) == ["h", "", "", "é"]
    assert detokenizer.output_text == tok.decode([20, 4, 5]) == "hé"
    # With the prompt as context, the word-initial space of the first output token is kept.
    detokenizer = IncrementalDetokenizer(tok, [1, 23], stop=["d h"])
    assert feed(detokenizer, [25, 20, 4, 5]) == [" worl", ""]
    assert detokenizer.output_text == " worl" and detokenizer.stop_reason == "d h"


def random_ids(rng: random.Random, choices: list[int], max_len: int) -> list[int]:
    return [rng.choice(choices) for _ in range(rng.randrange(1, max_len))]


def test_random_ids_incremental_equals_one_shot(
    smollm2_tokenizer: Tokenizer, tiny_spm_fields: dict[str, object]
) -> None:
    """Random ids (often invalid UTF-8, special tokens in between): deltas == one-shot decode."""
    rng = random.Random(0)
    spm = Tokenizer.from_gguf(tiny_spm_fields)
    # Byte-level: mostly tokens of 1 byte or non-ASCII bytes, so characters split and break.
    partial = [i for i in range(20000) if smollm2_tokenizer.id_to_token_bytes(i)[:1] >= b"\x80"]
    smollm2_choices = partial[:300] + list(range(17)) + FOX_IDS
    for tok, choices in ((smollm2_tokenizer, smollm2_choices), (spm, list(range(27)))):
        for _ in range(300):
            ids = random_ids(rng, choices, 16)
            skip_special_tokens = rng.random() < 0.5
            detokenizer = IncrementalDetokenizer(tok, None, skip_special_tokens)
            deltas = feed(detokenizer, ids, chunk=rng.choice([1, 2]))
            assert "".join(deltas) == tok.decode(ids, skip_special_tokens), ids


def test_sentencepiece_byte_run_is_held(tiny_spm_fields: dict[str, object]) -> None:
    # tokenizers' ByteFallback decodes <0xC3> <0xA9> <0xA9> as one invalid group: 3 x U+FFFD,
    # so "é" must not be emitted after the second byte token.
    tok = Tokenizer.from_gguf(tiny_spm_fields)
    ids = [22, 4, 5, 5, 24]  # "hello", <0xC3>, <0xA9>, <0xA9>, "▁wor"
    assert feed(IncrementalDetokenizer(tok, None), ids) == [
        "hello",
        "",
        "",
        "",
        "\ufffd" * 3 + " wor",
        "",
    ]
    assert tok.decode(ids) == "hello\ufffd\ufffd\ufffd wor"
