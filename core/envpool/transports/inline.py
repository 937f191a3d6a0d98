"""The ``inline`` transport: the envs live in the calling process (debugging, tiny tests).

Requests run synchronously when they are sent; nothing is encoded. The only
transport that runs :meth:`~pushcut.envpool.EnvPool.call` (an arbitrary function
on an env): no code ever crosses a process boundary.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pushcut.envcontract import Env, can_restore_state
from pushcut.envpool.spec import EnvSpec, build_envs
from pushcut.envpool.transport import Channel, Reply, Transport, WorkerInfo
from pushcut.envpool.host import EnvHost
from pushcut.errors import EnvError


class InlineChannel(Channel):
    """Envs in this process, answered at once."""

    def __init__(self, index: int, envs: list[Env]) -> None:
        self.host = EnvHost(envs)
        self.label = f"inline worker {index}"
        env = envs[0]
        self.info = WorkerInfo("", len(envs), env.tasks(), env.action_spec, os.getpid(),
                               restores_state=all(can_restore_state(e) for e in envs))
        self._reply: Reply | None = None

    def request(self, req_id: int, cmd: str, items: list[list[Any]]) -> None:
        self._reply = Reply(req_id, self.host.run(cmd, items))

    def ready(self) -> bool:
        return self._reply is not None

    def fileno(self) -> int:
        return -1

    def receive(self, timeout: float) -> Reply | None:
        reply, self._reply = self._reply, None
        return reply

    def call(self, local: int, fn: Callable[[Env], Any]) -> Any:
        return fn(self.host.envs[local])

    def close(self) -> None:
        self.host.close()


class InlineTransport(Transport):
    """Builds the envs here; a failure is not restarted (the caller's process is the worker)."""

    name = "inline"

    def start(self, index: int, spec: EnvSpec, num_envs: int) -> Channel:
        if spec.local is not None:
            factory, config = spec.local
            try:
                envs = [factory(config) for _ in range(num_envs)]
            except Exception as exc:
                raise EnvError(f"creating the env failed: {type(exc).__name__}: {exc}") from None
        else:
            envs = build_envs(spec, num_envs)
        return InlineChannel(index, envs)

    def recover(self, index: int, channel: Channel, spec: EnvSpec, num_envs: int) -> Channel:
        raise EnvError(f"{channel.label} failed and the inline transport cannot restart it")
