"""Executor: where the model runs. One rank in the engine process (UniprocExecutor, here) or N
tensor-parallel ranks (MultiprocExecutor, ``kaon.executor.multiproc``); ``kaon.executor.factory``
picks one. Both run the same Worker / ModelRunner / model code and answer with rank 0's
ModelRunnerOutput.
"""

from __future__ import annotations

from typing import Any, Protocol

from kaon.config import EngineConfig
from kaon.models.loader.loader import LoadedModel
from kaon.outputs import ModelRunnerOutput, SchedulerOutput
from kaon.worker.model_runner import ModelRunner
from kaon.worker.worker import Worker


class Executor(Protocol):
    """What the engine needs from an executor."""

    driver: Worker  # rank 0, in the engine process
    num_blocks: int  # KV cache blocks, the same on every rank

    @property
    def loaded(self) -> LoadedModel: ...

    @property
    def model_runner(self) -> ModelRunner: ...

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput: ...

    def collective_rpc(self, method: str, *args: Any) -> Any: ...

    def shutdown(self) -> None: ...


class DriverExecutor:
    """What every executor shares: rank 0's ``Worker`` (``driver``) lives in this process."""

    driver: Worker

    @property
    def loaded(self) -> LoadedModel:
        return self.driver.loaded

    @property
    def model_runner(self) -> ModelRunner:
        assert self.driver.model_runner is not None
        return self.driver.model_runner


class UniprocExecutor(DriverExecutor):
    """One rank: the Worker runs in the engine's own process (no collectives, no copies).

    Raises:
        ValueError: from loading the model or sizing the KV cache.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.driver = Worker(config)
        self.num_blocks = self.driver.num_blocks_for_budget()
        self.driver.initialize_cache(self.num_blocks)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output)

    def collective_rpc(self, method: str, *args: Any) -> Any:
        """Call ``Worker.<method>(*args)``; returns its result."""
        return getattr(self.driver, method)(*args)

    def shutdown(self) -> None:
        """Nothing to stop: the model lives in this process."""
