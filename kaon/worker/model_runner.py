"""ModelRunner: SchedulerOutput -> one forward pass -> sampled tokens (ModelRunnerOutput).

It keeps the per-request state the sampler needs across steps (sampling params, the seeded
generator, generated ids for penalties, prompt-logprob progress) and drops it when the scheduler
reports the request finished. It never sees the scheduler's Request objects.
"""

from __future__ import annotations

import dataclasses

import torch

from kaon.attention.metadata import forward_context
from kaon.models.llama import LlamaForCausalLM
from kaon.outputs import Logprob, ModelRunnerOutput, PositionLogprobs, SchedulerOutput
from kaon.sample.grammar import apply_token_bitmask
from kaon.sample.sampler import Sampler, SamplerOutput, compute_prompt_logprobs
from kaon.spec_decode.rejection_sampler import verify_drafts
from kaon.worker.cuda_graphs import DecodeCudaGraphs
from kaon.worker.grammar_inputs import add_grammar_bitmask
from kaon.worker.input_batch import InputBatch
from kaon.worker.request_state import CachedRequestState
from kaon.worker.sampling_inputs import build_sampling_metadata


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
        # Set by the Worker on CUDA (kaon/worker/cuda_graphs.py): decode steps replay graphs.
        self.cuda_graphs: DecodeCudaGraphs | None = None

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(scheduler_output)
        if scheduler_output.is_empty:
            return ModelRunnerOutput([], [])
        batch = InputBatch.build(scheduler_output.scheduled_requests, self.block_size, self.device)
        graphs = self.cuda_graphs
        if graphs is not None and graphs.can_run(batch.attention, len(batch.input_ids)):
            hidden = graphs.run(batch.input_ids, batch.positions, batch.attention)
        else:
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
        drafts = [batch.requests[i].spec_token_ids for i in batch.sampled_req_indices]
        if any(drafts):
            self._verify(logits, states, drafts, scheduler_output, output)
            return output
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

    def _verify(
        self,
        logits: torch.Tensor,
        states: list[CachedRequestState],
        drafts: list[list[int]],
        scheduler_output: SchedulerOutput,
        output: ModelRunnerOutput,
    ) -> None:
        """Speculative decoding: logits has 1 + len(draft) rows per request; keep the accepted
        drafts and one sampled token (kaon/spec_decode/rejection_sampler.py). A request with a
        grammar gets no drafts (one row), masked here as in the plain sampling path."""
        # Row i of a request sees its drafts before i as output (penalties, min_tokens).
        row_states = [
            dataclasses.replace(state, output_token_ids=state.output_token_ids + draft[:i])
            for state, draft in zip(states, drafts, strict=True)
            for i in range(len(draft) + 1)
        ]
        metadata = build_sampling_metadata(row_states, self.vocab_size, self.device)
        row_ids = [state.request_id for state in row_states]
        add_grammar_bitmask(metadata, scheduler_output, row_ids, self.device)
        if metadata.grammar_bitmask is not None:
            logits = apply_token_bitmask(logits, metadata.grammar_rows, metadata.grammar_bitmask)
            metadata.grammar_rows = metadata.grammar_bitmask = None
        generators = [state.generator for state in states]
        verified = verify_drafts(logits, metadata, drafts, generators)
        output.req_ids = [state.request_id for state in states]
        output.sampled_token_ids = [token_ids[-1] for token_ids in verified.token_ids]
        for row, (state, token_ids) in enumerate(zip(states, verified.token_ids, strict=True)):
            state.output_token_ids.extend(token_ids)
            if len(token_ids) > 1:
                output.accepted_draft_token_ids[state.request_id] = token_ids[:-1]
            num_top = state.sampling_params.logprobs
            if verified.logprob_rows is None or num_top is None:
                continue
            ids, values, ranks = verified.logprob_rows[row]
            positions = [
                _position_logprobs(ids[i], values[i], ranks[i], num_top) for i in range(len(ids))
            ]
            output.logprobs[state.request_id] = positions[-1]
            output.draft_logprobs[state.request_id] = positions[:-1]

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
