"""Start ``pushcut robot serve`` as a child process and wait until it listens (benchmarks, tests,
scripts that bring a sim robot up next to a trainer)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pushcut.errors import EnvError

_LISTENING = re.compile(r"serving robot .* on (\S+):(\d+)(?: with TLS)?(?:; operator page (\S+))?")


class RobotServerProcess:
    """A running ``pushcut robot serve``; ``address`` is ``host:port``, ``operator_url`` its page (or empty)."""

    def __init__(self, config: str | Path, args: Sequence[str] = (), env: dict[str, str] | None = None,
                 python: str = sys.executable, startup_timeout_s: float = 120.0) -> None:
        cmd = [python, "-m", "pushcut.cli", "robot", "serve", str(config), *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise EnvError(f"pushcut robot serve did not start within {startup_timeout_s:g} s:\n" + self.output)
            if line is None:
                raise EnvError(f"pushcut robot serve exited with {self.proc.wait()}:\n{self.output}")
            m = _LISTENING.search(line)
            if m:
                self.address = f"{m.group(1)}:{m.group(2)}"
                self.port = int(m.group(2))
                self.operator_url = m.group(3) or ""
                return

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def type(self, text: str) -> None:
        """Type ``text`` on the server's console (``e`` e-stop, ``r`` reset, empty = confirm)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_for(self, pattern: str, timeout_s: float = 10.0) -> str:
        """The first output line matching ``pattern`` (a regex), waiting up to ``timeout_s``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if rx.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s:\n{self.output}")

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> RobotServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
