"""The ``ray`` transport: each env worker is a Ray actor, placed anywhere in a Ray cluster.

An actor receives the :class:`~pushcut.envpool.spec.EnvSpec` as plain data (its
wire form) and builds the envs through its *own* plugin registry, exactly like a
``process`` worker — never a pickled env. Requests and replies cross as the same
msgpack messages as on a socket (:mod:`pushcut.envpool.wire`), so an actor running on
another venv's interpreter (``rollout.transport.python``, Ray's ``py_executable``) with
other numpy / torch pins still understands them. Resources per actor
(``rollout.transport.num_cpus``, ``num_gpus``, ``resources``) and an optional
``runtime_env`` come from the config (:class:`~pushcut.envpool.transports.RayTransportConfig`).

An actor that dies (its process killed, its node lost) fails its request with
Ray's actor error; the pool counts the slots' episodes as lost and
:meth:`RayTransport.recover` starts a fresh actor. Every wait is bounded: an actor
that cannot be placed or cannot start its runtime env within
``rollout.startup_timeout_s`` is one :class:`~pushcut.errors.EnvError` line.

The Ray cluster is the one this process is connected to; when it is connected to
none, :func:`connect` joins ``$RAY_ADDRESS`` or starts a local one.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from collections import deque
from typing import Any

from pushcut.envpool.spec import EnvSpec, build_envs
from pushcut.envpool.transport import Channel, Reply, Transport, check_welcome, decode_item
from pushcut.envpool.host import EnvHost, encode_reply
from pushcut.errors import ConfigError, EnvError
from pushcut.envpool.wire import PROTOCOL_VERSION, ChannelClosed, ChannelTimeout, ProtocolError, decode, encode

log = logging.getLogger("pushcut")

INSTALL_HINT = 'pip install "pushcut[ray]"'


def import_ray(what: str) -> Any:
    """The ``ray`` module, or one ConfigError line naming what needs it and the install command."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"{what} needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(what: str = "the ray backend", num_cpus: float = 0.0) -> Any:
    """``ray``, connected: the cluster this process already joined, ``$RAY_ADDRESS``'s, or a new local one.

    A local cluster started here offers ``max(cores, num_cpus)`` logical CPUs: on one machine the
    actors share the cores as process workers do, so a run that reserves more CPUs than there are
    cores still starts (Ray's CPUs are scheduling tokens, not pinned cores)."""
    ray = import_ray(what)
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        local = {} if address else {"num_cpus": max(os.cpu_count() or 1, math.ceil(num_cpus))}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
    return ray


def check_free(ray: Any, cpus: float, gpus: float, what: str, wait_s: float = 30.0) -> None:
    """One ConfigError line, before anything is placed, when the whole cluster holds fewer CPUs /
    GPUs than ``what`` reserves (Ray would otherwise queue the actors for ever).

    When the cluster is big enough but busy (a run that just ended releases its actors
    asynchronously; another job may hold them), wait up to ``wait_s`` for the room, then go on
    with one warning: Ray places the actors once the resources are free."""
    total = ray.cluster_resources()
    needs = [(kind, need) for kind, need in (("CPU", cpus), ("GPU", gpus)) if need > 0]
    for kind, need in needs:
        have = float(total.get(kind, 0.0))
        if need > have + 1e-9:
            raise ConfigError(f"{what} reserve {need:g} {kind}s, the Ray cluster has {have:g} in all: reserve less "
                              f"(rollout.transport.num_cpus / num_gpus, train.learner_num_cpus), run fewer "
                              "workers or ranks, or add nodes (ray start --address=...)")
    deadline = time.monotonic() + wait_s
    while True:
        free = ray.available_resources()
        short = [(kind, need, float(free.get(kind, 0.0))) for kind, need in needs
                 if need > float(free.get(kind, 0.0)) + 1e-9]
        if not short:
            return
        if time.monotonic() >= deadline:
            kind, need, have = short[0]
            log.warning("%s reserve %g %ss, %g are free now: Ray places them as others release theirs "
                        "(`ray status` shows who holds them)", what, need, kind, have)
            return
        time.sleep(0.5)


