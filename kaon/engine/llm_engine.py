"""LLMEngine: the synchronous engine. ``step()`` is the whole pipeline, once:

schedule -> execute (model + sampler) -> update_from_output -> detokenize
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from kaon.config import EngineConfig, describe_quantization
from kaon.core.kv_cache_manager import KVCacheManager, cdiv
from kaon.core.scheduler import Scheduler, SchedulerStats
from kaon.device import resolve_device, resolve_dtype, resolve_kv_cache_dtype
from kaon.engine.input_processor import InputProcessor, PromptType
from kaon.engine.output_processor import OutputProcessor
from kaon.executor.factory import create_executor
from kaon.logging_setup import ensure_visible_logging
from kaon.outputs import RequestOutput
from kaon.request import Request, RequestStatus
from kaon.sampling_params import SamplingParams
from kaon.spec_decode.drafter import Drafter
from kaon.structured_outputs import StructuredOutputManager
from kaon.worker.kv_cache import bytes_per_block, default_max_model_len

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("kaon")


class LLMEngine:
    """Owns the model, the KV cache, the scheduler and the detokenizers of one engine replica.

    Not thread-safe: AsyncLLM serialises calls into it.
    """

    def __init__(self, config: EngineConfig) -> None:
        ensure_visible_logging()  # load progress is INFO: visible to a Python user too
        self.config = config
        model_config = config.model_config
        self.device = resolve_device(model_config.device)
        self.dtype = resolve_dtype(model_config.dtype, self.device)
        start = time.perf_counter()
        # Loads the model (or each rank's shard) and allocates the KV cache on every rank.
        self.executor = create_executor(config)
        try:
            self._init_engine(config, start)
        except BaseException:
            self.executor.shutdown()
            raise

    def _init_engine(self, config: EngineConfig, start: float) -> None:
        cache_config = config.cache_config
        model_config = config.model_config
        loaded = self.executor.loaded
        self.kv_cache_dtype = resolve_kv_cache_dtype(cache_config.kv_cache_dtype, self.dtype)
        self.model_name = loaded.name
        self.model_path = loaded.path
        self.arch_config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.generation_defaults = loaded.generation_defaults
        self.eos_token_ids = self.executor.driver.eos_token_ids
        logger.info("loaded %s in %.1f s (%s activations, %s, %s, tensor_parallel_size %d)",
                    loaded.path, time.perf_counter() - start, self.dtype,
                    describe_quantization(model_config.quantization,
                                          model_config.quantization_group_size, self.dtype),
                    self.device, config.parallel_config.tensor_parallel_size)  # fmt: skip
        num_blocks = self.executor.num_blocks
        self.max_model_len = self._resolve_max_model_len(num_blocks * cache_config.block_size)
        self._log_kv_capacity(num_blocks)
        self.kv_cache_manager = KVCacheManager(
            num_blocks, cache_config.block_size, cache_config.enable_prefix_caching
        )
        scheduler_config = config.scheduler_config
        _check_unchunked_budget(scheduler_config, self.max_model_len)
        drafter = None
        if config.speculative_config is not None:
            drafter = Drafter(config.speculative_config, self.max_model_len)
        self.scheduler = Scheduler(
            self.kv_cache_manager,
            max_num_seqs=scheduler_config.max_num_seqs,
            max_num_batched_tokens=scheduler_config.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            enable_chunked_prefill=scheduler_config.enable_chunked_prefill,
            drafter=drafter,
        )
        self.input_processor = InputProcessor(self.tokenizer, self.max_model_len)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.failed_requests: dict[str, Exception] = {}  # see take_failed_requests
        self.structured_output_manager = StructuredOutputManager(
            self.tokenizer, self.arch_config.vocab_size, self.eos_token_ids
        )
        # Grammar bitmasks fill on a thread while the forward pass runs (the sampler joins them)
        # when a core is free for it: an accelerator, or fewer CPU threads than cores. With
        # every core in torch's pool the thread hand-off costs the engine thread more than the
        # fill (~0.5 ms per constrained row), so the rows are filled before the forward pass.
        num_threads = config.parallel_config.num_threads
        self._overlap_grammar = self.device.type != "cpu" or (
            num_threads is not None and num_threads < (os.cpu_count() or 1)
        )
        self.num_steps = 0

    @classmethod
    def from_options(cls, **options: object) -> LLMEngine:
        return cls(EngineConfig.from_options(**options))

    def _resolve_max_model_len(self, kv_capacity_tokens: int) -> int:
        asked = self.config.model_config.max_model_len
        model_max = self.arch_config.max_position_embeddings
        if asked is not None and asked > model_max:
            raise ValueError(
                f"max_model_len {asked} exceeds the model's context length {model_max}"
            )
        length = default_max_model_len(self.arch_config, asked)
        if length > kv_capacity_tokens:
            if asked is not None:
                raise ValueError(
                    f"max_model_len {asked} tokens does not fit the KV cache ({kv_capacity_tokens} "
                    "tokens); raise kv_cache_memory_bytes or lower max_model_len"
                )
            logger.warning(
                "max_model_len lowered to %d tokens to fit the KV cache", kv_capacity_tokens
            )
            length = kv_capacity_tokens
        return length

    def _log_kv_capacity(self, num_blocks: int) -> None:
        block_size = self.config.cache_config.block_size
        per_block = bytes_per_block(self.arch_config, block_size, self.kv_cache_dtype)
        num_tokens = num_blocks * block_size
        logger.info(
            "KV cache: %d blocks x %d tokens = %d tokens (%.1f MiB, all ranks); maximum "
            "concurrency at max_model_len %d: %.2fx",
            num_blocks, block_size, num_tokens, num_blocks * per_block / 2**20,
            self.max_model_len, num_tokens / self.max_model_len,
        )  # fmt: skip

    # ------------------------------------------------------------------ requests

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        sampling_params: SamplingParams,
        arrival_time: float | None = None,
        queue: object = None,
    ) -> None:
        """Validate, tokenize and queue a request.

        Raises:
            ValueError: naming the bad field; the engine and other requests are unaffected.
        """
        if request_id in self.output_processor.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        prompt_text, prompt_token_ids = self.input_processor.process(prompt, sampling_params)
        structured = sampling_params.structured_outputs
        if structured is not None:  # validates now (ValueError -> 400); compiles off the loop
            self.structured_output_manager.create_request(request_id, structured)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        room = self.max_model_len - len(prompt_token_ids)
        max_tokens = min(sampling_params.max_tokens or room, room)
        child_ids = self.output_processor.add_request(
            request_id, prompt_text, prompt_token_ids, sampling_params, arrival, queue
        )
        try:
            for index, child_id in enumerate(child_ids):
                params = sampling_params
                if sampling_params.n > 1 and sampling_params.seed is not None:
                    params = sampling_params.clone()
                    # Distinct and reproducible; modulo 2**64 so seed 2**64 - 1 with n > 1 stays
                    # in torch.Generator's range (it reads a negative seed modulo 2**64 too).
                    params.seed = (sampling_params.seed + index) % 2**64
                request = Request(child_id, prompt_token_ids, params, self.eos_token_ids,
                                  arrival, max_tokens=max_tokens)  # fmt: skip
                if structured is not None:
                    request.structured_output_request = (
                        self.structured_output_manager.create_request(child_id, structured)
                    )
                self.scheduler.add_request(request)
        except ValueError:
            self.abort_request([request_id])  # undo the children already queued
            raise

    def abort_request(self, request_ids: list[str]) -> list[RequestOutput]:
        """End user requests now (finish_reason "abort"); their KV blocks return to the pool."""
        outputs = []
        for request_id in request_ids:
            children, output = self.output_processor.abort_request(request_id)
            self.scheduler.finish_requests(children, RequestStatus.FINISHED_ABORTED)
            if output is not None:
                outputs.append(output)
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.requests)

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        """Run one scheduling step and return the outputs of the requests that progressed."""
        scheduler_output = self.scheduler.schedule()
        self.structured_output_manager.grammar_bitmask(
            scheduler_output, self.scheduler.requests, overlap=self._overlap_grammar
        )
        runner_output = self.executor.execute_model(scheduler_output)
        engine_outputs = self.scheduler.update_from_output(scheduler_output, runner_output)
        request_outputs, stopped = self.output_processor.process_outputs(engine_outputs)
        if stopped:
            self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        self._fail_requests(self.output_processor.take_failed())
        self.num_steps += 1
        return request_outputs

    def _fail_requests(self, failed: dict[str, Exception]) -> None:
        """Abort the requests whose output processing raised (their KV blocks are freed) and
        keep their errors for ``take_failed_requests``; the other requests go on."""
        for request_id, error in failed.items():
            logger.error("request %s failed and was aborted: %s: %s", request_id,
                         type(error).__name__, error, exc_info=error)  # fmt: skip
            self.abort_request([request_id])
            self.failed_requests[request_id] = error

    def take_failed_requests(self) -> dict[str, Exception]:
        """Requests that failed alone since the last call (request id -> error). They are already
        aborted; the caller reports the error to each one's client."""
        failed, self.failed_requests = self.failed_requests, {}
        return failed

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    def prompt_logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits of one whole-prompt prefill: [len(token_ids), vocab_size] float32, on the engine's
        device.

        For reference checks (against transformers, between tensor-parallel sizes, perplexity):
        the prompt runs alone, outside the scheduler, over KV cache blocks taken from the free
        pool (their prefix-cache entries evicted) and given back afterwards, so cached prefixes
        of other requests are never overwritten. Call it between steps, not during one.

        Raises:
            ValueError: empty ``token_ids``, an id that is not an int in [0, vocab_size), more
                than ``max_model_len`` tokens, or fewer free KV cache blocks than the prompt needs.
        """
        if not token_ids:
            raise ValueError("token_ids must not be empty")
        vocab_size = self.arch_config.vocab_size
        for index, token_id in enumerate(token_ids):
            if isinstance(token_id, bool) or not isinstance(token_id, int):
                raise ValueError(f"token_ids[{index}] must be an int, got {token_id!r}")
            if not 0 <= token_id < vocab_size:
                raise ValueError(f"token_ids[{index}] = {token_id} is outside [0, {vocab_size})")
        if len(token_ids) > self.max_model_len:
            raise ValueError(
                f"token_ids has {len(token_ids)} tokens; max_model_len is {self.max_model_len}"
            )
        pool = self.kv_cache_manager.block_pool
        num_blocks = cdiv(len(token_ids), self.config.cache_config.block_size)
        blocks = pool.get_new_blocks(num_blocks)
        try:
            block_ids = [block.block_id for block in blocks]
            return self.executor.collective_rpc("prompt_logits", list(token_ids), block_ids)
        finally:
            pool.free_blocks(blocks)

    def shutdown(self) -> None:
        """Stop the executor's worker ranks (tensor parallelism) and the grammar compile threads;
        idempotent. The engine cannot step afterwards."""
        self.structured_output_manager.shutdown()
        self.executor.shutdown()


def _check_unchunked_budget(scheduler_config, max_model_len: int) -> None:
    """Without chunked prefill a request's whole prompt (or, after a preemption, its prompt and
    output) is computed in one step, so a budget below max_model_len would leave long requests
    waiting forever. Raises ValueError naming max_num_batched_tokens, as vLLM does."""
    budget = scheduler_config.max_num_batched_tokens
    if not scheduler_config.enable_chunked_prefill and budget < max_model_len:
        raise ValueError(
            f"max_num_batched_tokens ({budget}) is smaller than max_model_len ({max_model_len}) "
            "with chunked prefill disabled: longer prompts could never be scheduled; raise "
            "max_num_batched_tokens, lower max_model_len or enable chunked prefill"
        )
