"""``create_executor``: the executor for an EngineConfig (one rank here, or N tensor-parallel
ranks in worker processes)."""

from __future__ import annotations

from kaon.config import EngineConfig
from kaon.executor.executor import Executor, UniprocExecutor


def create_executor(config: EngineConfig) -> Executor:
    """UniprocExecutor for ``tensor_parallel_size`` 1, else MultiprocExecutor (imported only
    then: it brings torch.distributed and worker processes)."""
    if config.parallel_config.tensor_parallel_size == 1:
        return UniprocExecutor(config)
    from kaon.executor.multiproc import MultiprocExecutor

    return MultiprocExecutor(config)
