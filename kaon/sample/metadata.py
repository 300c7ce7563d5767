"""SamplingMetadata: one step's SamplingParams as batched tensors (one row per sampled request)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingMetadata:
    """Batched sampling options; optional fields are None when no row in the batch uses them.

    All tensors have one row per request being sampled this step, in logits row order.
    """

    all_greedy: bool
    all_random: bool
    temperature: torch.Tensor  # [batch] float32; rows with 0 are greedy
    top_k: torch.Tensor | None  # [batch] int64; 0 = off
    top_p: torch.Tensor | None  # [batch] float32; 1 = off
    min_p: torch.Tensor | None  # [batch] float32; 0 = off
    generators: dict[int, torch.Generator]  # row -> per-request generator (requests with a seed)
    # Penalties: token counts over outputs [batch, vocab] and a prompt-token mask [batch, vocab].
    output_token_counts: torch.Tensor | None
    prompt_token_mask: torch.Tensor | None
    presence_penalties: torch.Tensor | None  # [batch] float32
    frequency_penalties: torch.Tensor | None  # [batch] float32
    repetition_penalties: torch.Tensor | None  # [batch] float32
    logit_bias: torch.Tensor | None  # [batch, vocab] float32, added to the logits
    # Rows still below min_tokens: these token ids are masked (eos and stop_token_ids).
    min_tokens_masks: list[tuple[int, list[int]]]
    max_num_logprobs: int | None  # largest top-logprobs count asked for (None = none asked)
    # Structured outputs: the rows with a grammar [num_constrained] int64 and their allowed-token
    # bitmasks [num_constrained, cdiv(vocab, 32)] int32 (bit i set = token i allowed).
    grammar_rows: torch.Tensor | None = None
    grammar_bitmask: torch.Tensor | None = None
