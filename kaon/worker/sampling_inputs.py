"""Build SamplingMetadata tensors from the runner's per-request states (one row each)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kaon.sample.metadata import SamplingMetadata

if TYPE_CHECKING:
    from kaon.worker.request_state import CachedRequestState


def build_sampling_metadata(
    states: list[CachedRequestState], vocab_size: int, device: torch.device
) -> SamplingMetadata:
    params = [state.sampling_params for state in states]
    greedy = [p.greedy for p in params]
    temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)
    any_top_k = any(p.top_k > 0 for p in params)
    any_top_p = any(p.top_p < 1.0 for p in params)
    any_min_p = any(p.min_p > 0.0 for p in params)
    metadata = SamplingMetadata(
        all_greedy=all(greedy),
        all_random=not any(greedy),
        temperature=temperature,
        top_k=_column([p.top_k for p in params], torch.int64, device) if any_top_k else None,
        top_p=_column([p.top_p for p in params], torch.float32, device) if any_top_p else None,
        min_p=_column([p.min_p for p in params], torch.float32, device) if any_min_p else None,
        generators={
            row: s.generator
            for row, s in enumerate(states)
            if s.generator is not None and not greedy[row]
        },
        output_token_counts=None,
        prompt_token_mask=None,
        presence_penalties=None,
        frequency_penalties=None,
        repetition_penalties=None,
        logit_bias=None,
        min_tokens_masks=[],
        max_num_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=None),
    )
    _add_penalties(metadata, states, vocab_size, device)
    _add_bias_and_min_tokens(metadata, states, vocab_size, device)
    return metadata


def _column(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def _add_penalties(
    metadata: SamplingMetadata,
    states: list[CachedRequestState],
    vocab_size: int,
    device: torch.device,
) -> None:
    params = [s.sampling_params for s in states]
    if all(
        p.presence_penalty == 0 and p.frequency_penalty == 0 and p.repetition_penalty == 1
        for p in params
    ):
        return
    batch = len(states)
    counts = torch.zeros(batch, vocab_size, dtype=torch.int64, device=device)
    prompt_mask = torch.zeros(batch, vocab_size, dtype=torch.bool, device=device)
    for row, state in enumerate(states):
        if state.output_token_ids:
            ids = torch.tensor(state.output_token_ids, dtype=torch.int64, device=device)
            counts[row].index_add_(0, ids, torch.ones_like(ids))
        if state.sampling_params.repetition_penalty != 1:
            prompt_mask[row, state.prompt_token_ids] = True
    metadata.output_token_counts = counts
    metadata.prompt_token_mask = prompt_mask
    metadata.presence_penalties = _column(
        [p.presence_penalty for p in params], torch.float32, device
    )
    metadata.frequency_penalties = _column(
        [p.frequency_penalty for p in params], torch.float32, device
    )
    metadata.repetition_penalties = _column(
        [p.repetition_penalty for p in params], torch.float32, device
    )


def _add_bias_and_min_tokens(
    metadata: SamplingMetadata,
    states: list[CachedRequestState],
    vocab_size: int,
    device: torch.device,
) -> None:
    if any(s.sampling_params.logit_bias for s in states):
        bias = torch.zeros(len(states), vocab_size, dtype=torch.float32, device=device)
        for row, state in enumerate(states):
            for token_id, value in (state.sampling_params.logit_bias or {}).items():
                bias[row, token_id] = value
        metadata.logit_bias = bias
    for row, state in enumerate(states):
        params = state.sampling_params
        if len(state.output_token_ids) < params.min_tokens:
            masked = list(params.stop_token_ids or [])
            if not params.ignore_eos:
                masked += state.eos_token_ids
            if masked:
                metadata.min_tokens_masks.append((row, masked))
