"""InputBatch: one step's SchedulerOutput as the flat tensors the model and attention read.

Rows are ordered decodes first, then prefill chunks (see kaon/attention/metadata.py). For a token at
position ``p`` of a request with block table ``block_ids``:

    slot_mapping = block_ids[p // block_size] * block_size + p % block_size

Speculative decoding: a decode with k draft tokens is k + 1 decode rows (one per position, each
with its own context length), so verification runs the same decode attention as a plain decode
step, and each of its k + 1 rows gets logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kaon.attention.metadata import AttentionMetadata, PrefillChunk
from kaon.device import to_device
from kaon.outputs import ScheduledRequest


@dataclass
class InputBatch:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    attention: AttentionMetadata
    requests: list[ScheduledRequest]  # in row order
    query_start_loc: list[int]  # [num_requests + 1], cumulative query lengths
    # [num_logits_rows] int64: the last row of each sampling request (all 1 + k rows of a
    # request verifying k drafts)
    logits_indices: torch.Tensor
    sampled_req_indices: list[int]  # index into ``requests`` for each sampling request
    num_logits_rows: list[int]  # logits rows of each sampling request: 1 + its drafts

    @classmethod
    def build(
        cls, scheduled: list[ScheduledRequest], block_size: int, device: torch.device
    ) -> InputBatch:
        decodes = [r for r in scheduled if _is_decode(r)]
        prefills = [r for r in scheduled if not _is_decode(r)]
        requests = decodes + prefills
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc = [0]
        for request in requests:
            start = request.num_computed_tokens
            input_ids.extend(request.token_ids)
            for position in range(start, start + len(request.token_ids)):
                positions.append(position)
                block = request.block_ids[position // block_size]
                slots.append(block * block_size + position % block_size)
            query_start_loc.append(len(input_ids))
        sampled_req_indices = [i for i, r in enumerate(requests) if r.sample]
        num_logits_rows = [1 + len(requests[i].spec_token_ids) for i in sampled_req_indices]
        logits_indices = [
            row
            for i, num_rows in zip(sampled_req_indices, num_logits_rows, strict=True)
            for row in range(query_start_loc[i + 1] - num_rows, query_start_loc[i + 1])
        ]
        num_decode_rows = query_start_loc[len(decodes)]
        attention = AttentionMetadata(
            slot_mapping=to_device(slots, torch.int64, device),
            num_decode_tokens=num_decode_rows,
            **_decode_tensors(decodes, block_size, device),
            prefills=[
                _prefill_chunk(request, query_start_loc[len(decodes) + i], device)
                for i, request in enumerate(prefills)
            ],
        )
        return cls(
            input_ids=to_device(input_ids, torch.int64, device),
            positions=to_device(positions, torch.int64, device),
            attention=attention,
            requests=requests,
            query_start_loc=query_start_loc,
            logits_indices=to_device(logits_indices, torch.int64, device),
            sampled_req_indices=sampled_req_indices,
            num_logits_rows=num_logits_rows,
        )


def _is_decode(request: ScheduledRequest) -> bool:
    """One new token after cached context, plus any draft tokens (one decode row each)."""
    return request.num_computed_tokens > 0 and len(request.token_ids) == 1 + len(
        request.spec_token_ids
    )


def _decode_tensors(
    decodes: list[ScheduledRequest], block_size: int, device: torch.device
) -> dict[str, torch.Tensor | None]:
    if not decodes:
        return {"decode_block_tables": None, "decode_seq_lens": None, "decode_mask": None}
    # One row per query position: row i of a request sees its first num_computed + 1 + i tokens.
    rows = [
        (r.block_ids, r.num_computed_tokens + 1 + i)
        for r in decodes
        for i in range(len(r.token_ids))
    ]
    seq_lens = [seq_len for _, seq_len in rows]
    max_blocks = max(-(-n // block_size) for n in seq_lens)
    table = [
        block_ids[:max_blocks] + [0] * (max_blocks - len(block_ids[:max_blocks]))
        for block_ids, _ in rows
    ]
    seq_lens_tensor = to_device(seq_lens, torch.int64, device)
    slots = torch.arange(max_blocks * block_size, device=device)
    mask = (slots.unsqueeze(0) < seq_lens_tensor.unsqueeze(1)).view(len(rows), 1, 1, -1)
    return {
        "decode_block_tables": to_device(table, torch.int64, device),
        "decode_seq_lens": seq_lens_tensor,
        "decode_mask": mask,
    }


def _prefill_chunk(
    request: ScheduledRequest, query_start: int, device: torch.device
) -> PrefillChunk:
    num_context = request.num_computed_tokens
    query_len = len(request.token_ids)
    mask = None
    if num_context > 0:
        # Query i sits at position num_context + i and sees keys 0 .. num_context + i.
        rows = torch.arange(query_len, device=device).unsqueeze(1) + num_context
        mask = torch.arange(num_context + query_len, device=device).unsqueeze(0) <= rows
    return PrefillChunk(
        query_start=query_start,
        query_len=query_len,
        num_context_tokens=num_context,
        block_ids=to_device(request.block_ids, torch.int64, device),
        mask=mask,
    )
