"""Logits processors and the random draw, each a batched tensor op over [batch, vocab] logits."""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")


def greedy_ids(logits: torch.Tensor) -> torch.Tensor:
    """Index of each row's largest value: logits [batch, vocab] float -> [batch] int64.

    The same ids as ``logits.argmax(dim=-1)`` (the first maximal index on ties; a NaN counts as
    the maximum, so a broken row still gives a valid id), but ``torch.max(dim=-1)``'s CPU kernel
    is about twice as fast over a [64, 49152] float32 batch (torch 2.13). ``tests/sample`` pins
    the tie and NaN behaviour.
    """
    return torch.max(logits, dim=-1).indices


def apply_penalties(
    logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    output_counts: torch.Tensor,
    presence: torch.Tensor,
    frequency: torch.Tensor,
    repetition: torch.Tensor,
) -> torch.Tensor:
    """Repetition penalty (CTRL, Keskar et al. 2019) over prompt and output tokens, then OpenAI's
    presence and frequency penalties over output tokens:
    ``logit -= frequency * count + presence * (count > 0)``.

    prompt_mask: [batch, vocab] bool; output_counts: [batch, vocab] int; penalties: [batch].
    """
    seen = prompt_mask | (output_counts > 0)
    rep = repetition.unsqueeze(1).expand_as(logits)
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    counts = output_counts.to(logits.dtype)
    logits = logits - frequency.unsqueeze(1) * counts
    return logits - presence.unsqueeze(1) * (counts > 0).to(logits.dtype)


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Mask logits outside each row's top-k tokens and outside its nucleus of mass top_p
    (Holtzman et al. 2019; at least one token always survives). top_k: [batch] int64, 0 = off;
    top_p: [batch] float32, 1 = off."""
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=False)
    vocab_size = logits.shape[-1]
    if top_k is not None:
        k = torch.where(top_k > 0, top_k, vocab_size).clamp(max=vocab_size)
        threshold = sorted_logits.gather(1, (vocab_size - k).unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < threshold, _NEG_INF)
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        cumulative = probs.cumsum(dim=-1)
        remove = cumulative <= (1 - top_p).unsqueeze(1)
        remove[:, -1] = False  # the most likely token always stays
        sorted_logits = sorted_logits.masked_fill(remove, _NEG_INF)
    return torch.empty_like(logits).scatter_(1, sorted_ids, sorted_logits)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask tokens whose probability is below ``min_p`` times the row's top probability."""
    probs = logits.softmax(dim=-1)
    top = probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < min_p.unsqueeze(1) * top, _NEG_INF)


def random_sample(probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """Draw one token per row: ``argmax(probs / E)`` with ``E ~ Exp(1)`` (the exponential race,
    equivalent to sampling from ``probs`` without a CPU-GPU sync).

    Rows in ``generators`` draw their noise from their own generator, so a seeded request gets
    the same tokens whatever else shares the batch. Returns [batch] int64.
    """
    noise = torch.empty_like(probs)
    if len(generators) < probs.shape[0]:
        noise.exponential_()
    for row, generator in generators.items():
        noise[row].exponential_(generator=generator)
    return greedy_ids(probs.div(noise))
