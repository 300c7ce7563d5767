"""Structured outputs in the runner: the SchedulerOutput's grammar bitmask -> sampler tensors."""

from __future__ import annotations

from concurrent.futures import Future

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
    grammar (``sampled_request_ids`` in logits row order); a no-op when none does.

    ``scheduler_output.grammar_bitmask`` may be a Future still being filled on the engine's
    grammar thread (during the forward pass): this is where it is joined, right before sampling.
    """
    rows_of = scheduler_output.structured_output_request_ids
    if not rows_of or scheduler_output.grammar_bitmask is None:
        return
    logits_rows, bitmask_rows = [], []
    for row, request_id in enumerate(sampled_request_ids):
        bitmask_row = rows_of.get(request_id)
        if bitmask_row is not None:
            logits_rows.append(row)
            bitmask_rows.append(bitmask_row)
    bitmask = scheduler_output.grammar_bitmask
    if isinstance(bitmask, Future):
        bitmask = bitmask.result()  # raises the fill's error, if any
    if not logits_rows:
        return
    if bitmask_rows == list(range(bitmask.shape[0])):
        bitmask = torch.from_numpy(bitmask)  # every row in order: no copy
    else:
        bitmask = torch.from_numpy(bitmask[bitmask_rows])
    metadata.grammar_rows = torch.tensor(logits_rows, dtype=torch.int64, device=device)
    metadata.grammar_bitmask = bitmask.to(device, non_blocking=True)
