"""SQuAD-style normalisation, exact match, token F1 and the multiple-choice arithmetic, against
hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaon.eval.choice import accuracy, context, continuation_logprob
from kaon.eval.choice import parse_items as parse_choice_items
from kaon.eval.common import packaged_data, read_jsonl
from kaon.eval.generate import parse_items, prediction, score
from kaon.eval.metrics import best_over_references, exact_match, normalize_answer, token_f1
from kaon.outputs import Logprob


def test_normalize_answer_squad_rules() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("  theatre  ") == "theatre"  # 'the' only as a whole word
    assert normalize_answer("...") == ""


def test_exact_match_and_f1_hand_computed() -> None:
    assert exact_match("The Paris.", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    # "capital of france is paris" vs "paris": 1 common; P = 1/5, R = 1 -> F1 = 2/6.
    assert token_f1("The capital of France is Paris.", "Paris") == pytest.approx(1 / 3)
    # "new york city" vs "york city": 2 common; P = 2/3, R = 1 -> F1 = 0.8.
    assert token_f1("New York City", "York City") == pytest.approx(0.8)
    # Counts are clipped: "a a b" -> "b" after articles; use non-articles: "x x y" vs "x y y".
    # common = min(2,1) + min(1,2) = 2; P = R = 2/3 -> F1 = 2/3.
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("blue", "red") == 0.0
    assert token_f1("the", "a") == 1.0  # both empty after normalisation
    assert token_f1("", "red") == 0.0


def test_best_over_references_takes_the_max() -> None:
    assert best_over_references("seven days", ["7", "seven"], "f1") == pytest.approx(2 / 3)
    assert best_over_references("Seven", ["7", "seven"], "em") == 1.0
    with pytest.raises(ValueError, match="answers"):
        best_over_references("x", [], "f1")
    with pytest.raises(ValueError, match="metric"):
        best_over_references("x", ["x"], "bleu")


def test_generate_score_means_and_prediction_line() -> None:
    assert prediction("\n  Paris.\nMore text") == "Paris."
    assert prediction("\n \n") == ""
    items = [{"answers": ["Paris"]}, {"answers": ["York City", "NYC"]}]
    scores = score(["Paris", "New York City"], items)
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((1.0 + 0.8) / 2)


def test_choice_accuracy_raw_and_length_normalised() -> None:
    items = [
        {"choices": ["ab", "abcdefgh"], "answer": 1},  # byte lengths with the space: 3 and 9
        {"choices": ["x", "y"], "answer": 0},
    ]
    # Item 0: raw picks choice 0 (-3 > -6); per byte: -1.0 vs -0.667 -> choice 1.
    # Item 1: ties go to the lower index for both.
    figures = accuracy(items, [[-3.0, -6.0], [-2.0, -2.0]])
    assert figures["picks"] == [{"pick": 0, "pick_norm": 1}, {"pick": 0, "pick_norm": 0}]
    assert figures["acc"] == pytest.approx(0.5) and figures["acc_norm"] == pytest.approx(1.0)


def test_continuation_logprob_sums_the_last_tokens() -> None:
    ids = [1, 5, 7, 9]
    logprobs = [None, {5: Logprob(-1.0)}, {7: Logprob(-0.5)}, {9: Logprob(-0.25), 3: Logprob(-2)}]
    assert continuation_logprob(logprobs, ids, 2) == pytest.approx(-0.75)
    assert context({"question": "Why?"}) == "Question: Why?\nAnswer:"
    assert context({"prompt": "Say:", "question": "ignored"}) == "Say:"


def test_shipped_data_sets_are_valid() -> None:
    qa = parse_items(read_jsonl(packaged_data("qa.jsonl")), "qa.jsonl")
    choice = parse_choice_items(read_jsonl(packaged_data("choice.jsonl")), "choice.jsonl")
    assert len(qa) >= 30 and len(choice) >= 30


def test_bad_items_name_the_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q", "answers": ["a"]}\n{"prompt": "q", "answers": []}\n')
    with pytest.raises(ValueError, match="line 2: 'answers'"):
        parse_items(read_jsonl(str(path)), str(path))
    path.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(ValueError, match="line 1: 'answer' 2"):
        parse_choice_items(read_jsonl(str(path)), str(path))
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="line 1: not a JSON object"):
        read_jsonl(str(path))
