"""One slot of an :class:`~pushcut.envpool.EnvPool` seen as an :class:`~pushcut.envcontract.Env`.

Code written against a single env — recording expert demos, the Env contract suite, a quick
script — then runs on an env that lives in another venv, another process or another machine,
through whatever transport the pool uses. A slot failure becomes an :class:`EnvError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pushcut.envcontract import ActionSpec, Env, Observation, StepResult, TaskSpec
from pushcut.errors import EnvError


class SlotEnv(Env):
    """Slot ``slot`` of ``pool`` as an Env. Closing it does not close the pool."""

    def __init__(self, pool: Any, slot: int = 0) -> None:
        self.pool, self.slot = pool, slot

    def _one(self, cmd: str, args: tuple) -> Any:
        from pushcut.envpool import SlotFailure

        value = self.pool.collect(self.pool.submit(cmd, {self.slot: args}))[self.slot]
        if isinstance(value, SlotFailure):
            raise EnvError(value.reason)
        return value

    def tasks(self) -> list[TaskSpec]:
        return self.pool.tasks()

    @property
    def action_spec(self) -> ActionSpec:
        return self.pool.action_spec

    def reset(self, task_id: str, init_state: int) -> Observation:
        return self._one("reset", (task_id, int(init_state)))

    def step(self, actions: np.ndarray, record: bool = False) -> StepResult:
        return self._one("step", (np.asarray(actions), bool(record)))

    def render(self) -> np.ndarray:
        return self._one("render", ())

    def expert_action(self) -> np.ndarray:
        """The remote env's scripted expert; NotImplementedError when it has none."""
        try:
            return self._one("expert", ())
        except EnvError as exc:
            if "NotImplementedError" in str(exc):
                raise NotImplementedError(str(exc).split("NotImplementedError: ", 1)[-1]) from None
            raise

    def close(self) -> None:
        pass
