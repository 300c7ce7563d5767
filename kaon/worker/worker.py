"""Worker: one rank's model (or model shard), KV cache and ModelRunner.

The same class serves a single-rank engine (inside the engine process) and every rank of a
tensor-parallel one (rank 0 inside the engine process, the others in worker processes), so the
forward pass has one code path for 1 and N ranks.
"""

from __future__ import annotations

import logging
import time

import torch

from kaon.attention.metadata import forward_context
from kaon.config import EngineConfig, describe_quantization
from kaon.device import resolve_device, resolve_dtype, resolve_kv_cache_dtype
from kaon.distributed.communication import TensorParallelGroup
from kaon.layers.quantization import weight_bytes
from kaon.layers.rotary import limit_rope_positions
from kaon.models.loader import load_model
from kaon.outputs import ScheduledRequest, SchedulerOutput
from kaon.startup import log_step
from kaon.worker.cpu_kernels import load_cpu_kernels, pack_linear_weights_for_cpu
from kaon.worker.cuda_graphs import build_decode_graphs, graphs_supported
from kaon.worker.input_batch import InputBatch
from kaon.worker.kv_cache import allocate_kv_cache, default_max_model_len, num_blocks_for_budget
from kaon.worker.model_runner import ModelRunner

logger = logging.getLogger("kaon")


class Worker:
    """Loads this rank's weights; ``initialize_cache`` then allocates the KV cache.

    ``tp_group``: the tensor-parallel group this process joined, or ``None`` (one rank). On CUDA
    rank ``r`` runs on ``cuda:r``.

    Raises:
        ValueError: bad model path or options; naming ``tensor_parallel_size`` when the model
            cannot be split over the group.
    """

    def __init__(self, config: EngineConfig, tp_group: TensorParallelGroup | None = None):
        self.config = config
        self.tp_group = tp_group
        model_config = config.model_config
        if config.parallel_config.num_threads:
            torch.set_num_threads(config.parallel_config.num_threads)
        self.device = resolve_device(model_config.device)
        if self.device.type == "cuda" and tp_group is not None:
            self.device = torch.device("cuda", tp_group.rank)
            torch.cuda.set_device(self.device)
        self.dtype = resolve_dtype(model_config.dtype, self.device)
        self.kv_cache_dtype = resolve_kv_cache_dtype(config.cache_config.kv_cache_dtype, self.dtype)
        # Before the first forward pass, never inside a request (compiles once per install).
        start = time.perf_counter()
        self.cpu_kernels = load_cpu_kernels(self.device, self.dtype)
        log_step("C++ kernels", time.perf_counter() - start)
        start = time.perf_counter()
        self.loaded = load_model(
            model_config.model, self.dtype, self.device, tp_group=tp_group,
            quantization=model_config.quantization,
            group_size=model_config.quantization_group_size,
        )  # fmt: skip
        pack_linear_weights_for_cpu(self.loaded.model)
        # The engine's max_model_len is at most this (it may lower it to fit the KV cache).
        limit_rope_positions(
            self.loaded.model, default_max_model_len(self.loaded.config, model_config.max_model_len)
        )
        rank = 0 if tp_group is None else tp_group.rank
        quantization = describe_quantization(
            model_config.quantization, model_config.quantization_group_size, self.dtype
        )
        logger.info("rank %d loaded %s in %.1f s (%s, %.0f MiB of weights, %s activations, %s)",
                    rank, self.loaded.path, time.perf_counter() - start, quantization,
                    weight_bytes(self.loaded.model) / 2**20, self.dtype, self.device)  # fmt: skip
        tokenizer_eos = set(self.loaded.tokenizer.eos_token_ids)
        self.eos_token_ids = tokenizer_eos | set(self.loaded.config.eos_token_ids)
        self.model_runner: ModelRunner | None = None

    def num_blocks_for_budget(self) -> int:
        """KV cache blocks that fit this rank's budget (its own KV heads only).

        Raises:
            ValueError: naming the flags when not one block fits, one max_model_len sequence
                exceeds the default bound, or the memory available now is short.
        """
        cache = self.config.cache_config
        return num_blocks_for_budget(
            self.loaded.model.config, cache.block_size, self.kv_cache_dtype, self.device,
            cache.kv_cache_memory_bytes, cache.kv_cache_memory_fraction,
            self.config.model_config.max_model_len, self.config.scheduler_config.max_num_seqs,
        )  # fmt: skip

    def initialize_cache(self, num_blocks: int) -> None:
        """Allocate ``num_blocks`` KV cache blocks for this rank's KV heads; build the runner."""
        block_size = self.config.cache_config.block_size
        start = time.perf_counter()
        use_graphs = self._use_cuda_graphs()
        # With CUDA graphs, one more block than the pool hands out: padded graph rows write it.
        kv_caches = allocate_kv_cache(
            self.loaded.model.config, num_blocks + int(use_graphs), block_size,
            self.kv_cache_dtype, self.device,
        )  # fmt: skip
        num_bytes = sum(2 * key.numel() * key.element_size() for key, _ in kv_caches)
        logger.info("allocated the KV cache: %d blocks of %d tokens, %.0f MiB %s, in %.1f s",
                    num_blocks, block_size, num_bytes / 2**20, self.kv_cache_dtype,
                    time.perf_counter() - start)  # fmt: skip
        log_step("KV cache", time.perf_counter() - start, f"{num_bytes / 2**20:.0f} MiB reserved")
        self.model_runner = ModelRunner(
            self.loaded.model, kv_caches, block_size, self.eos_token_ids, self.device
        )
        if use_graphs:
            self.model_runner.cuda_graphs = build_decode_graphs(
                self.config, self.loaded.model, padding_block=num_blocks, device=self.device
            )

    def _use_cuda_graphs(self) -> bool:
        """CUDA graphs for decode steps unless ``enforce_eager`` or unsupported here."""
        if self.config.model_config.enforce_eager:
            return False
        tp_size = 1 if self.tp_group is None else self.tp_group.world_size
        reason = graphs_supported(self.loaded.model, self.device, tp_size)
        if reason is not None and self.device.type == "cuda":
            logger.info("CUDA graphs off: %s", reason)
        return reason is None

    def execute_model(self, scheduler_output: SchedulerOutput):
        assert self.model_runner is not None, "initialize_cache first"
        return self.model_runner.execute_model(scheduler_output)

    @torch.inference_mode()
    def prompt_logits(self, token_ids: list[int], block_ids: list[int]) -> torch.Tensor | None:
        """Logits of one whole-prompt prefill, [len(token_ids), vocab] float32 (``None`` on
        ranks other than 0). Its K/V go to ``block_ids``, blocks the engine took from the pool
        for it (``LLMEngine.prompt_logits``)."""
        assert self.model_runner is not None, "initialize_cache first"
        block_size = self.model_runner.block_size
        scheduled = ScheduledRequest("prompt-logits", token_ids, 0, block_ids, True)
        batch = InputBatch.build([scheduled], block_size, self.device)
        model = self.model_runner.model
        with forward_context(batch.attention):
            hidden = model(batch.input_ids, batch.positions)
            return model.compute_logits(hidden)
