"""Env workers behind a pluggable transport.

:class:`EnvPool` holds ``num_workers`` persistent workers × ``envs_per_worker``
envs and steps them in parallel; an env crosses to its worker as an
:class:`EnvSpec` (registered name + plain options), never as a pickle. The
transports: ``inline`` (same process), ``process`` (a spawned worker, on this
or another interpreter) and ``socket`` (a running ``pushcut env serve``).
:func:`transport_from_config` picks one from a run config's ``rollout`` section.
"""

from __future__ import annotations

from typing import Any

from pushcut.envpool.inline import InlineTransport
from pushcut.envpool.pool import EnvPool, SlotFailure, Ticket, make_transport
from pushcut.envpool.process import ProcessTransport
from pushcut.envpool.remote import SocketTransport
from pushcut.envpool.spec import EnvSpec
from pushcut.envpool.transport import Channel, Transport, WorkerInfo

__all__ = [
    "Channel", "EnvPool", "EnvSpec", "InlineTransport", "ProcessTransport", "SlotFailure", "SocketTransport",
    "Ticket", "Transport", "WorkerInfo", "make_transport", "pool_from_config", "transport_from_config",
]


def transport_from_config(rollout: Any) -> Transport:
    """The transport a :class:`pushcut.config.RolloutConfig` names."""
    if rollout.transport == "socket":
        from pushcut.wire import load_token

        return SocketTransport(rollout.addresses, load_token(rollout.token_file), rollout.tls_ca,
                               rollout.connect_timeout_s, rollout.connect_attempts, rollout.max_frame_mb)
    if rollout.transport == "process":
        return ProcessTransport(rollout.python, rollout.startup_timeout_s)
    if rollout.transport == "ray":
        from pushcut.envpool.ray import transport_from_rollout

        return transport_from_rollout(rollout)
    return make_transport(rollout.transport)


def pool_from_config(config: Any, manager: Any = None) -> EnvPool:
    """The env pool of a :class:`pushcut.config.RunConfig` (workers start or connect here)."""
    if manager is None:
        from pushcut.pluginmanager import get_plugin_manager

        manager = get_plugin_manager()
    r = config.rollout
    spec = EnvSpec.from_registry(config.env.type, config.env.options, manager)
    return EnvPool(spec, num_workers=r.num_workers, envs_per_worker=r.envs_per_worker, timeout_s=r.step_timeout_s,
                   transport=transport_from_config(r))
