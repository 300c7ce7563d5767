"""Logits processors against hand-computed values."""

import torch

from kaon.sample import ops

NEG_INF = float("-inf")


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    out = ops.apply_top_k_top_p(logits, top_k=torch.tensor([2, 0]), top_p=None)
    assert out.tolist() == [[NEG_INF, 4.0, 3.0, NEG_INF], [1.0, 4.0, 3.0, 2.0]]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = ops.apply_top_k_top_p(probs.log(), top_k=None, top_p=torch.tensor([0.75]))
    # 0.5 + 0.3 covers 0.75: the two least likely tokens (mass 0.2) are cut.
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = ops.apply_top_k_top_p(probs.log(), top_k=None, top_p=torch.tensor([0.01]))
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]  # top token survives


def test_min_p_is_relative_to_the_top_probability():
    probs = torch.tensor([[0.6, 0.3, 0.06, 0.04]])
    out = ops.apply_min_p(probs.log(), torch.tensor([0.15]))  # threshold 0.09
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]


def test_penalties_follow_openai_and_ctrl():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    prompt_mask = torch.tensor([[False, True, False, False]])
    counts = torch.tensor([[2, 0, 1, 0]])
    out = ops.apply_penalties(
        logits, prompt_mask, counts,
        presence=torch.tensor([0.5]), frequency=torch.tensor([0.25]),
        repetition=torch.tensor([2.0]),
    )  # fmt: skip
    # token 0: 2/2 - 0.25*2 - 0.5 = 0; token 1 (prompt): -2*2 = -4;
    # token 2: 1/2 - 0.25 - 0.5 = -0.25
    assert out.tolist() == [[0.0, -4.0, -0.25, 0.5]]


def test_seeded_draws_do_not_depend_on_other_rows():
    probs = torch.full((3, 10), 0.1)

    def draw(row_count: int) -> int:
        generator = torch.Generator().manual_seed(42)
        batch = probs[:row_count]
        return ops.random_sample(batch, {row_count - 1: generator})[row_count - 1].item()

    assert draw(1) == draw(2) == draw(3)


def test_greedy_ids_match_argmax_on_ties_nan_and_dead_rows():
    """``greedy_ids`` (torch.max's kernel, faster than argmax's) must pick the same ids as
    ``argmax``: the first maximal index on ties, a NaN's index, 0 for a row of -inf."""
    logits = torch.tensor(
        [
            [1.0, 3.0, 3.0, 2.0],  # tie: first of the two maxima
            [NEG_INF, NEG_INF, NEG_INF, NEG_INF],  # dead row
            [0.0, float("nan"), 5.0, float("nan")],  # NaN wins, first NaN
            [float("inf"), 1.0, float("inf"), 0.0],
        ]
    )
    assert ops.greedy_ids(logits).tolist() == [1, 0, 1, 0]
    generator = torch.Generator().manual_seed(0)
    # Vocabulary-sized rows with many ties, over one and two threads (a split reduction).
    wide = torch.randint(0, 3, (64, 49152), generator=generator).float()
    wide[:, -1] = 2.0
    threads = torch.get_num_threads()
    try:
        for num_threads in (1, 2):
            torch.set_num_threads(num_threads)
            assert torch.equal(ops.greedy_ids(wide), wide.argmax(dim=-1))
            assert torch.equal(ops.greedy_ids(wide[:1]), wide[:1].argmax(dim=-1))
    finally:
        torch.set_num_threads(threads)
