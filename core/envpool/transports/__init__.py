"""The built-in transports as a plugin: one config class per transport (what ``rollout.transport:
{type: NAME, ...}`` may hold) and their registration through ``pushcut_register_transports``, the
hook a third-party transport implements too. Listed in pushcut's own entry points, like the
built-in envs and policies; ``pushcut plugins`` shows them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from pushcut.config import TransportConfig
from pushcut.envpool.transport import Transport
from pushcut.errors import ConfigError
from pushcut.hookspecs import hookimpl

ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):\d{1,5}")
"""``host:port`` (``[v6addr]:port`` for IPv6)."""


@dataclass
class InlineTransportConfig(TransportConfig):
    """``inline``: the envs live in the trainer's own process (debugging, tiny tests); no options."""

    def builds_envs_here(self) -> bool:
        return True


@dataclass
class ProcessTransportConfig(TransportConfig):
    """``process``: persistent worker processes this trainer spawns (the default)."""

    python: str = field(default="", metadata={"path": "link"})
    """Interpreter of the workers, e.g. another venv's bin/python for a simulator with its own pins; empty = this one."""

    def builds_envs_here(self) -> bool:
        return not self.python


@dataclass
class SocketTransportConfig(TransportConfig):
    """``socket``: running ``pushcut env serve`` / ``pushcut robot serve`` processes, one worker per address."""

    addresses: tuple[str, ...] = ()
    """host:port of each env server (see docs/remote-envs.md); num_workers becomes their count."""
    connect_timeout_s: float = 30.0
    """Seconds to connect to an env server and finish its hello."""
    connect_attempts: int = 3
    """Connection attempts per env server, at start and after each failure, before it counts as down."""
    token_file: str = field(default="", metadata={"path": True})
    """File holding the env servers' token; empty = $PUSHCUT_ENV_TOKEN (needed for servers off loopback)."""
    tls_ca: str = field(default="", metadata={"path": True})
    """PEM certificate (or CA) to verify env servers over TLS; empty = plain TCP."""
    max_frame_mb: float = 64.0
    """Largest message accepted from an env server, in MiB (a bigger frame is refused)."""

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ConfigError("rollout.transport=socket needs rollout.transport.addresses=[host:port, ...] "
                              "(the pushcut env serve processes to connect to)")
        bad = [a for a in self.addresses if not ADDRESS.fullmatch(a.strip())]
        if bad:
            raise ConfigError(f"rollout.transport.addresses: {bad[0]!r} must look like host:port, e.g. "
                              "127.0.0.1:7171")
        for name in ("connect_timeout_s", "max_frame_mb"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"rollout.transport.{name} must be > 0, got {getattr(self, name)}")
        if self.connect_attempts < 1:
            raise ConfigError(f"rollout.transport.connect_attempts must be >= 1, got {self.connect_attempts}")

    def num_workers(self, requested: int) -> int:
        return len(self.addresses)


@dataclass
class RayTransportConfig(TransportConfig):
    """``ray``: each env worker is a Ray actor anywhere in the cluster (docs/scaling.md)."""

    num_cpus: float = 1.0
    """CPUs each env actor reserves."""
    num_gpus: float = 0.0
    """GPUs each env actor reserves (a simulator that renders on a GPU)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each env actor needs, e.g. {sim_node: 1} to pin actors to some nodes."""
    python: str = field(default="", metadata={"path": "link"})
    """Interpreter of each env actor (Ray's runtime_env py_executable): another venv's bin/python; empty = the cluster's."""
    runtime_env: dict[str, Any] = field(default_factory=dict)
    """Extra Ray runtime_env of each env actor (env_vars, working_dir, ...)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.num_cpus) and self.num_cpus >= 0 and math.isfinite(self.num_gpus)
                and self.num_gpus >= 0):
            raise ConfigError(f"rollout.transport.num_cpus and rollout.transport.num_gpus must be >= 0, got "
                              f"{self.num_cpus} and {self.num_gpus}")


def inline_transport(config: InlineTransportConfig, rollout: Any) -> Transport:
    from pushcut.envpool.transports.inline import InlineTransport

    return InlineTransport()


def process_transport(config: ProcessTransportConfig, rollout: Any) -> Transport:
    from pushcut.envpool.transports.process import ProcessTransport

    return ProcessTransport(config.python, rollout.startup_timeout_s)


def socket_transport(config: SocketTransportConfig, rollout: Any) -> Transport:
    from pushcut.envpool.transports.socket import SocketTransport
    from pushcut.envpool.wire import load_token

    return SocketTransport(config.addresses, load_token(config.token_file), config.tls_ca, config.connect_timeout_s,
                           config.connect_attempts, config.max_frame_mb)


def ray_transport(config: RayTransportConfig, rollout: Any) -> Transport:
    from pushcut.envpool.transports.ray import RayTransport  # Ray itself is imported when the transport is built

    return RayTransport(config.num_cpus, config.num_gpus, dict(config.resources), config.python,
                        dict(config.runtime_env), rollout.startup_timeout_s)


@hookimpl
def pushcut_register_transports(registry) -> None:
    registry.add("inline", InlineTransportConfig, inline_transport)
    registry.add("process", ProcessTransportConfig, process_transport)
    registry.add("socket", SocketTransportConfig, socket_transport)
    registry.add("ray", RayTransportConfig, ray_transport)
