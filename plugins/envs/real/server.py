"""``pushcut robot serve ROBOT_CONFIG``: one robot, behind its safety layer, on the env wire protocol.

It is ``pushcut env serve`` (same wire format, hello, token, TLS, heartbeats)
with a :class:`~pushcut.plugins.envs.real.env.RobotEnv` as its single env, plus
what only a robot needs: a second trainer is refused at once instead of queued;
when a trainer's session ends the robot holds; a local e-stop (``SIGUSR1``, or
``e`` + Enter on the console) and an e-stop endpoint (``POST /estop`` on the
operator page) latch until a person resets them (``r`` + Enter, or ``POST
/reset`` from the operator page); ``Enter`` / ``c`` or ``POST /confirm``
confirms the next episode when ``env.confirm_reset`` is on.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any, TextIO

from pushcut.errors import ConfigError, EnvError
from pushcut.plugins.envs.real.config import RealEnvConfig
from pushcut.plugins.envs.real.env import RobotEnv
from pushcut.serving import EnvHost, EnvServer, ServeOptions, is_loopback, load_token
from pushcut.webguard import GuardedHandler, open_page, page_url

ENV_NAME = "real"
"""The env name a trainer's hello must carry (``env.type=real``)."""


def load_robot_config(config_path: str, overrides: list[str], manager: Any = None) -> RealEnvConfig:
    """The ``env:`` section (``type: real``) of ``config_path``, ``env.key=value`` overrides after it, validated
    (its driver resolved through ``manager``'s robot drivers; default: the process-wide manager's)."""
    from pushcut.configio import load_section

    if any(not o.startswith("env.") for o in overrides):
        raise ConfigError(f"`pushcut robot serve` takes env.key=value overrides only, got "
                          f"{[o for o in overrides if not o.startswith('env.')]}")
    return load_section(config_path, "env", overrides, type_=ENV_NAME, config_class=RealEnvConfig,
                        hint="driver: {type: ...}, safety, ...; see configs/real_sim.yaml and docs/real-robot.md",
                        manager=manager)


class RobotServer(EnvServer):
    """An :class:`EnvServer` holding one :class:`RobotEnv`, plus the operator's controls."""

    def __init__(self, robot: RobotEnv, options: ServeOptions, log: Callable[[str], None] | None = None) -> None:
        from pushcut.configio import to_dict

        options.busy_wait_s = 0.0  # a robot in use refuses a second trainer at once
        options.idle_timeout_s = robot.config.session_idle_timeout_s
        log = log or (lambda line: print(f"pushcut robot serve: {line}", file=sys.stderr, flush=True))
        super().__init__(EnvHost([robot], ENV_NAME, {"robot": to_dict(robot.config)}), options, log)
        self.robot = robot
        self.operator: ThreadingHTTPServer | None = None
        self.operator_url = ""
        """``http://host:port/`` of the operator page; empty when it is off."""
        cfg = robot.config
        if cfg.operator_port >= 0:
            try:
                self.operator, _ = open_page(cfg.operator_host, cfg.operator_port, _operator_handler(self),
                                             "pushcut-operator")
            except OSError as exc:
                self.shutdown()
                raise EnvError(f"cannot open the operator page on {cfg.operator_host}:{cfg.operator_port}: "
                               f"{exc.strerror or exc}; pick another env.operator_port (0 = any free one)") from None
            self.operator_url = page_url(self.operator)

    def session_started(self, peer: str) -> None:
        self.log(f"trainer {peer} holds the robot")

    def session_ended(self, peer: str, why: str) -> None:
        self.robot.trainer_gone(why)

    def shutdown(self) -> None:
        super().shutdown()
        if self.operator is not None:
            self.operator.shutdown()
            self.operator.server_close()

    # ------------------------------------------------------------------ the operator's controls

    def estop(self, source: str) -> None:
        self.robot.estop.trigger(f"e-stop from {source}")
        self.log(f"E-STOP from {source}: robot stopped; commands refused until a person resets it")

    def reset_estop(self, source: str) -> bool:
        was = self.robot.estop.reset()
        if was:
            self.log(f"e-stop reset by {source}")
        return was

    def console(self, stream: TextIO) -> None:
        """Read operator commands from ``stream`` (the terminal) until it closes."""
        for line in stream:
            try:
                self._console_word(line.strip().lower())
            except Exception as exc:  # the console must outlive any failure: the next e needs it
                self.log(f"console: {type(exc).__name__}: {exc}")

    def _console_word(self, word: str) -> None:
        if word in ("e", "s", "stop", "estop"):
            self.estop("the console")
        elif word in ("r", "reset"):
            if not self.reset_estop("the console"):
                self.log("no e-stop to reset")
        elif word in ("", "c", "confirm"):
            if self.robot.confirm():
                self.log("operator confirmed the next episode")
        elif word in ("?", "h", "help"):
            self.log("commands: e = e-stop, r = reset the e-stop, Enter/c = confirm the next episode")


def _operator_handler(server: RobotServer) -> type[GuardedHandler]:
    at_the_robot = is_loopback(server.robot.config.operator_host)
    """Bound elsewhere, the page offers status and the e-stop only: whoever holds the network token is
    the trainer's side, and the trainer never releases an e-stop."""

    class Handler(GuardedHandler):
        protected_posts = frozenset({"/reset", "/confirm"})
        open_posts = frozenset({"/estop"})


        def get(self) -> None:
            if self.path == "/status":
                self.send_json(200, server.robot.status())
            elif self.path == "/":
                self.send_body(200, self.guard.embed(OPERATOR_PAGE).encode(), "text/html; charset=utf-8")
            else:
                self.send_json(404, {"error": "unknown path"})

        def post(self, data: Any) -> None:
            peer = f"the operator page ({self.client_address[0]})"
            if self.path == "/estop":  # anyone who can reach the page under its own name may stop the robot
                server.estop(peer)
                self.send_json(200, server.robot.status())
                return
            if not at_the_robot:
                self.send_json(403, {"error": "reset and confirm only at the robot: the console, or this page on "
                                              "loopback (ssh -L to reach it); the trainer's token cannot release an e-stop"})
                return
            if self.path == "/reset":
                server.reset_estop(peer)
            else:
                server.robot.confirm()
            self.send_json(200, server.robot.status())

    return Handler


