"""Arithmetic of ``kaon bench serve``: goodput, level figures, TPOT/ITL and the --verify oracle,
against hand-computed values."""

from __future__ import annotations

import argparse

import pytest

from kaon.benchmarks.serve import add_serve_args
from kaon.benchmarks.serve_client import RequestResult, request_body
from kaon.benchmarks.serve_metrics import Slo, goodput, level_figures
from kaon.benchmarks.serve_report import compare_to_reference, first_difference


def _request(index, ttft, tpot, e2e, output_tokens=10, success=True, itl=()):
    return {
        "index": index,
        "success": success,
        "ttft": ttft,
        "tpot": tpot,
        "e2e": e2e,
        "itl": list(itl),
        "output_tokens": output_tokens,
        "prompt_tokens": 5,
        "output_tokens_source": "usage" if success else None,
        "text": "",
    }


REQUESTS = [
    _request(0, ttft=0.5, tpot=0.05, e2e=0.95, itl=[0.05, 0.05]),  # meets both SLOs
    _request(1, ttft=1.5, tpot=0.05, e2e=1.95, itl=[0.04]),  # TTFT too slow
    _request(2, ttft=0.8, tpot=0.2, e2e=2.6, itl=[0.2, 0.2, 0.2]),  # TPOT too slow
    _request(3, ttft=1.0, tpot=0.1, e2e=1.9),  # exactly at both limits: met
    _request(4, None, None, None, output_tokens=None, success=False),  # failed
]


def test_goodput_counts_requests_meeting_every_slo() -> None:
    slo = Slo(ttft=1.0, tpot=0.1)
    assert goodput(REQUESTS, slo, duration=4.0) == (2, 0.5)  # requests 0 and 3
    assert goodput(REQUESTS, Slo(ttft=1.0), duration=2.0) == (3, 1.5)  # 0, 2, 3
    assert goodput(REQUESTS, Slo(e2e=2.0), duration=1.0) == (3, 3.0)  # 0, 1, 3
    assert goodput(REQUESTS, Slo(), duration=1.0) == (4, None)  # no SLO: no rate
    # One output token: no TPOT, so a TPOT objective cannot fail it.
    assert Slo(tpot=0.1).met(ttft=0.2, tpot=None, e2e=0.2)
    assert not Slo(ttft=0.1).met(ttft=None, tpot=None, e2e=None)
    with pytest.raises(ValueError):
        goodput(REQUESTS, slo, duration=0.0)


def test_level_figures_hand_computed() -> None:
    figures = level_figures(REQUESTS, duration=4.0, slo=Slo(ttft=1.0, tpot=0.1))
    assert (figures["num_requests"], figures["num_completed"], figures["num_failed"]) == (5, 4, 1)
    assert figures["num_output_tokens"] == 40 and figures["num_prompt_tokens"] == 20
    assert figures["requests_per_s"] == pytest.approx(1.0)
    assert figures["output_tokens_per_s"] == pytest.approx(10.0)
    assert figures["goodput_requests_per_s"] == pytest.approx(0.5)
    assert figures["output_tokens_source"] == "usage"
    # TTFT of completed requests sorted: 0.5, 0.8, 1.0, 1.5 -> p50 = 0.9 (rank 1.5),
    # p90 = 1.0 + 0.7 * 0.5 = 1.35 (rank 2.7), p99 = 1.0 + 0.97 * 0.5 = 1.485 (rank 2.97).
    ttft = figures["ttft_s"]
    assert ttft == pytest.approx({"mean": 0.95, "p50": 0.9, "p90": 1.35, "p99": 1.485})
    # ITL pools every gap: 0.04, 0.05, 0.05, 0.2, 0.2, 0.2 -> p50 = (0.05 + 0.2) / 2.
    assert figures["itl_s"]["p50"] == pytest.approx(0.125)
    assert figures["itl_s"]["mean"] == pytest.approx(0.74 / 6)


def test_request_result_tpot_and_itl() -> None:
    result = RequestResult(index=0, success=True, ttft=0.5, e2e=1.4, output_tokens=10)
    result.chunk_times = [0.5, 0.6, 0.8, 1.4]
    assert result.tpot == pytest.approx(0.1)  # (1.4 - 0.5) / (10 - 1)
    assert result.itl == pytest.approx([0.1, 0.2, 0.6])
    result.output_tokens = 1
    assert result.tpot is None
    record = RequestResult(index=1).as_json()
    assert record["success"] is False and record["tpot"] is None and record["itl"] == []


def test_request_body_completions_and_chat() -> None:
    body = request_body("completions", "m", "hi", 8, ignore_eos=True, temperature=0.0)
    assert body == {
        "max_tokens": 8,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "model": "m",
        "ignore_eos": True,
        "prompt": "hi",
    }
    chat = request_body("chat", None, "hi", 8, ignore_eos=False, temperature=0.0)
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert "model" not in chat and "ignore_eos" not in chat and "prompt" not in chat
    # --extra-body: added last, overriding what the bench set (e.g. a peer's EOS logit bias).
    extra = {"logit_bias": {"2": -100}, "temperature": 0.5}
    biased = request_body("completions", None, "hi", 8, False, 0.0, extra_body=extra)
    assert (biased["logit_bias"], biased["temperature"], biased["prompt"]) == (
        {"2": -100},
        0.5,
        "hi",
    )


def test_extra_body_must_be_a_json_object() -> None:
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    base = ["--base-url", "http://127.0.0.1:1"]
    args = parser.parse_args([*base, "--extra-body", '{"logit_bias": {"0": -100}}'])
    assert args.extra_body == {"logit_bias": {"0": -100}}
    for bad in ("[1, 2]", "{not json"):
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--extra-body", bad])


def test_verify_reports_each_differing_response() -> None:
    assert first_difference("abc", "abc") is None
    assert first_difference("abcd", "abXd") == 2
    assert first_difference("abc", "abcdef") == 3
    expected = [
        {"index": 0, "success": True, "text": "same"},
        {"index": 1, "success": True, "text": "one two"},
        {"index": 2, "success": False, "text": ""},
    ]
    actual = [
        {"index": 0, "success": True, "text": "same"},
        {"index": 1, "success": True, "text": "one too"},
        {"index": 2, "success": True, "text": "x"},  # no reference: not checked
    ]
    report = compare_to_reference(expected, actual)
    assert report["num_checked"] == 2 and report["num_mismatches"] == 1
    assert report["mismatches"] == [
        {"index": 1, "first_difference": 5, "expected": "one two", "actual": "one too"}
    ]
