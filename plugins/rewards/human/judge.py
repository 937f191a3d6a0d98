"""``human``: an operator's success / failure verdict, given on a local web page.

The page (stdlib ``http.server``, on the trainer's machine, loopback only)
shows every episode of a round with its last frames and two buttons, or keys:
``s`` / ``y`` success, ``f`` / ``n`` failure for the highlighted episode, arrows
to move. :meth:`HumanJudge.judge_all` publishes a round, waits until every
episode has a verdict or ``timeout_s`` passed, and returns ``None`` for the
episodes nobody judged (the collector drops those, never scoring them as
failures). A robot on another machine needs nothing extra: its frames reach the
trainer with the episode (``needs_frames``).
"""

from __future__ import annotations

import io
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

import numpy as np

from pushcut.contracts import EpisodeOutcome, SuccessDetector
from pushcut.errors import ConfigError, EnvError
from pushcut.webguard import GuardedHandler, open_page, page_url

log = logging.getLogger("pushcut.human")

_FRAME = re.compile(r"^/frames/(\d+)/(\d+)/(\d+)\.png$")


@dataclass
class HumanJudgeConfig:
    """Where the verdict page listens and how long a round waits for the operator."""

    host: str = "127.0.0.1"
    """Address of the page; loopback only (reach it from elsewhere through ``ssh -L``)."""
    port: int = 7373
    """TCP port of the page; 0 = any free port (logged when the page opens). Not 7272, the robot's operator page."""
    timeout_s: float = 600.0
    """How long a round waits for all verdicts; episodes still unjudged then are dropped (never failures)."""
    frames_shown: int = 6
    """How many of each episode's last frames the page shows."""
    show_env_success: bool = False
    """Also show the env's own success flag (a simulator's; off so it cannot bias the operator)."""

    def __post_init__(self) -> None:
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"success.host must be a loopback address (127.0.0.1), got {self.host!r}: the page has "
                              "no login; open it from another machine through ssh -L 7373:127.0.0.1:7373")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"success.port must be 0 (any free port) .. 65535, got {self.port}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"success.timeout_s must be > 0 seconds, got {self.timeout_s}")
        if self.frames_shown < 1:
            raise ConfigError(f"success.frames_shown must be >= 1, got {self.frames_shown}")


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class HumanJudge(SuccessDetector):
    """Asks a person. The page opens on the first round and stays up until :meth:`close`."""

    needs_frames = True

    def __init__(self, config: HumanJudgeConfig | None = None) -> None:
        self.config = config or HumanJudgeConfig()
        self._cond = threading.Condition()
        self._round = 0
        self._open = False
        self._episodes: list[dict[str, Any]] = []
        self._frames: dict[tuple[int, int, int], bytes] = {}
        self._verdicts: dict[int, bool] = {}
        self._deadline = 0.0
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ the contract

    def judge(self, episode: EpisodeOutcome) -> bool:
        verdict = self.judge_all([episode])[0]
        if verdict is None:
            raise EnvError(f"nobody judged the episode within {self.config.timeout_s:g} s (success.timeout_s); open "
                           f"{self.url} and click success or failure")
        return verdict

    def judge_all(self, episodes: Sequence[EpisodeOutcome]) -> list[bool | None]:
        if not episodes:
            return []
        self.start()
        frames = {}
        cards = []
        for i, ep in enumerate(episodes):
            shown = list(ep.frames)[-self.config.frames_shown:]
            for k, frame in enumerate(shown):
                frames[(self._round + 1, i, k)] = _png(frame)
            card = {"index": i, "task_id": ep.task_id, "instruction": ep.instruction, "init_state": ep.init_state,
                    "length": ep.length, "frames": len(shown)}
            if self.config.show_env_success:
                card["env_success"] = bool(ep.env_success)
            cards.append(card)
        with self._cond:
            self._round += 1
            self._episodes, self._frames, self._verdicts = cards, frames, {}
            self._deadline = time.monotonic() + self.config.timeout_s
            self._open = True
            self._cond.notify_all()
            log.info("human judge: %d episode(s) to judge at %s (waiting up to %g s)", len(cards), self.url,
                     self.config.timeout_s)
            while len(self._verdicts) < len(cards):
                left = self._deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._open = False
            verdicts: list[bool | None] = [self._verdicts.get(i) for i in range(len(cards))]
        missing = sum(v is None for v in verdicts)
        if missing:
            log.warning("human judge: %d of %d episode(s) unjudged after %g s; they are dropped", missing,
                        len(cards), self.config.timeout_s)
        return verdicts

    # ------------------------------------------------------------------ the page

    @property
    def url(self) -> str:
        if self._server is None:
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            return f"http://{host}:{self.config.port}/"
        return page_url(self._server)

    def start(self) -> str:
        """Open the page (idempotent); returns its URL."""
        if self._server is None:
            try:
                self._server, _ = open_page(self.config.host, self.config.port, _handler(self), "pushcut-human-judge")
            except OSError as exc:
                raise EnvError(f"cannot open the human judge page on {self.config.host}:{self.config.port}: "
                               f"{exc.strerror or exc}; set success.port to a free port (0 = any)") from None
            log.info("human judge: verdict page at %s", self.url)
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __getstate__(self) -> dict[str, Any]:  # the config is what a copy needs; never a live server
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])

    def _state(self) -> dict[str, Any]:
        with self._cond:
            return {"round": self._round, "open": self._open,
                    "seconds_left": max(0.0, self._deadline - time.monotonic()) if self._open else 0.0,
                    "episodes": [{**c, "verdict": self._verdicts.get(c["index"]),
                                  "frame_urls": [f"/frames/{self._round}/{c['index']}/{k}.png"
                                                 for k in range(c["frames"])]} for c in self._episodes]}

    def _verdict(self, data: Any) -> tuple[int, dict[str, Any]]:
        if not (isinstance(data, dict) and isinstance(data.get("round"), int) and isinstance(data.get("index"), int)
                and isinstance(data.get("success"), bool)):
            return 400, {"error": "send {round: int, index: int, success: bool}"}
        with self._cond:
            if not self._open or data["round"] != self._round:
                return 409, {"error": f"round {data['round']} is closed (the current round is {self._round})"}
            if not 0 <= data["index"] < len(self._episodes):
                return 400, {"error": f"no episode {data['index']} in round {self._round}"}
            self._verdicts[data["index"]] = data["success"]
            self._cond.notify_all()
        return 200, {"ok": True}


def _handler(judge: HumanJudge) -> type[GuardedHandler]:
    from pushcut.plugins.rewards.human.page import PAGE

    class Handler(GuardedHandler):
        protected_posts = frozenset({"/api/verdict"})

        def get(self) -> None:
            if self.path == "/":
                self.send_body(200, self.guard.embed(PAGE).encode(), "text/html; charset=utf-8")
            elif self.path == "/api/round":
                self.send_json(200, judge._state())
            elif (m := _FRAME.match(self.path)) is not None:
                key = tuple(int(g) for g in m.groups())
                with judge._cond:
                    body = judge._frames.get(key)
                if body is None:
                    self.send_json(404, {"error": "no such frame"})
                else:
                    self.send_body(200, body, "image/png")
            else:
                self.send_json(404, {"error": "unknown path"})

        def post(self, data: Any) -> None:
            code, reply = judge._verdict(data)
            self.send_json(code, reply)

    return Handler