OPERATOR_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>pushcut robot</title>
<meta name="pushcut-page" content="__PUSHCUT_PAGE_SECRET__">
<style>body{font-family:sans-serif;margin:2em}button{font-size:1.4em;margin:.3em;padding:.4em 1em}
#estop{background:#c00;color:#fff;font-size:2em}pre{background:#eee;padding:1em}</style></head>
<body><h1>pushcut robot</h1>
<button id="estop" onclick="post('/estop')">E-STOP (space)</button>
<button id="reset" onclick="post('/reset')">Reset e-stop</button>
<button id="confirm" onclick="post('/confirm')">Confirm next episode (Enter)</button>
<pre id="status">...</pre>
<script>
const secret=document.querySelector('meta[name=pushcut-page]').content;
async function post(p){await fetch(p,{method:'POST',headers:{'Content-Type':'application/json',
 'X-Pushcut-Page':secret},body:'{}'});refresh();}
async function refresh(){const r=await fetch('/status');document.getElementById('status').textContent=
 JSON.stringify(await r.json(),null,1);}
document.addEventListener('keydown',e=>{if(e.key===' '){e.preventDefault();post('/estop');}
 else if(e.key==='Enter'){post('/confirm');}});
setInterval(refresh,500);refresh();
</script></body></html>
"""


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
"""Acted on by :class:`_SignalWatcher`: SIGUSR1 = local e-stop, SIGTERM = shut down (the robot holds)."""


class _SignalWatcher:
    """Acts on :data:`SIGNALS` on a dedicated thread, whichever thread the kernel delivers them to.

    Python runs a signal's handler only on the main thread, which sits in a blocking socket read
    during a session; and libraries (torch's native threads, for one) start threads pushcut cannot
    make block a signal. So the C-level handler's wakeup fd is used instead: it is written from
    whatever thread receives the signal, at once, and this watcher wakes on it. The Python-level
    handlers do nothing (the watcher already acted). SIGTERM is turned into a real SIGINT to the
    main thread, which interrupts its read and shuts the server down as Ctrl-C does."""

    def __init__(self, server: RobotServer) -> None:
        self.server = server
        self.main = threading.main_thread().ident
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        # the fd first (the start-up handlers are C-level handlers already), then the no-op handlers:
        # no signal falls between the two
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, lambda *_: None)
        # SIGTERM works through a SIGINT to the main thread, whatever SIGINT's disposition was
        # (a shell starts background jobs with SIGINT ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Thread(target=self._watch, daemon=True, name="pushcut-signals").start()

    def _watch(self) -> None:
        while True:
            try:
                data = self._read.recv(64)
            except OSError:
                return
            if not data:
                return
            for sig in data:
                try:
                    if sig == signal.SIGUSR1:
                        self.server.estop("SIGUSR1 (local e-stop)")
                    elif sig == signal.SIGTERM:
                        self.server.log("SIGTERM: shutting down; the robot holds")
                        signal.pthread_kill(self.main, signal.SIGINT)
                except Exception as exc:  # this thread must outlive any failure: the next signal needs it
                    self.server.log(f"signal {sig}: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self._write.close()
        self._read.close()


def serve(config_path: str, overrides: list[str], options: ServeOptions, plugins: list[str] | None = None,
          token_file: str = "", console: bool = True) -> int:
    """``pushcut robot serve``: connect the robot, listen, serve until interrupted; the robot holds
    and the driver closes on the way out."""
    options.token = options.token or load_token(token_file)
    options.check()
    manager = None
    if plugins:  # only these plugins, besides this one (its robot-driver hook and built-in drivers)
        from pushcut.pluginmanager import PluginManager

        manager = PluginManager.from_refs(dict.fromkeys([__package__, *plugins]))
    config = load_robot_config(config_path, list(overrides), manager)
    # Until the watcher takes over (once the robot is up): SIGTERM stops, SIGUSR1 latches the e-stop at once.
    early_estop = threading.Event()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGUSR1, lambda *_: early_estop.set())
    from pushcut.plugins.envs.real.env import build_driver

    robot = RobotEnv(config, build_driver(config, manager))
    watcher = None
    try:
        server = RobotServer(robot, options)
        host, port = server.address
        watcher = _SignalWatcher(server)
        try:  # from here a SIGTERM (a SIGINT to this thread) may land anywhere: every one is a clean stop
            if early_estop.is_set():
                server.estop("SIGUSR1 (local e-stop, during start-up)")
            page = f"; operator page {server.operator_url}" if server.operator_url else ""
            print(f"pushcut robot serve: serving robot (driver {config.driver.type}, {len(robot.tasks())} tasks) on "
                  f"{host}:{port}{' with TLS' if server.tls else ''}{page}", flush=True)
            print("pushcut robot serve: e + Enter (or kill -USR1) = E-STOP, r + Enter = reset it, Enter = confirm "
                  "the next episode", flush=True)
            if console:
                threading.Thread(target=server.console, args=(sys.stdin,), daemon=True,
                                 name="pushcut-console").start()
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        server.shutdown()
    finally:
        robot.close()
        if watcher is not None:
            watcher.close()
    return 0
