"""The transport interface: how the pool reaches the worker that holds some envs.

A :class:`Transport` starts (or connects to) worker ``index`` for an
:class:`~pushcut.envpool.spec.EnvSpec` and returns a :class:`Channel`: send a
request, wait for readiness (``fileno`` / ``ready``), receive the reply,
liveness, close. What to do when a worker fails is the transport's policy
(:meth:`Transport.recover`): a process is killed and restarted, a socket is
reconnected a bounded number of times, and a worker that cannot be brought
back is reported down. The built-in transports are in
:mod:`~pushcut.envpool.transports.inline`, :mod:`~pushcut.envpool.transports.process` and
:mod:`~pushcut.envpool.transports.socket`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pushcut.envcontract import ActionSpec, TaskSpec
from pushcut.envpool.spec import EnvSpec
from pushcut.envpool.host import Failure
from pushcut.errors import EnvError
from pushcut.envpool.wire import (
    PROTOCOL_VERSION,
    FramedSocket,
    ProtocolError,
    action_spec_from_wire,
    step_from_wire,
    tasks_from_wire,
)


@dataclass
class WorkerInfo:
    """What a worker said about itself in its ``welcome``."""

    env: str
    num_envs: int
    tasks: list[TaskSpec]
    action_spec: ActionSpec
    pid: int | None = None
    heartbeat_s: float = 0.0
    """How often the worker sends a ``beat`` while busy; 0: it sends none."""
    restores_state: bool = False
    """Its envs restore recorded simulator states (:class:`~pushcut.envcontract.RestoresState`), so a
    ``reset`` may carry one."""


@dataclass
class Reply:
    """A worker's answer to request ``req_id``: ``items`` of (local env index, result or
    :class:`~pushcut.envpool.host.Failure`)."""

    req_id: int
    items: list[tuple[int, Any]]


class Channel(abc.ABC):
    """The pool's end of one worker (``info.num_envs`` envs)."""

    label: str
    """How messages name this worker: ``worker 0``, ``env server 10.0.0.5:7000``."""
    info: WorkerInfo

    @abc.abstractmethod
    def request(self, req_id: int, cmd: str, items: list[list[Any]]) -> None:
        """Send ``cmd`` (reset / step / render) for ``items`` (``[local, *args]`` each); raises
        :class:`~pushcut.envpool.wire.ChannelClosed` when the worker is gone."""

    def ready(self) -> bool:
        """True when :meth:`receive` would not block (a reply is already buffered)."""
        return False

    @abc.abstractmethod
    def fileno(self) -> int:
        """A descriptor that turns readable when the worker sends something."""

    @abc.abstractmethod
    def receive(self, timeout: float) -> Reply | None:
        """The next reply, or None for a heartbeat; raises ChannelClosed / ChannelTimeout /
        ProtocolError."""

    def dead(self) -> str:
        """Why the worker is known dead (e.g. its exit code), or empty."""
        return ""

    def working(self) -> bool:
        """True when the worker shows another sign of life than a message: it computed since the
        last request or the last call (a process whose CPU time grew). A worker inside one long
        call that holds Python's GIL (a simulator compiling a scene) sends no heartbeat until the
        call returns; the pool does not take that silence for a frozen worker. False where the
        transport cannot tell (a remote server)."""
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Stop talking to the worker (and stop it, when this side owns it)."""


class Transport(abc.ABC):
    """Starts workers and decides what happens to one that fails."""

    name: ClassVar[str]
    recovery: ClassVar[str] = "restarted it"
    """What :meth:`recover` did, for the failure message."""
    down_fix: ClassVar[str] = "see the reasons above"
    """The fix named when every worker is down."""

    def num_workers(self, requested: int) -> int:
        """How many workers the pool gets (a socket transport: one per address)."""
        return max(1, requested)

    def start_all(self, spec: EnvSpec, num_workers: int, num_envs: int) -> list[Channel]:
        """Start workers 0 … num_workers-1 (sequentially unless a transport can do better)."""
        channels: list[Channel] = []
        try:
            for i in range(num_workers):
                channels.append(self.start(i, spec, num_envs))
        except BaseException:
            for ch in channels:
                ch.close()
            raise
        return channels

    @abc.abstractmethod
    def start(self, index: int, spec: EnvSpec, num_envs: int) -> Channel:
        """Worker ``index`` holding ``num_envs`` envs of ``spec``; an EnvError naming the fix if it cannot."""

    def recover(self, index: int, channel: Channel, spec: EnvSpec, num_envs: int) -> Channel:
        """A working replacement for a failed ``channel``; raises EnvError when there is none."""
        channel.close()
        return self.start(index, spec, num_envs)

    def close(self) -> None:
        """Release whatever the transport holds besides its channels."""


# --------------------------------------------------------------------------- framed channels


def options_mismatch(ours: Any, theirs: Any) -> list[str]:
    """``key: ours vs theirs`` for every option both sides name with different values."""
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return []
    return [f"{k}={theirs[k]!r} there, {ours[k]!r} here" for k in ours if k in theirs and theirs[k] != ours[k]]


def check_welcome(msg: dict[str, Any], spec: EnvSpec, num_envs: int, label: str,
                  check_options: bool = False) -> WorkerInfo:
    """The worker's :class:`WorkerInfo` from its answer to our hello, or one EnvError line saying
    what the two sides disagree on and how to make them agree."""
    if msg["t"] == "refuse":
        raise EnvError(f"{label} refused the connection: {msg.get('reason', '(no reason given)')}")
    if msg["t"] != "welcome":
        raise ProtocolError(f"{label} answered the hello with {msg['t']!r}, not a welcome")
    if msg.get("v") != PROTOCOL_VERSION:
        raise EnvError(f"{label} speaks protocol version {msg.get('v')!r}, this pushcut speaks {PROTOCOL_VERSION}: "
                       "install the same pushcut version on both sides")
    env = str(msg.get("env", ""))
    if not spec.factory and env != spec.name:
        raise EnvError(f"{label} serves env {env!r}, but the config asks for {spec.name!r}: serve the configured env "
                       f"or set env.type={env}")
    if check_options:
        diff = options_mismatch(spec.options, msg.get("options"))
        if diff:
            raise EnvError(f"{label} serves {env!r} with other options than the config: {'; '.join(diff)}; "
                           "serve it with the run's env section or change the config to match")
    info = WorkerInfo(env, int(msg.get("num_envs", 0)), tasks_from_wire(msg.get("tasks", [])),
                      action_spec_from_wire(msg.get("action_spec")), msg.get("pid"), float(msg.get("heartbeat_s", 0)),
                      bool(msg.get("restores_state", False)))
    if info.num_envs < num_envs:
        raise EnvError(f"{label} holds {info.num_envs} envs, the pool wants {num_envs} per worker: start it with "
                       f"--envs {num_envs} or set rollout.envs_per_worker={info.num_envs}")
    return info


class FramedChannel(Channel):
    """A channel over the wire format (process workers and env servers)."""

    def __init__(self, framed: FramedSocket, label: str) -> None:
        self.framed = framed
        self.label = label
        self._cmds: dict[int, str] = {}
        self.last_seen = time.monotonic()

    def hello(self, message: dict[str, Any], spec: EnvSpec, num_envs: int, timeout: float,
              check_options: bool = False) -> None:
        self.framed.send({"t": "hello", "v": PROTOCOL_VERSION, **message})
        self.info = check_welcome(self.framed.recv(timeout), spec, num_envs, self.label, check_options)

    def request(self, req_id: int, cmd: str, items: list[list[Any]]) -> None:
        self._cmds[req_id] = cmd
        self.last_seen = time.monotonic()  # silence counts from the request, not from the last reply
        self.framed.send({"t": cmd, "id": req_id, "items": items})

    def ready(self) -> bool:
        return self.framed.pending()

    def fileno(self) -> int:
        return self.framed.fileno()

    def receive(self, timeout: float) -> Reply | None:
        msg = self.framed.recv(timeout)
        self.last_seen = time.monotonic()
        t = msg["t"]
        if t == "beat":
            return None
        if t == "error":
            raise ProtocolError(f"{self.label} refused a request: {msg.get('reason', '?')}")
        if t != "result":
            raise ProtocolError(f"{self.label} sent {t!r} where a result was expected")
        req_id = msg.get("id")
        cmd = self._cmds.pop(req_id, None) if isinstance(req_id, int) else None
        if cmd is None:  # a late answer to a request given up on
            return Reply(-1, [])
        try:
            return Reply(req_id, [(int(local), decode_item(cmd, value)) for local, value in msg["items"]])
        except (TypeError, ValueError, KeyError) as exc:
            raise ProtocolError(f"{self.label} sent a malformed result: {exc}") from None

    def close(self) -> None:
        if not self.framed.closed:
            try:
                self.framed.send({"t": "close"})
            except EnvError:
                pass
        self.framed.close()


def decode_item(cmd: str, value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"failure"}:
        return Failure(str(value["failure"]))
    if cmd == "step":
        return step_from_wire(value)
    if cmd == "reset" and not isinstance(value, dict):
        raise ProtocolError(f"an observation must be a map of arrays, got {type(value).__name__}")
    return value


def describe_all(channels: Sequence[Channel]) -> tuple[list[TaskSpec], ActionSpec]:
    """The tasks and action spec every worker agrees on, or an EnvError naming the odd one out."""
    first = channels[0].info
    for ch in channels[1:]:
        check_same(first, ch, channels[0].label)
    return first.tasks, first.action_spec


def check_same(reference: WorkerInfo, channel: Channel, reference_label: str) -> None:
    """An EnvError unless ``channel`` offers the same env as ``reference``."""
    info = channel.info
    if info.action_spec != reference.action_spec:
        raise EnvError(f"{channel.label} has action spec {info.action_spec}, {reference_label} has "
                       f"{reference.action_spec}: every worker must serve the same env config")
    if info.tasks != reference.tasks:
        ours, theirs = {t.task_id for t in reference.tasks}, {t.task_id for t in info.tasks}
        detail = f"tasks {sorted(theirs ^ ours)} differ" if ours != theirs else "task specs differ"
        raise EnvError(f"{channel.label} and {reference_label} offer different tasks ({detail}): every worker "
                       "must serve the same env config")
