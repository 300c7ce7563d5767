"""Structured outputs in the runner: the SchedulerOutput's grammar bitmask -> sampler tensors."""

from __future__ import annotations

import torch

from kaon.outputs import SchedulerOutput
from kaon.sample.metadata import SamplingMetadata


def add_grammar_bitmask(
    metadata: SamplingMetadata,
    scheduler_output: SchedulerOutput,
    sampled_request_ids: list[str],
    device: torch.device,
) -> None:
    """Set ``metadata.grammar_rows`` / ``grammar_bitmask`` for the sampled rows that have a
    grammar (``sampled_request_ids`` in logits row order); a no-op when none does."""
    rows_of = scheduler_output.structured_output_request_ids
    if not rows_of or scheduler_output.grammar_bitmask is None:
        return
    logits_rows, bitmask_rows = [], []
    for row, request_id in enumerate(sampled_request_ids):
        bitmask_row = rows_of.get(request_id)
        if bitmask_row is not None:
            logits_rows.append(row)
            bitmask_rows.append(bitmask_row)
    if not logits_rows:
        return
    bitmask = torch.from_numpy(scheduler_output.grammar_bitmask[bitmask_rows])
    metadata.grammar_rows = torch.tensor(logits_rows, dtype=torch.int64, device=device)
    metadata.grammar_bitmask = bitmask.to(device, non_blocking=True)
