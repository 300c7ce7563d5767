"""Executor: where the model runs. One process today; TP ranks plug in behind the same call."""

from __future__ import annotations

from kaon.outputs import ModelRunnerOutput, SchedulerOutput
from kaon.worker.model_runner import ModelRunner


class UniprocExecutor:
    """Runs the ModelRunner in the engine's own process."""

    def __init__(self, model_runner: ModelRunner) -> None:
        self.model_runner = model_runner

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output)
