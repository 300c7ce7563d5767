"""``load_engine_off_main_thread``: the server's way to build its engine (see its docstring for
why the main thread must not run OpenMP work). The engine it returns works; errors come back to
the caller; the loading thread is gone afterwards."""

from __future__ import annotations

import threading

import pytest

from kaon.engine.async_llm import load_engine_off_main_thread
from kaon.sampling_params import SamplingParams


def test_engine_loaded_off_main_thread_generates_and_the_thread_ends(llm):
    engine = load_engine_off_main_thread(kv_cache_memory_bytes=50_000_000, quantization="none")
    assert not [t for t in threading.enumerate() if t.name.startswith("kaon-load")]
    params = SamplingParams(max_tokens=8, temperature=0)
    engine.add_request("a", "The capital of France is", params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
    expected = llm.generate(["The capital of France is"], params)[0].outputs[0].token_ids
    assert outputs[0].outputs[0].token_ids == expected


def test_bad_option_raises_in_the_caller():
    with pytest.raises(ValueError, match="max_num_seqs"):
        load_engine_off_main_thread(max_num_seqs=0)
