"""Rounding of float weights to asymmetric int4 groups: ``w ~= scale * q + min``, q in [0, 15].

Two methods, both vectorised over all groups at once:

- ``minmax``: scale = (max - min) / 15, q = round((w - min) / scale). Every weight is within half
  a step of the grid, but one outlier stretches the range and wastes levels on the rest.
- ``search`` (default): an error-minimizing search per group, after the idea of llama.cpp's
  k-quants (``make_qkx2_quants`` in ``ggml-quants.c``) and of the clipping searches of AWQ
  (Lin et al., 2023, arXiv:2306.00978): each candidate clips [min, max] to
  [min + a * range, max - b * range] for (a, b) in ``CLIP_GRID``, rounds, then refits (scale, min)
  by least squares on the chosen q; the candidate with the lowest squared reconstruction error
  sum_k (scale * q_k + min - w_k)^2 wins. ``REFINE_STEPS`` alternating passes (re-round with the
  winner's scale and min, refit, keep if better) follow. The candidates include (0, 0), and a
  least-squares refit never increases the error of a fixed q, so the result's error is never
  above min-max's.

Least squares for a fixed q (n = group size, sums over the group):

    [sum q^2  sum q] [scale]   [sum q w]
    [sum q    n    ] [min  ] = [sum w  ]

solved in float64 per group; when all q are equal (determinant 0) the scale is kept and
min = mean(w - scale * q).
"""

from __future__ import annotations

import torch

# (a, b): fractions of the group's range clipped off the bottom and the top.
CLIP_GRID = ((0.0, 0.0), (0.0, 0.05), (0.05, 0.0), (0.05, 0.05), (0.0, 0.1), (0.1, 0.0),
             (0.1, 0.1), (0.05, 0.12), (0.12, 0.05))  # fmt: skip
REFINE_STEPS = 2
_CHUNK_ELEMENTS = 1 << 18  # groups are searched in chunks of this many weights (cache-sized)
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


def _refit(q: torch.Tensor, x: torch.Tensor, sx: torch.Tensor, sx2: torch.Tensor, step):
    """Least-squares (scale, min) for fixed q [B, g] and its squared error, all float64 [B]."""
    g = x.shape[-1]
    sq = q.sum(-1, dtype=torch.float64)
    sq2 = torch.linalg.vecdot(q, q).double()  # integers below 2^24: exact in float32
    sqx = torch.linalg.vecdot(q, x).double()
    det = g * sq2 - sq * sq
    flat = det <= 0.5  # det is an integer: 0 exactly when every q is equal
    scale = torch.where(flat, step, (g * sqx - sq * sx) / det.clamp(min=1.0))
    low = torch.where(flat, (sx - step * sq) / g, (sq2 * sx - sq * sqx) / det.clamp(min=1.0))
    err = (
        scale * scale * sq2
        + 2 * scale * low * sq
        + g * low * low
        - 2 * scale * sqx
        - 2 * low * sx
        + sx2
    )
    return scale, low, err


def _search_chunk(x: torch.Tensor):
    """x float32 [B, g] -> (q float32 [B, g], scales float64 [B], mins float64 [B]).

    Only the winner's rounding parameters (lo, step) are kept per group; its q is recomputed
    once at the end (the same operations, so the same q)."""
    low, high = x.amin(dim=-1), x.amax(dim=-1)
    span = (high - low).clamp(min=1e-12)
    sx = x.sum(-1, dtype=torch.float64)
    sx2 = torch.linalg.vecdot(x.double(), x.double())
    best = None  # (lo, step, scale, min, err)
    for clip in [*CLIP_GRID, *([None] * REFINE_STEPS)]:
        if clip is not None:
            lo = low + clip[0] * span
            step = span * ((1.0 - clip[0] - clip[1]) / _LEVELS)
        else:  # refinement: re-round with the best fit so far
            lo, step = best[3].float(), best[2].float().clamp(min=1e-12)
        scale, mn, err = _refit(_round(x, lo, step), x, sx, sx2, step.double())
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
    lowest squared error found by the clip-and-refit search (module docstring)."""
    count, size = groups.shape
    per_chunk = max(1, _CHUNK_ELEMENTS // size)
    q = torch.empty_like(groups)
    scales = torch.empty(count, dtype=torch.float32, device=groups.device)
    mins = torch.empty_like(scales)
    for start in range(0, count, per_chunk):
        end = min(start + per_chunk, count)
        q[start:end], chunk_scales, chunk_mins = _search_chunk(groups[start:end])
        scales[start:end], mins[start:end] = chunk_scales, chunk_mins
    return q, scales, mins
