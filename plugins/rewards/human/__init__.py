"""``human``: success decided by a person on a local web page (see :mod:`.judge`).

Select it with ``success.type=human`` (``success.port``, ``success.timeout_s``);
open the URL the trainer logs and click success / failure, or press keys.
"""

from __future__ import annotations

from pushcut import hookimpl
from pushcut.plugins.rewards.human.judge import HumanJudge, HumanJudgeConfig

__all__ = ["HumanJudge", "HumanJudgeConfig"]


@hookimpl
def pushcut_register_success_detectors(registry) -> None:
    registry.add("human", HumanJudgeConfig, HumanJudge)