class EnvActorHost:
    """What runs inside an env actor: an :class:`EnvHost` answering wire-encoded requests.

    Plain class; :class:`RayTransport` wraps it with ``ray.remote`` at start, so this module
    imports without Ray and the actor's process needs only pushcut (and Ray) installed."""

    def __init__(self) -> None:
        self.host: EnvHost | None = None

    def start(self, spec: dict[str, Any], num_envs: int, path: list[str]) -> bytes:
        """Build the envs; the ``welcome`` (or ``refuse``) message, encoded."""
        sys.path[:0] = [p for p in path if p not in sys.path and os.path.isdir(p)]
        env_spec = EnvSpec.from_wire(spec)
        try:
            self.host = EnvHost(build_envs(env_spec, num_envs), env_spec.name, env_spec.options)
        except EnvError as exc:
            return encode({"t": "refuse", "reason": str(exc)})
        return encode({"t": "welcome", "v": PROTOCOL_VERSION, **self.host.describe()})

    def run(self, request: bytes) -> bytes:
        """One ``reset`` / ``step`` / ``render`` request → its ``result`` message (both encoded)."""
        msg = decode(request)
        if self.host is None:
            return encode({"t": "error", "id": msg.get("id", 0), "reason": "the actor holds no envs"})
        cmd, req_id = msg["t"], int(msg.get("id", 0))
        return encode_reply(req_id, cmd, self.host.run(cmd, msg.get("items", [])))

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        if self.host is not None:
            self.host.close()
            self.host = None


def actor_options(num_cpus: float = 1.0, num_gpus: float = 0.0, resources: dict[str, float] | None = None,
                  python: str = "", runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """``ActorClass.options(...)`` for one env actor. The pool restarts actors itself, so Ray does not."""
    env = dict(runtime_env or {})
    if python:
        env["py_executable"] = python
    env.setdefault("env_vars", {})
    # one env actor = one core's worth of simulator: no BLAS/OpenMP pools inside it (as the process transport)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env["env_vars"].setdefault(var, "1")
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0, "runtime_env": env}
    if resources:
        options["resources"] = dict(resources)
    return options


