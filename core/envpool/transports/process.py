"""The ``process`` transport: one persistent worker process per worker index.

Each worker runs :func:`pushcut.envpool.host.main` (``PYTHON -c ... FD``) on one end of a
socketpair, speaking the wire format (:mod:`pushcut.envpool.wire`). ``PYTHON`` is this
interpreter by default, or another virtualenv's (``rollout.transport.python``), so a
simulator with conflicting pins runs in its own environment. A worker that
crashes or does not answer in time is killed and restarted.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from pushcut.envpool.spec import EnvSpec
from pushcut.envpool.transport import Channel, FramedChannel, Transport, check_welcome
from pushcut.errors import EnvError
from pushcut.envpool.wire import PROTOCOL_VERSION, ChannelClosed, ChannelTimeout, FramedSocket

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""One env worker = one core's worth of work: no BLAS/OpenMP thread pools inside it."""

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MIN_CPU_S = 0.1
"""CPU time a silent worker must have used since the last look to count as working, not frozen."""

WORKER_MAIN = "import sys; from pushcut.envpool.host import main; sys.exit(main())"
"""What a worker process runs (``-c``, not ``-m``: the package imports the module first)."""


class ProcessChannel(FramedChannel):
    """A worker process and the parent's end of its socketpair."""

    def __init__(self, index: int, python: str, spec: EnvSpec, num_envs: int) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
        try:
            self.process = subprocess.Popen([python, "-c", WORKER_MAIN, str(child.fileno())],
                                            pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            parent.close()
            raise EnvError(f"cannot start an env worker with {python!r}: {exc}; set rollout.transport.python to a Python "
                           "interpreter that has pushcut installed") from None
        finally:
            child.close()
        super().__init__(FramedSocket(parent, peer=f"worker {index}"), f"worker {index}")
        self.spec, self.num_envs = spec, num_envs
        # not .resolve(): every venv's bin/python links to the same base interpreter, and another venv's
        # worker must not get this venv's import path (it would shadow that venv's own packages)
        same = Path(python).absolute() == Path(sys.executable).absolute()
        # the same interpreter gets our import path (as multiprocessing's spawn does), so envs and
        # plugins registered from test or notebook modules resolve there too
        self._hello = {"spec": spec.to_wire(), "num_envs": num_envs,
                       "path": [p for p in sys.path if p and os.path.isdir(p)] if same else []}
        try:
            self.framed.send({"t": "hello", "v": PROTOCOL_VERSION, **self._hello})
        except EnvError:
            self.kill()
            raise EnvError(f"an env worker died at start (exit code {self.process.returncode})") from None

    def await_welcome(self, timeout: float) -> None:
        """Wait for the worker to build its envs; an EnvError if it dies, refuses or takes too long."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise EnvError(f"an env worker did not start within {timeout:.0f} s (rollout.startup_timeout_s)")
            readable, _, _ = select.select([self.framed.fileno()], [], [], min(left, 0.5))
            if readable:
                break
            if self.process.poll() is not None:
                self.kill()
                raise EnvError(f"an env worker died while creating its envs (exit code {self.process.returncode})")
        try:
            msg = self.framed.recv(max(1.0, deadline - time.monotonic()))
            self.info = check_welcome(msg, self.spec, self.num_envs, self.label)
        except ChannelTimeout:
            self.kill()
            raise EnvError(f"an env worker did not start within {timeout:.0f} s") from None
        except ChannelClosed:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.kill()
            raise EnvError(f"an env worker died while creating its envs (exit code {self.process.returncode})") from None
        except EnvError as exc:
            self.kill()
            raise EnvError(str(exc).removeprefix(f"{self.label} refused the connection: ")) from None

    def dead(self) -> str:
        code = self.process.poll()
        return "" if code is None else f"exit code {code}"

    def request(self, req_id: int, cmd: str, items: list[list]) -> None:
        self._cpu = self.cpu_time()
        super().request(req_id, cmd, items)

    def receive(self, timeout: float):
        reply = super().receive(timeout)
        self._cpu = self.cpu_time()  # working() asks about the time since the last sign of life
        return reply

    def cpu_time(self) -> float | None:
        """CPU seconds the worker process has used so far (Linux ``/proc``), None where unknown."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            return None

    def working(self) -> bool:
        now, before = self.cpu_time(), getattr(self, "_cpu", None)
        self._cpu = now
        return now is not None and before is not None and now - before >= MIN_CPU_S

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            pass
        self.framed.close()

    def close(self) -> None:
        super().close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class ProcessTransport(Transport):
    """Spawned worker processes on ``python`` (default: this interpreter); failures are restarted."""

    name = "process"
    recovery = "restarted it"

    def __init__(self, python: str = "", startup_timeout_s: float = 300.0) -> None:
        self.python = python or sys.executable
        self.startup_timeout_s = startup_timeout_s

    def start_all(self, spec: EnvSpec, num_workers: int, num_envs: int) -> list[Channel]:
        """Launch every worker, then wait for all of them: they build their envs in parallel."""
        channels: list[ProcessChannel] = []
        try:
            for i in range(num_workers):
                channels.append(ProcessChannel(i, self.python, spec, num_envs))
            for ch in channels:
                ch.await_welcome(self.startup_timeout_s)
        except BaseException:
            for ch in channels:
                ch.kill()
            raise
        return list(channels)

    def start(self, index: int, spec: EnvSpec, num_envs: int) -> Channel:
        channel = ProcessChannel(index, self.python, spec, num_envs)
        channel.await_welcome(self.startup_timeout_s)
        return channel

    def recover(self, index: int, channel: Channel, spec: EnvSpec, num_envs: int) -> Channel:
        if isinstance(channel, ProcessChannel):
            channel.kill()
        return self.start(index, spec, num_envs)
