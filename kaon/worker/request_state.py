"""CachedRequestState: what the model runner keeps per running request across steps (the
sampler's inputs: params, seeded generator, generated ids for penalties, prompt-logprob progress).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kaon.outputs import PositionLogprobs
from kaon.sampling_params import SamplingParams


@dataclass
class CachedRequestState:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    generator: torch.Generator | None
    eos_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: list[PositionLogprobs | None] = field(default_factory=list)
