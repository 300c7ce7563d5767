"""The grammar bitmask in the sampler: only the listed rows change; llguidance's bit layout."""

import numpy as np
import pytest
import torch

from kaon.sample.grammar import apply_token_bitmask
from kaon.sample.metadata import SamplingMetadata
from kaon.sample.sampler import Sampler

NEG_INF = float("-inf")


def _bitmask(allowed_rows: list[list[int]], vocab_size: int) -> torch.Tensor:
    words = np.zeros((len(allowed_rows), (vocab_size + 31) // 32), dtype=np.uint32)
    for row, allowed in enumerate(allowed_rows):
        for token_id in allowed:
            words[row, token_id // 32] |= np.uint32(1 << (token_id % 32))
    return torch.from_numpy(words.view(np.int32))


def test_only_listed_rows_are_masked_bit_for_bit():
    torch.manual_seed(0)
    logits = torch.randn(3, 70)
    before = logits.clone()
    # row 2 may use tokens 5, 31 (bit 31: the int32 sign bit) and 64 (third word)
    out = apply_token_bitmask(logits, torch.tensor([2]), _bitmask([[5, 31, 64]], 70))
    assert torch.equal(out[:2], before[:2])
    assert torch.isfinite(out[2]).nonzero().flatten().tolist() == [5, 31, 64]
    assert torch.equal(out[2, [5, 31, 64]], before[2, [5, 31, 64]])


def test_ids_past_the_bitmask_are_disallowed():
    logits = torch.zeros(1, 40)
    out = apply_token_bitmask(logits, torch.tensor([0]), _bitmask([[1]], 32))  # 32-token mask
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [1]


def test_sampler_greedy_and_random_respect_the_mask():
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [0.0, 5.0, 1.0, 2.0]])
    metadata = SamplingMetadata(
        all_greedy=False, all_random=False, temperature=torch.tensor([0.0, 1.0]), top_k=None,
        top_p=None, min_p=None, generators={}, output_token_counts=None,
        prompt_token_mask=None, presence_penalties=None, frequency_penalties=None,
        repetition_penalties=None, logit_bias=None, min_tokens_masks=[], max_num_logprobs=None,
        grammar_rows=torch.tensor([0, 1]), grammar_bitmask=_bitmask([[2, 3], [0]], 4),
    )  # fmt: skip
    assert Sampler()(logits, metadata).sampled_token_ids.tolist() == [3, 0]


def _reference(logits: torch.Tensor, rows: list[int], allowed: list[list[int]]) -> torch.Tensor:
    expected = logits.clone()
    for row, allowed_ids in zip(rows, allowed, strict=True):
        keep = torch.zeros(logits.shape[1], dtype=torch.bool)
        keep[allowed_ids] = True
        expected[row] = expected[row].masked_fill(~keep, NEG_INF)
    return expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [1, 3], [0]])
def test_cpu_path_matches_masked_fill_bit_for_bit(dtype, rows):
    generator = torch.Generator().manual_seed(1)
    vocab_size = 1000
    logits = torch.randn(4, vocab_size, generator=generator).to(dtype)
    logits[0, 7] = float("nan")
    logits[1, 9] = float("inf")
    allowed = [
        torch.randperm(vocab_size, generator=generator)[: 3 + 200 * index].tolist()
        for index in range(len(rows))
    ]
    expected = _reference(logits, rows, allowed)
    out = apply_token_bitmask(logits, torch.tensor(rows), _bitmask(allowed, vocab_size))
    assert out.data_ptr() == logits.data_ptr()  # in place
    assert torch.equal(
        out.view(torch.int16 if dtype != torch.float32 else torch.int32),
        expected.view(torch.int16 if dtype != torch.float32 else torch.int32),
    )
