"""Rounding of float weights to asymmetric int4 groups: ``w ~= scale * q + min``, q in [0, 15].

Two methods, both vectorised over all groups at once:

- ``minmax``: scale = (max - min) / 15, q = round((w - min) / scale). Every weight is within half
  a step of the grid, but one outlier stretches the range and wastes levels on the rest.
- ``search`` (default): an error-minimizing search per group, after the idea of llama.cpp's
  k-quants (``make_qkx2_quants`` in ``ggml-quants.c``) and of the clipping searches of AWQ
  (Lin et al., 2023, arXiv:2306.00978): each candidate clips [min, max] to
  [min + a * range, max - b * range] for (a, b) in ``CLIP_GRID``, rounds, then refits (scale, min)
  by weighted least squares on the chosen q; the candidate with the lowest weighted squared error

      E = sum_k c_k (scale * q_k + min - w_k)^2,   c_k = rms(group) + |w_k|

  wins (c_k: llama.cpp's weighting for k-quants without an importance matrix; it keeps large
  weights, which matter most, closer than plain squared error would: on SmolLM2-135M at group
  size 128 plain squared error lowered the weights' error but raised perplexity).
  ``REFINE_STEPS`` alternating passes (re-round with the winner's scale and min, refit, keep if
  better) follow. By default ``CLIP_GRID`` holds only (0, 0): min-max's q, refit, then the
  alternating passes (see ``CLIP_GRID`` for why). The candidates include (0, 0), and a
  least-squares refit never increases the error of a fixed q, so the result's E is never above
  min-max's.

Weighted least squares for a fixed q (sums over the group):

    [sum c q^2  sum c q] [scale]   [sum c q w]
    [sum c q    sum c  ] [min  ] = [sum c w  ]

solved in float64 per group; when all q are equal (determinant 0) the scale is kept and
min = weighted mean of (w - scale * q).
"""

from __future__ import annotations

import torch

# (a, b): fractions of the group's range clipped off the bottom and the top. Only min-max's own
# range by default: on SmolLM2-135M, clipping candidates ((0, 0.05), (0.05, 0.05), ... up to
# (0.12, 0.05)) lowered the weights' error further but raised perplexity on short windows
# (tests/quantization/test_engine.py's TEXT at g128: 168 against min-max's 63.5; refit only: 52.0),
# presumably by clipping the few large weights the model depends on.
CLIP_GRID = ((0.0, 0.0),)
REFINE_STEPS = 2
IMPORTANCE = "abs"
_CHUNK_ELEMENTS = 1 << 16  # weights per chunk (cache-sized temporaries)
_LEVELS = 15


def minmax_groups(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """groups float32 [G, g] -> (q float32 [G, g] in [0, 15], scales, mins float32 [G])."""
    low = groups.amin(dim=-1)
    scales = ((groups.amax(dim=-1) - low) / _LEVELS).clamp(min=1e-12)
    q = torch.round((groups - low[:, None]) / scales[:, None]).clamp(0, _LEVELS)
    return q, scales, low


def _round(x: torch.Tensor, lo: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """q = clamp(round((x - lo) / step), 0, 15) for x [B, g], lo and step float32 [B]."""
    inv = 1.0 / step
    return torch.addcmul((-lo * inv)[:, None], x, inv[:, None]).round_().clamp_(0, _LEVELS)


def _refit(q: torch.Tensor, x: torch.Tensor, wt: torch.Tensor, sums, step: torch.Tensor):
    """Weighted least-squares (scale, min) for fixed q [B, g] (weights wt [B, g]) and its
    weighted squared error, all float64 [B]. ``sums`` = (sum wt, sum wt x, sum wt x^2)."""
    sw, sx, sx2 = sums
    wq = q * wt
    sq = wq.sum(-1, dtype=torch.float64)
    sq2 = torch.linalg.vecdot(wq, q).double()
    sqx = torch.linalg.vecdot(wq, x).double()
    det = sw * sq2 - sq * sq
    flat = det <= 1e-9 * sw * sq2  # 0 up to rounding exactly when every q is equal
    safe = torch.where(flat, 1.0, det)
    scale = torch.where(flat, step, (sw * sqx - sq * sx) / safe)
    low = torch.where(flat, (sx - step * sq) / sw, (sq2 * sx - sq * sqx) / safe)
    err = (
        scale * scale * sq2
        + 2 * scale * low * sq
        + sw * low * low
        - 2 * scale * sqx
        - 2 * low * sx
        + sx2
    )
    return scale, low, err


def _importance(x: torch.Tensor) -> torch.Tensor:
    """Per-weight error weights [B, g]: rms(group) + |w| when IMPORTANCE is "abs" (llama.cpp's
    choice for k-quants without an importance matrix; the default), w^2 + mean(w^2) for "sq",
    else 1."""
    if IMPORTANCE == "abs":
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) / x.shape[-1] ** 0.5
        return x.abs() + rms.clamp(min=1e-12)  # > 0 also for an all-zero group
    if IMPORTANCE == "sq":
        return x * x + (x * x).mean(dim=-1, keepdim=True).clamp(min=1e-24)
    return torch.ones_like(x)


def _search_chunk(x: torch.Tensor):
    """x float32 [B, g] -> (q float32 [B, g], scales float64 [B], mins float64 [B]).

    Only the winner's rounding parameters (lo, step) are kept per group; its q is recomputed
    once at the end (the same operations, so the same q)."""
    low, high = x.amin(dim=-1), x.amax(dim=-1)
    span = (high - low).clamp(min=1e-12)
    wt = _importance(x)
    wx = wt * x
    sums = (wt.sum(-1, dtype=torch.float64), wx.sum(-1, dtype=torch.float64),
            torch.linalg.vecdot(wx.double(), x.double()))  # fmt: skip
    best = None  # (lo, step, scale, min, err)
    for clip in [*CLIP_GRID, *([None] * REFINE_STEPS)]:
        if clip is not None:
            lo = low + clip[0] * span
            step = span * ((1.0 - clip[0] - clip[1]) / _LEVELS)
        else:  # refinement: re-round with the best fit so far
            lo, step = best[3].float(), best[2].float().clamp(min=1e-12)
        scale, mn, err = _refit(_round(x, lo, step), x, wt, sums, step.double())
        if best is None:
            best = (lo, step, scale, mn, err)
            continue
        better = err < best[4]
        best = tuple(
            torch.where(better, new, old)
            for new, old in zip((lo, step, scale, mn, err), best, strict=True)
        )
    return _round(x, best[0], best[1]), best[2], best[3]


def search_groups(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """groups float32 [G, g] -> (q float32 [G, g] in [0, 15], scales, mins float32 [G]) with the
    lowest weighted squared error found by the clip-and-refit search (module docstring).

    On CPU the search runs on one intra-op thread (restored afterwards): its many short ops on
    cache-sized chunks ran 3x to 20x slower with two threads than with one on a loaded 2-core
    machine (a parallel region per op), and one thread takes ~9 s of CPU for SmolLM2-135M's
    134M linear weights."""
    count, size = groups.shape
    per_chunk = max(1, _CHUNK_ELEMENTS // size)
    q = torch.empty_like(groups)
    scales = torch.empty(count, dtype=torch.float32, device=groups.device)
    mins = torch.empty_like(scales)
    threads = torch.get_num_threads()
    if groups.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for start in range(0, count, per_chunk):
            end = min(start + per_chunk, count)
            q[start:end], chunk_scales, chunk_mins = _search_chunk(groups[start:end])
            scales[start:end], mins[start:end] = chunk_scales, chunk_mins
    finally:
        torch.set_num_threads(threads)
    return q, scales, mins
