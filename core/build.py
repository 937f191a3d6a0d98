"""Build the components a run config names: policy, success detector, env pool."""

from __future__ import annotations

from pathlib import Path

from pushcut.config import RunConfig
from pushcut.configio import check_device
from pushcut.contracts import Policy, SuccessDetector
from pushcut.envpool import EnvPool, pool_from_config
from pushcut.errors import CheckpointError
from pushcut.rollout import RolloutCollector
from pushcut.pluginmanager import get_plugin_manager


def build_policy(config: RunConfig, weights: str | Path | None = None) -> Policy:
    """The configured policy on ``train.device``, with ``weights`` (a directory
    written by ``Policy.save``) loaded when given."""
    check_device(config.train.device, "train.device")
    entry = get_plugin_manager().policies.get(config.policy.type)
    policy = entry.build(config.policy.options)
    if weights:
        path = Path(weights)
        if not path.exists():
            raise CheckpointError(f"policy weights directory {str(path)!r} does not exist")
        policy.load(path)
    return policy.to(config.train.device)


def build_detector(config: RunConfig) -> SuccessDetector:
    entry = get_plugin_manager().success_detectors.get(config.success.type)
    return entry.build(config.success.options)


def build_collector(config: RunConfig, pool: EnvPool, policy: Policy) -> RolloutCollector:
    """The rollout collector a run config describes, over ``pool`` with ``policy``."""
    return RolloutCollector.for_policy(pool, policy, build_detector(config), config.rollout.max_steps,
                                       config.rollout.pipeline)


def build_pool(config: RunConfig) -> EnvPool:
    """The env worker pool for the configured env and transport (workers start or connect here).
    An env whose simulator (its registered ``requires``) this Python lacks is refused in one line
    only when its workers would run on this Python; elsewhere their own venv must have it."""
    manager = get_plugin_manager()
    entry = manager.envs.get(config.env.type)
    transport = config.rollout.transport.options
    if transport is not None and transport.builds_envs_here() and entry.missing():
        from pushcut.errors import ConfigError

        raise ConfigError(f"env {config.env.type!r} needs {entry.missing()!r}, which this Python cannot import: install "
                          f"it here, or run the env in a venv that has it with rollout.transport.python=PATH/bin/python "
                          f"(or rollout.transport=socket to a `pushcut env serve` there)")
    return pool_from_config(config, manager)
