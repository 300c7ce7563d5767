"""Sampler: logits [batch, vocab] -> one token per row, plus logprobs when asked.

    raw logits -> grammar bitmask (structured outputs; only the constrained rows)
               -> (logprobs of the raw distribution, as vLLM and OpenAI report them)
               -> logit_bias -> min_tokens mask -> penalties -> greedy argmax
                                                            -> / temperature -> top-k/top-p -> min-p
                                                            -> softmax -> exponential race
Non-finite logits are cleaned first (NaN -> -inf) so a broken row still yields a valid token id
and finite logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kaon.sample import ops
from kaon.sample.grammar import apply_token_bitmask
from kaon.sample.metadata import SamplingMetadata

# What JSON can carry for log(0); vLLM reports -9999.0 as well.
LOGPROB_FLOOR = -9999.0


def _clean(logits: torch.Tensor) -> torch.Tensor:
    """float32 logits with NaN -> -inf and +inf -> the largest finite value."""
    return torch.nan_to_num(
        logits.float(), nan=float("-inf"), posinf=torch.finfo(torch.float32).max
    )


def _no_processing(metadata: SamplingMetadata) -> bool:
    return (
        metadata.max_num_logprobs is None
        and metadata.logit_bias is None
        and not metadata.min_tokens_masks
        and metadata.output_token_counts is None
    )


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [batch] int64
    # Present when some row asked for logprobs: [batch, 1 + max_num_logprobs] ids and values,
    # column 0 the sampled token; ranks [batch] (1 = most likely).
    logprob_token_ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    sampled_ranks: torch.Tensor | None = None


class Sampler:
    """Batched, vectorised sampling; see the module docstring for the order of operations."""

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        if metadata.grammar_bitmask is not None:
            assert metadata.grammar_rows is not None
            logits = apply_token_bitmask(logits, metadata.grammar_rows, metadata.grammar_bitmask)
        if metadata.all_greedy and _no_processing(metadata):
            # Fast path: argmax ignores -inf and returns a valid id even for a NaN row.
            return SamplerOutput(ops.greedy_ids(logits))
        logits = _clean(logits)
        raw_logprobs = None
        if metadata.max_num_logprobs is not None:
            raw_logprobs = logits.log_softmax(dim=-1)
        logits = self._process(logits, metadata)
        sampled = self._sample(logits, metadata)
        if raw_logprobs is None:
            return SamplerOutput(sampled)
        return self._gather_logprobs(raw_logprobs, sampled, metadata.max_num_logprobs or 0)

    @staticmethod
    def _process(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        if metadata.logit_bias is not None:
            logits = logits + metadata.logit_bias
        for row, token_ids in metadata.min_tokens_masks:
            logits[row, token_ids] = float("-inf")
        if metadata.output_token_counts is not None:
            assert metadata.prompt_token_mask is not None
            logits = ops.apply_penalties(
                logits,
                metadata.prompt_token_mask,
                metadata.output_token_counts,
                metadata.presence_penalties,  # type: ignore[arg-type]
                metadata.frequency_penalties,  # type: ignore[arg-type]
                metadata.repetition_penalties,  # type: ignore[arg-type]
            )
        return logits

    @staticmethod
    def _sample(logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        greedy = ops.greedy_ids(logits)
        if metadata.all_greedy:
            return greedy
        temperature = metadata.temperature
        is_greedy = temperature < 1e-5
        scaled = logits / torch.where(is_greedy, 1.0, temperature).unsqueeze(1)
        if metadata.top_k is not None or metadata.top_p is not None:
            scaled = ops.apply_top_k_top_p(scaled, metadata.top_k, metadata.top_p)
        if metadata.min_p is not None:
            scaled = ops.apply_min_p(scaled, metadata.min_p)
        probs = scaled.softmax(dim=-1)
        # A row whose logits were all -inf gives NaN probabilities: fall back to its argmax.
        probs = torch.nan_to_num(probs, nan=0.0)
        sampled = ops.random_sample(probs, metadata.generators)
        dead = probs.sum(dim=-1) <= 0
        sampled = torch.where(dead, greedy, sampled)
        return sampled if metadata.all_random else torch.where(is_greedy, greedy, sampled)

    @staticmethod
    def _gather_logprobs(
        logprobs: torch.Tensor, sampled: torch.Tensor, num_top: int
    ) -> SamplerOutput:
        # A row with no finite logit has NaN log-softmax: report the floor instead.
        logprobs = torch.nan_to_num(logprobs, nan=LOGPROB_FLOOR).clamp(min=LOGPROB_FLOOR)
        sampled_logprob = logprobs.gather(1, sampled.unsqueeze(1))  # [batch, 1]
        ranks = (logprobs > sampled_logprob).sum(dim=-1) + 1
        top_values, top_ids = logprobs.topk(num_top, dim=-1) if num_top else (None, None)
        ids = sampled.unsqueeze(1)
        values = sampled_logprob
        if top_ids is not None:
            ids = torch.cat([ids, top_ids], dim=1)
            values = torch.cat([values, top_values], dim=1)
        return SamplerOutput(sampled, ids, values, ranks)


def compute_prompt_logprobs(
    logits: torch.Tensor, target_ids: torch.Tensor, num_top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of the next prompt token at each prompt position.

    logits: [positions, vocab]; target_ids: [positions] int64, the token that follows each one.
    Returns ids [positions, 1 + num_top], logprobs of the same shape (column 0 the target token),
    ranks [positions].
    """
    logprobs = _clean(logits).log_softmax(dim=-1)
    output = Sampler._gather_logprobs(logprobs, target_ids, num_top)
    assert output.logprob_token_ids is not None and output.logprobs is not None
    assert output.sampled_ranks is not None
    return output.logprob_token_ids, output.logprobs, output.sampled_ranks
