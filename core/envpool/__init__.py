"""Env workers behind a pluggable transport.

:class:`EnvPool` holds ``num_workers`` persistent workers × ``envs_per_worker``
envs and steps them in parallel; an env crosses to its worker as an
:class:`EnvSpec` (registered name + plain options), never as a pickle. The
transports: ``inline`` (same process), ``process`` (a spawned worker, on this
or another interpreter), ``socket`` (a running ``pushcut env serve``) and ``ray``
(Ray actors), each registered with its config class like a plugin's
(:mod:`pushcut.envpool.transports`). :func:`transport_from_config` builds the one a run
config's ``rollout.transport`` names, through the transport registry.
"""

from __future__ import annotations

from typing import Any

from pushcut.envpool.pool import EnvPool, SlotFailure, Ticket, make_transport
from pushcut.envpool.spec import EnvSpec
from pushcut.envpool.transport import Channel, Transport, WorkerInfo
from pushcut.envpool.transports.inline import InlineTransport
from pushcut.envpool.transports.process import ProcessTransport
from pushcut.envpool.transports.socket import SocketTransport

__all__ = [
    "Channel", "EnvPool", "EnvSpec", "InlineTransport", "ProcessTransport", "SlotFailure", "SocketTransport",
    "Ticket", "Transport", "WorkerInfo", "make_transport", "pool_from_config", "transport_from_config",
]


def transport_from_config(rollout: Any, manager: Any = None) -> Transport:
    """The transport ``rollout.transport`` (a :class:`pushcut.config.RolloutConfig`'s) names, built by
    its registered factory from its config."""
    from pushcut.configio import resolve_choice
    from pushcut.pluginmanager import get_plugin_manager

    manager = manager or get_plugin_manager()
    choice = resolve_choice(rollout.transport, "transports", "process", "rollout.transport", manager)
    return manager.transports.get(choice.type).factory(choice.options, rollout)


def pool_from_config(config: Any, manager: Any = None) -> EnvPool:
    """The env pool of a :class:`pushcut.config.RunConfig` (workers start or connect here)."""
    if manager is None:
        from pushcut.pluginmanager import get_plugin_manager

        manager = get_plugin_manager()
    r = config.rollout
    spec = EnvSpec.from_registry(config.env.type, config.env.options, manager)
    return EnvPool(spec, num_workers=r.num_workers, envs_per_worker=r.envs_per_worker, timeout_s=r.step_timeout_s,
                   transport=transport_from_config(r, manager))
