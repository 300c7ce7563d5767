"""Answer metrics shared by the eval tasks: SQuAD-style normalisation, exact match, token F1.

Source: the official SQuAD v1.1 evaluation script (Rajpurkar et al., 2016, "SQuAD: 100,000+
Questions for Machine Comprehension of Text"): lowercase, drop punctuation, drop the articles
a/an/the, collapse whitespace; F1 over the bag of normalised whitespace tokens; the score of a
prediction is the maximum over its reference answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, remove punctuation, remove articles (a, an, the), collapse whitespace.

    ``"The  Eiffel-Tower!"`` -> ``"eiffeltower"``; ``"an apple"`` -> ``"apple"``.
    """
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalised whitespace tokens (bag of words, counts clipped), in [0, 1].

    precision = common / prediction tokens, recall = common / reference tokens. Two empty
    answers score 1.0; one empty answer scores 0.0.
    """
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over_references(prediction: str, references: Sequence[str], metric: str) -> float:
    """``max(metric(prediction, reference))`` over the references; metric "em" or "f1".

    Raises:
        ValueError: for no references or an unknown metric.
    """
    if not references:
        raise ValueError("answers must hold at least one reference answer")
    functions = {"em": exact_match, "f1": token_f1}
    if metric not in functions:
        raise ValueError(f"metric must be 'em' or 'f1', got {metric!r}")
    return max(functions[metric](prediction, reference) for reference in references)