class RayChannel(Channel):
    """One env actor. Replies arrive as Ray futures; a socketpair turns readable on each, so the
    pool's ``select`` over all workers also wakes for actors."""

    def __init__(self, ray: Any, actor: Any, index: int, info_msg: dict[str, Any], spec: EnvSpec,
                 num_envs: int) -> None:
        self.ray, self.actor = ray, actor
        self.label = f"ray env actor {index}"
        self.info = check_welcome(info_msg, spec, num_envs, self.label)
        self._pending: deque[tuple[int, str, Any]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._dead = ""
        self._closed = False

    def _wake(self, _future: Any) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # closed, or the buffer is full of wake-ups already
            pass

    def request(self, req_id: int, cmd: str, items: list[list[Any]]) -> None:
        if self._dead or self._closed:
            raise ChannelClosed(f"{self.label} is gone ({self._dead or 'closed'})")
        ref = self.actor.run.remote(encode({"t": cmd, "id": req_id, "items": items}))
        future = ref.future()
        self._pending.append((req_id, cmd, future))
        future.add_done_callback(self._wake)

    def ready(self) -> bool:
        return bool(self._pending) and self._pending[0][2].done()

    def fileno(self) -> int:
        return self._wake_r.fileno()

    def _drain(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def receive(self, timeout: float) -> Reply | None:
        self._drain()
        if not self.ready():  # a stale wake-up: nothing to hand over yet (the pool waits again)
            return None
        req_id, cmd, future = self._pending.popleft()
        if self._pending and self._pending[0][2].done():
            self._wake(None)
        try:
            payload = future.result(timeout=max(timeout, 0.0))
        except TimeoutError:  # pragma: no cover - done() said it was
            raise ChannelTimeout(f"{self.label} did not answer") from None
        except Exception as exc:
            self._dead = _death(exc)
            raise ChannelClosed(f"{self.label} died: {self._dead}") from None
        msg = decode(payload)
        if msg["t"] == "error":
            raise ProtocolError(f"{self.label} refused a request: {msg.get('reason', '?')}")
        if msg["t"] != "result":
            raise ProtocolError(f"{self.label} sent {msg['t']!r} where a result was expected")
        try:
            return Reply(req_id, [(int(local), decode_item(cmd, value)) for local, value in msg["items"]])
        except (TypeError, ValueError, KeyError) as exc:
            raise ProtocolError(f"{self.label} sent a malformed result: {exc}") from None

    def dead(self) -> str:
        return self._dead

    def kill(self) -> None:
        try:
            self.ray.kill(self.actor, no_restart=True)
        except Exception:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._dead:
            try:  # let the envs shut down cleanly (a simulator may hold a GL context or a robot)
                self.ray.get(self.actor.close.remote(), timeout=10)
            except Exception:
                pass
        self.kill()
        self._wake_r.close()
        self._wake_w.close()


def _death(exc: BaseException) -> str:
    """One line for why an actor call failed (Ray's own message is many lines)."""
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300]


class RayTransport(Transport):
    """Env workers as Ray actors with the given resources / runtime env; a dead actor is replaced."""

    name = "ray"
    recovery = "started a new ray actor in its place"
    down_fix = "check the Ray cluster (ray status) and the actor's log under /tmp/ray/session_latest/logs"

    def __init__(self, num_cpus: float = 1.0, num_gpus: float = 0.0, resources: dict[str, float] | None = None,
                 python: str = "", runtime_env: dict[str, Any] | None = None,
                 startup_timeout_s: float = 300.0) -> None:
        self.ray = import_ray("rollout.transport=ray")
        self.options = actor_options(num_cpus, num_gpus, resources, python, runtime_env)
        self.startup_timeout_s = startup_timeout_s
        self.actor_class: Any = None

    def _connect(self, num_workers: int) -> None:
        if self.actor_class is None:
            connect("rollout.transport=ray", num_workers * self.options["num_cpus"])
            self.actor_class = self.ray.remote(EnvActorHost)

    def _launch(self, spec: EnvSpec, num_envs: int) -> tuple[Any, Any]:
        actor = self.actor_class.options(**self.options).remote()
        path = [p for p in sys.path if p and os.path.isdir(p)]
        return actor, actor.start.remote(spec.to_wire(), num_envs, path)

    def _welcome(self, index: int, actor: Any, started: Any, spec: EnvSpec, num_envs: int) -> RayChannel:
        ray = self.ray
        try:
            payload = ray.get(started, timeout=self.startup_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor, no_restart=True)
            raise EnvError(self._not_started(index)) from None
        except Exception as exc:
            ray.kill(actor, no_restart=True)
            raise EnvError(f"ray env actor {index} died while creating its envs ({_death(exc)}); "
                           f"{self._fix()}") from None
        try:
            return RayChannel(ray, actor, index, decode(payload), spec, num_envs)
        except BaseException as exc:
            ray.kill(actor, no_restart=True)
            if isinstance(exc, EnvError):
                raise EnvError(str(exc).removeprefix(f"ray env actor {index} refused the connection: ")) from None
            raise

    def _not_started(self, index: int) -> str:
        opts = self.options
        want = f"num_cpus={opts['num_cpus']}, num_gpus={opts['num_gpus']}"
        if opts.get("resources"):
            want += f", resources={opts['resources']}"
        return (f"ray env actor {index} did not start within {self.startup_timeout_s:.0f} s "
                f"(rollout.startup_timeout_s): the cluster may lack the resources it asks for ({want}; "
                f"`ray status` shows what is free) or its runtime env may not start; {self._fix()}")

    def _fix(self) -> str:
        python = self.options["runtime_env"].get("py_executable")
        where = f"check that {python!r} runs and has pushcut and ray installed, and " if python else ""
        return f"{where}see the actor's log under /tmp/ray/session_latest/logs"

    def start_all(self, spec: EnvSpec, num_workers: int, num_envs: int) -> list[Channel]:
        """Place every actor first, then wait for all of them: they build their envs in parallel."""
        self._connect(num_workers)
        check_free(self.ray, num_workers * self.options["num_cpus"], num_workers * self.options["num_gpus"],
                   f"{num_workers} env actor(s) (rollout.num_workers) × num_cpus={self.options['num_cpus']:g}, "
                   f"num_gpus={self.options['num_gpus']:g}")
        launched = [self._launch(spec, num_envs) for _ in range(num_workers)]
        channels: list[Channel] = []
        try:
            for i, (actor, started) in enumerate(launched):
                channels.append(self._welcome(i, actor, started, spec, num_envs))
        except BaseException:
            for ch in channels:
                ch.close()
            for actor, _ in launched[len(channels):]:
                self.ray.kill(actor, no_restart=True)
            raise
        return channels

    def start(self, index: int, spec: EnvSpec, num_envs: int) -> Channel:
        self._connect(1)
        actor, started = self._launch(spec, num_envs)
        return self._welcome(index, actor, started, spec, num_envs)

    def recover(self, index: int, channel: Channel, spec: EnvSpec, num_envs: int) -> Channel:
        if isinstance(channel, RayChannel):
            channel._dead = channel._dead or "replaced"
        channel.close()
        return self.start(index, spec, num_envs)
