"""The oneDNN-packed LM head against ``F.linear`` (its reference), and its batch invariance.

Each logits row must not depend on how many rows are computed with it: that is what makes a
request's greedy tokens the same alone or in a batch (``F.linear`` through MKL does not give that
guarantee: its rows change in the last bits with the batch size on this machine).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kaon.layers.vocab_parallel import lm_head_logits, pack_lm_head

VOCAB, HIDDEN = 4099, 576  # an odd vocabulary size, SmolLM2's hidden size


@pytest.fixture(scope="module")
def weight_and_packed():
    weight = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(0)) * 0.05
    packed = pack_lm_head(weight)
    if packed is None:
        pytest.skip("oneDNN packing not available in this torch build")
    return weight, packed


def test_packed_logits_match_f_linear(weight_and_packed):
    weight, packed = weight_and_packed
    hidden = torch.randn(37, HIDDEN, generator=torch.Generator().manual_seed(1))
    logits = lm_head_logits(hidden, weight, VOCAB, None, packed)
    assert logits.shape == (37, VOCAB) and logits.dtype == torch.float32
    # float32 sums of 576 products of ~N(0, 0.05) terms: only the summation order differs.
    assert (logits - F.linear(hidden, weight)).abs().max().item() <= 1e-4


def test_packed_rows_do_not_depend_on_the_batch(weight_and_packed):
    weight, packed = weight_and_packed
    hidden = torch.randn(64, HIDDEN, generator=torch.Generator().manual_seed(2))
    full = lm_head_logits(hidden, weight, VOCAB, None, packed)
    for rows in (1, 2, 7, 33):
        part = lm_head_logits(hidden[:rows], weight, VOCAB, None, packed)
        assert torch.equal(part, full[:rows]), f"{rows} rows"
    # A row sliced out of a bigger hidden tensor (prompt logprobs pass such slices).
    assert torch.equal(lm_head_logits(hidden[5:9], weight, VOCAB, None, packed), full[5:9])


def test_packing_applies_to_float32_cpu_tensors_only():
    assert pack_lm_head(torch.randn(8, 16, dtype=torch.bfloat16)) is None
    assert pack_lm_head(torch.randn(8)) is None  # not a matrix
    assert pack_lm_head(object()) is None  # a quantized head (kaon.layers.quantization module)
