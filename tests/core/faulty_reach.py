"""The toy reach env with faults on demand, for the tests of failure handling: a step that raises
(a simulator crash) or never returns (a hung simulator). Test code, not pushcut's: worker processes
import it through the test process's path (``faulty_reach:FaultyReachEnv``), servers through
``PYTHONPATH`` (``--plugin faulty_reach:FaultyToyPlugin``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pushcut import hookimpl
from pushcut.contracts import StepResult
from pushcut.toys import ReachConfig, ReachEnv, ToyPlugin

FAULTY_PLUGIN = "faulty_reach:FaultyToyPlugin"


@dataclass
class FaultyReachConfig(ReachConfig):
    """The reach env's options plus where it fails."""

    crash_on_init_state: int = -1
    """Raise inside step() for this initial state; -1 = never."""
    hang_on_init_state: int = -1
    """Sleep forever inside step() for this initial state; -1 = never."""


class FaultyReachEnv(ReachEnv):
    """:class:`~pushcut.toys.ReachEnv` that crashes or hangs in ``step`` on the configured initial state."""

    config: FaultyReachConfig

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        shape = np.asarray(actions).shape
        if len(shape) == 2 and shape[1] == 1:  # a malformed chunk is the base env's error, as before
            if self.init_state == self.config.crash_on_init_state:
                raise RuntimeError("simulated simulator crash")
            if self.init_state == self.config.hang_on_init_state:
                time.sleep(3600)
        return super().step(actions, record)


class FaultyToyPlugin(ToyPlugin):
    """The toy plugin whose ``reach`` env takes the fault knobs."""

    @hookimpl
    def pushcut_register_envs(self, registry) -> None:
        registry.add("reach", FaultyReachConfig, FaultyReachEnv)
