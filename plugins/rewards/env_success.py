"""The default success detector: the env's own success flag."""

from __future__ import annotations

from dataclasses import dataclass

from pushcut import hookimpl
from pushcut.contracts import EpisodeOutcome, SuccessDetector


@dataclass
class EnvSuccessConfig:
    """No options: the env's success predicate is the reward."""


class EnvSuccess(SuccessDetector):
    """Reward 1 if the env reported success at the end of the episode, else 0."""

    def __init__(self, config: EnvSuccessConfig | None = None) -> None:
        self.config = config or EnvSuccessConfig()

    def judge(self, episode: EpisodeOutcome) -> bool:
        return bool(episode.env_success)


@hookimpl
def pushcut_register_success_detectors(registry) -> None:
    registry.add("env_success", EnvSuccessConfig, EnvSuccess)
