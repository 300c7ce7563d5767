"""The process's tensor-parallel group: set up once per rank, handed to the model at build time.

Ranks meet through a TCPStore on loopback that rank 0 (the engine process) opens on a free port.
The backend is gloo on CPU and ``cpu:gloo,cuda:nccl`` on CUDA (NCCL for the model's collectives
on GPU tensors, gloo for the small CPU control values). The group is a process global (the
torch.distributed default group), so one process holds at most one tensor-parallel engine.

Model modules read the group with ``get_tp_group()`` in their constructors, and only the loader
sets it, around the construction (``building_with``): a single-rank model built while a
tensor-parallel engine lives in the same process still gets ``None``.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator

import torch
import torch.distributed as dist

from kaon.distributed.communication import TensorParallelGroup

_GROUP: TensorParallelGroup | None = None  # joined by init_tensor_parallel
_BUILD_GROUP: TensorParallelGroup | None = None  # the group of the model being built
LOOPBACK = "127.0.0.1"


def create_store(port: int, is_master: bool, timeout_s: float) -> dist.TCPStore:
    """Rank 0: ``create_store(0, True, ...)`` listens on a free loopback port (``store.port``);
    the other ranks connect to that port. ``timeout_s``: seconds to wait for peers."""
    return dist.TCPStore(
        LOOPBACK,
        port,
        is_master=is_master,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def init_tensor_parallel(
    rank: int, world_size: int, store: dist.Store, device: torch.device, timeout_s: float
) -> TensorParallelGroup:
    """Join the group (blocks until all ``world_size`` ranks joined) and make it current.

    ``timeout_s`` bounds the join and every later collective: a hung or dead peer turns into a
    RuntimeError instead of a hang.

    Raises:
        RuntimeError: a group is already set up in this process, or the peers did not join.
    """
    global _GROUP
    if _GROUP is not None or dist.is_initialized():
        raise RuntimeError(
            "a tensor-parallel group already exists in this process; close the other "
            "tensor_parallel_size > 1 engine first"
        )
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    _GROUP = TensorParallelGroup(rank, world_size)
    return _GROUP


def current_group() -> TensorParallelGroup | None:
    """The group this process joined, or ``None``."""
    return _GROUP


@contextlib.contextmanager
def building_with(group: TensorParallelGroup | None) -> Iterator[None]:
    """Model constructors inside this block see ``group`` through ``get_tp_group()``."""
    global _BUILD_GROUP
    previous, _BUILD_GROUP = _BUILD_GROUP, group
    try:
        yield
    finally:
        _BUILD_GROUP = previous


def get_tp_group() -> TensorParallelGroup | None:
    """The group of the model under construction; ``None``: a single-rank model (no
    collectives)."""
    return _BUILD_GROUP


def destroy_tensor_parallel() -> None:
    """Leave the group (idempotent); a new one may be set up afterwards."""
    global _GROUP
    _GROUP = None
    if dist.is_initialized():
        dist.destroy_process_group()
