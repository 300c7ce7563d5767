"""ModelRunner: SchedulerOutput -> one forward pass -> sampled tokens (ModelRunnerOutput).

It keeps the per-request state the sampler needs across steps (sampling params, the seeded
generator, generated ids for penalties, prompt-logprob progress) and drops it when the scheduler
reports the request finished. It never sees the scheduler's Request objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kaon.attention.metadata import forward_context
from kaon.models.llama import LlamaForCausalLM
from kaon.outputs import Logprob, ModelRunnerOutput, PositionLogprobs, SchedulerOutput
from kaon.sample.sampler import Sampler, SamplerOutput, compute_prompt_logprobs
from kaon.sampling_params import SamplingParams
from kaon.worker.grammar_inputs import add_grammar_bitmask
from kaon.worker.input_batch import InputBatch
from kaon.worker.sampling_inputs import build_sampling_metadata


@dataclass
class CachedRequestState:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    generator: torch.Generator | None
    eos_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: list[PositionLogprobs | None] = field(default_factory=list)


class ModelRunner:
    """Runs the model for a SchedulerOutput and samples; owns the KV cache tensors."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        eos_token_ids: set[int],
        device: torch.device,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        self.eos_token_ids = sorted(eos_token_ids)
        self.vocab_size = model.config.vocab_size
        for attention, (key_cache, value_cache) in zip(model.kv_caches(), kv_caches, strict=True):
            attention.key_cache = key_cache
            attention.value_cache = value_cache
        self.requests: dict[str, CachedRequestState] = {}
        self.sampler = Sampler()

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(scheduler_output)
        if scheduler_output.is_empty:
            return ModelRunnerOutput([], [])
        batch = InputBatch.build(scheduler_output.scheduled_requests, self.block_size, self.device)
        with forward_context(batch.attention):
            hidden = self.model(batch.input_ids, batch.positions)  # [num_tokens, hidden_size]
        output = ModelRunnerOutput([], [])
        self._prompt_logprobs(batch, hidden, output)
        if not batch.sampled_req_indices:
            return output
        logits = self.model.compute_logits(hidden[batch.logits_indices])  # [num_sampled, vocab]
        if logits is None:  # a tensor-parallel rank other than 0: only rank 0 samples
            return output
        states = [self.requests[batch.requests[i].request_id] for i in batch.sampled_req_indices]
        metadata = build_sampling_metadata(states, self.vocab_size, self.device)
        request_ids = [state.request_id for state in states]
        add_grammar_bitmask(metadata, scheduler_output, request_ids, self.device)
        sampler_output = self.sampler(logits, metadata)
        sampled = sampler_output.sampled_token_ids.tolist()  # the one host sync of the step
        for state, token_id in zip(states, sampled, strict=True):
            state.output_token_ids.append(token_id)
        output.req_ids = request_ids
        output.sampled_token_ids = sampled
        if sampler_output.logprobs is not None:
            self._sample_logprobs(states, sampler_output, output)
        return output

    def _update_states(self, scheduler_output: SchedulerOutput) -> None:
        for request_id in scheduler_output.finished_req_ids:
            self.requests.pop(request_id, None)
        for new in scheduler_output.new_requests:
            params = new.sampling_params
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(params.seed)
            self.requests[new.request_id] = CachedRequestState(
                new.request_id, new.prompt_token_ids, params, generator, self.eos_token_ids
            )

    def _sample_logprobs(
        self,
        states: list[CachedRequestState],
        sampler_output: SamplerOutput,
        output: ModelRunnerOutput,
    ) -> None:
        assert sampler_output.logprob_token_ids is not None and sampler_output.logprobs is not None
        assert sampler_output.sampled_ranks is not None
        ids = sampler_output.logprob_token_ids.tolist()
        values = sampler_output.logprobs.tolist()
        ranks = sampler_output.sampled_ranks.tolist()
        for row, state in enumerate(states):
            num_top = state.sampling_params.logprobs
            if num_top is None:
                continue
            output.logprobs[state.request_id] = _position_logprobs(
                ids[row], values[row], ranks[row], num_top
            )

    def _prompt_logprobs(
        self, batch: InputBatch, hidden: torch.Tensor, output: ModelRunnerOutput
    ) -> None:
        """Logprobs of each prompt token given the ones before it, gathered chunk by chunk."""
        for index, scheduled in enumerate(batch.requests):
            state = self.requests[scheduled.request_id]
            num_top = state.sampling_params.prompt_logprobs
            num_prompt = len(state.prompt_token_ids)
            start = scheduled.num_computed_tokens
            if num_top is None or start >= num_prompt:
                continue
            if start == 0:
                state.prompt_logprobs = [None]  # the first prompt token has no context
            # Rows at positions p predict token p + 1; only targets inside the prompt count.
            end = min(start + len(scheduled.token_ids), num_prompt - 1)
            if end > start:
                row0 = batch.query_start_loc[index]
                logits = self.model.compute_logits(hidden[row0 : row0 + end - start])
                if logits is None:  # tensor-parallel rank > 0: it joined the gather, that's all
                    continue
                targets = torch.tensor(
                    state.prompt_token_ids[start + 1 : end + 1],
                    dtype=torch.int64,
                    device=self.device,
                )
                ids, values, ranks = compute_prompt_logprobs(logits, targets, num_top)
                for row_ids, row_values, rank in zip(
                    ids.tolist(), values.tolist(), ranks.tolist(), strict=True
                ):
                    state.prompt_logprobs.append(
                        _position_logprobs(row_ids, row_values, rank, num_top)
                    )
            if scheduled.sample:
                output.prompt_logprobs[state.request_id] = state.prompt_logprobs


def _position_logprobs(
    ids: list[int], values: list[float], rank: int, num_top: int
) -> PositionLogprobs:
    """Column 0 is the chosen token; then the top ``num_top`` alternatives (rank 1, 2, ...)."""
    entry: PositionLogprobs = {ids[0]: Logprob(values[0], rank)}
    for top_rank, (token_id, value) in enumerate(
        zip(ids[1 : 1 + num_top], values[1 : 1 + num_top], strict=True), start=1
    ):
        if token_id not in entry:
            entry[token_id] = Logprob(value, top_rank)
    return entry
