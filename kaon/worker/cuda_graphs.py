"""CUDA graphs for decode steps: capture the model's forward once per batch size, replay per step.

A decode step at batch 1 of a ~1B model launches a few hundred small kernels; launching them one
by one from Python costs more than the GPU spends on them. As vLLM does, the forward pass of a
decode-only batch is captured once per size in ``capture_sizes`` at start-up (after a warm-up
run) and replayed afterwards; a batch of ``n`` decode rows runs the graph of the next captured
size ``>= n`` with its inputs padded. Prefill steps, mixed steps and batches larger than the
largest graph run eagerly. ``--enforce-eager`` turns graphs off.

Static buffers (one set, sliced per size; every graph reads and writes the same memory):

    input_ids, positions, slot_mapping, seq_lens : [max_size]
    block_tables                                 : [max_size, max_blocks_per_seq]
    outputs[size]                                : [size, hidden_size]  (graph memory pool)

Padded rows (``n <= row < size``) decode token 0 at position 0 into a scratch KV cache block
that the block pool never hands out (``padding_block``), with a context of that one token, so
they never touch a request's blocks and every attention kernel sees a valid row. Their outputs are
discarded. The forward reads only device tensors: no host sync inside a graph.

On a CPU device the same bookkeeping runs with ``EagerReplay`` in place of ``torch.cuda.CUDAGraph``
(replay re-runs the forward into the static output), so tests exercise padding and buffer reuse
without a GPU.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable
from typing import Protocol

import torch

from kaon.attention.metadata import AttentionMetadata, forward_context
from kaon.config import EngineConfig
from kaon.worker.kv_cache import default_max_model_len

logger = logging.getLogger(__name__)

# As vLLM: 1, 2, 4, then every multiple of 8 up to the largest size.
DEFAULT_MAX_CAPTURE_SIZE = 256


def capture_sizes(max_num_seqs: int, max_size: int = DEFAULT_MAX_CAPTURE_SIZE) -> list[int]:
    """Batch sizes (decode rows) to capture: 1, 2, 4, 8, 16, 24, ... up to
    ``min(max_num_seqs, max_size)``, which is always included."""
    largest = max(1, min(max_num_seqs, max_size))
    sizes = {size for size in (1, 2, 4) if size <= largest}
    sizes.update(range(8, largest + 1, 8))
    sizes.add(largest)
    return sorted(sizes)


def padded_size(num_rows: int, sizes: list[int]) -> int | None:
    """The smallest captured size ``>= num_rows``, or None when ``num_rows`` exceeds them all
    (then the step runs eagerly). ``sizes`` is sorted ascending."""
    index = bisect.bisect_left(sizes, num_rows)
    return sizes[index] if index < len(sizes) else None


class _Graph(Protocol):
    def replay(self) -> None: ...


class EagerReplay:
    """Stand-in for a captured graph on CPU: ``replay`` runs ``forward`` again into ``output``."""

    def __init__(self, forward: Callable[[], torch.Tensor], output: torch.Tensor) -> None:
        self.forward = forward
        self.output = output

    def replay(self) -> None:
        self.output.copy_(self.forward())


class DecodeCudaGraphs:
    """Captured decode forwards, one per size; ``run`` pads a decode batch and replays.

    Args:
        model: a causal LM with ``forward(input_ids, positions) -> [rows, hidden_size]`` whose
            attention layers already hold their KV cache tensors.
        sizes: batch sizes to capture (``capture_sizes``).
        max_blocks_per_seq: block-table width, ``ceil(max_model_len / block_size)``.
        block_size: tokens per KV cache block.
        padding_block: a KV cache block outside the block pool, written by padded rows.
        hidden_size: width of the model's output rows.
        device: where the buffers live (cuda; cpu only for tests, with ``EagerReplay``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sizes: list[int],
        max_blocks_per_seq: int,
        block_size: int,
        padding_block: int,
        hidden_size: int,
        device: torch.device,
    ) -> None:
        if not sizes:
            raise ValueError("capture sizes must not be empty")
        self.model = model
        self.sizes = sorted(sizes)
        self.max_size = self.sizes[-1]
        self.max_blocks_per_seq = max_blocks_per_seq
        self.block_size = block_size
        self.padding_block = padding_block
        self.hidden_size = hidden_size
        self.device = device
        max_size = self.max_size
        self.input_ids = torch.zeros(max_size, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_size, dtype=torch.int64, device=device)
        self.slot_mapping = torch.zeros(max_size, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(max_size, dtype=torch.int64, device=device)
        self.block_tables = torch.full(
            (max_size, max_blocks_per_seq), padding_block, dtype=torch.int64, device=device
        )
        self.slot_positions = torch.arange(max_blocks_per_seq * block_size, device=device)
        self.graphs: dict[int, _Graph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.num_replays = 0

    # -- capture --------------------------------------------------------------------------------

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first (smaller graphs then reuse its memory pool).

        Each size first runs once eagerly (warm-up: lazy initialisation, Triton compilation,
        cuBLAS workspaces) on all-padding inputs, which write only the padding block.
        """
        start = time.perf_counter()
        self._pad_rows(0, self.max_size)
        pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        for size in reversed(self.sizes):
            self._forward(size)  # warm-up
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.outputs[size] = self._forward(size)
                self.graphs[size] = graph
            else:
                self.outputs[size] = self._forward(size)
                self.graphs[size] = EagerReplay(
                    lambda size=size: self._forward(size), self.outputs[size]
                )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        logger.info(
            "captured %d CUDA graphs for decode batch sizes %d..%d in %.1f s",
            len(self.sizes), self.sizes[0], self.max_size, time.perf_counter() - start,
        )  # fmt: skip

    def _forward(self, size: int) -> torch.Tensor:
        """The model over the first ``size`` rows of the static buffers (device ops only)."""
        seq_lens = self.seq_lens[:size]
        # The torch fallback's mask; the Triton kernel reads seq_lens and ignores it.
        mask = self.slot_positions.unsqueeze(0) < seq_lens.unsqueeze(1)
        metadata = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            num_decode_tokens=size,
            decode_block_tables=self.block_tables[:size],
            decode_seq_lens=seq_lens,
            decode_mask=mask.view(size, 1, 1, -1),
            prefills=[],
        )
        with forward_context(metadata):
            return self.model.forward(self.input_ids[:size], self.positions[:size])

    # -- replay ---------------------------------------------------------------------------------

    def can_run(self, attention: AttentionMetadata, num_tokens: int) -> bool:
        """Whether this step fits a captured graph: decode rows only, at most the largest size,
        and a block table no wider than the static one."""
        if attention.prefills or attention.num_decode_tokens != num_tokens or not self.graphs:
            return False
        tables = attention.decode_block_tables
        return (
            num_tokens <= self.max_size
            and tables is not None
            and tables.shape[1] <= self.max_blocks_per_seq
        )

    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attention: AttentionMetadata
    ) -> torch.Tensor:
        """Copy this step's inputs into the static buffers, pad, replay; returns the hidden
        states of the real rows, [num_rows, hidden_size] (a view of the graph's output: read it
        before the next replay). Call only when ``can_run``."""
        num_rows = input_ids.shape[0]
        size = padded_size(num_rows, self.sizes)
        assert size is not None and attention.decode_block_tables is not None
        assert attention.decode_seq_lens is not None
        width = attention.decode_block_tables.shape[1]
        self.input_ids[:num_rows].copy_(input_ids, non_blocking=True)
        self.positions[:num_rows].copy_(positions, non_blocking=True)
        self.slot_mapping[:num_rows].copy_(attention.slot_mapping, non_blocking=True)
        self.seq_lens[:num_rows].copy_(attention.decode_seq_lens, non_blocking=True)
        self.block_tables[:num_rows, :width].copy_(attention.decode_block_tables, non_blocking=True)
        self._pad_rows(num_rows, size)
        self.graphs[size].replay()
        self.num_replays += 1
        return self.outputs[size][:num_rows]

    def _pad_rows(self, start: int, end: int) -> None:
        """Rows ``start:end`` decode token 0 at position 0 into the padding block, context 1."""
        if start >= end:
            return
        self.input_ids[start:end].zero_()
        self.positions[start:end].zero_()
        self.slot_mapping[start:end].fill_(self.padding_block * self.block_size)
        self.seq_lens[start:end].fill_(1)
        self.block_tables[start:end, 0].fill_(self.padding_block)


def graphs_supported(model: torch.nn.Module, device: torch.device, tp_size: int) -> str | None:
    """None when decode graphs can be used for this model, else the reason they are not.

    Graphs need a CUDA device, one rank (collectives are not captured), and attention that
    reads no host-side lengths (sliding-window layers do: ``kaon.attention.sliding_window``).
    """
    if device.type != "cuda":
        return "the device is not CUDA"
    if tp_size > 1:
        return "tensor parallelism is on"
    if getattr(getattr(model, "config", None), "sliding_window", None):
        return "the model has sliding-window layers"
    return None


def build_decode_graphs(
    config: EngineConfig, model: torch.nn.Module, padding_block: int, device: torch.device
) -> DecodeCudaGraphs:
    """Capture decode graphs for ``model`` (whose attention layers hold their KV cache) at the
    sizes ``capture_sizes(max_num_seqs, max_cuda_graph_batch_size)``."""
    model_config = config.model_config
    arch = model.config  # type: ignore[attr-defined]
    block_size = config.cache_config.block_size
    max_model_len = default_max_model_len(arch, model_config.max_model_len)
    # Speculative decoding verifies up to k drafts past the context: room for them too.
    speculative = config.speculative_config
    lookahead = speculative.num_speculative_tokens if speculative is not None else 0
    sizes = capture_sizes(
        config.scheduler_config.max_num_seqs * (1 + lookahead),
        model_config.max_cuda_graph_batch_size,
    )
    graphs = DecodeCudaGraphs(
        model, sizes, -(-(max_model_len + lookahead) // block_size), block_size,
        padding_block, arch.hidden_size, device,
    )  # fmt: skip
    graphs.capture()
    return graphs
