"""`pushcut env serve` and the socket transport: hello, auth, TLS, every fault as one line and a
counted loss (never a hang), and a training run against served envs equal to the in-process one."""

import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from pushcut import hookimpl
from pushcut.configio import load_config, to_dict
from pushcut.envpool import EnvPool, EnvSpec, SlotFailure, SocketTransport
from pushcut.errors import EnvError
from pushcut.testing import registered_plugin
from pushcut.toys import ReachConfig, ReachEnv, ToyPlugin
from faulty_reach import FAULTY_PLUGIN, FaultyReachConfig
from pushcut.trainer import Trainer
from pushcut.envpool.wire import PROTOCOL_VERSION, FramedSocket

HERE = Path(__file__).parent
TOYS = "pushcut.toys:ToyPlugin"
FAULTS = {"crash_on_init_state", "hang_on_init_state"}
ZERO = np.zeros((1, 1), np.float32)


class WideReach(ReachEnv):
    """The reach env with a 2-D action: a server of it disagrees on the action spec."""

    @property
    def action_spec(self):
        from pushcut.envcontract import ActionSpec

        return ActionSpec(2, (-1.0, -1.0), (1.0, 1.0))


class WidePlugin:
    @hookimpl
    def pushcut_register_envs(self, registry):
        registry.add("reach", ReachConfig, WideReach)


class Server:
    """A `pushcut env serve` subprocess; its stderr is collected for the one-line checks."""

    def __init__(self, tmp_path, env: dict | None = None, *args: str, plugin: str = TOYS, extra_env=None,
                 wait: bool = True):
        self.options = dict(env or {})
        cfg = tmp_path / f"env_{time.monotonic_ns()}.yaml"
        cfg.write_text(json.dumps({"env": {"type": "reach", **(env or {})}}))
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
                   **(extra_env or {})}
        environ.pop("PUSHCUT_ENV_TOKEN", None) if "PUSHCUT_ENV_TOKEN" not in (extra_env or {}) else None
        self.proc = subprocess.Popen([sys.executable, "-m", "pushcut.cli", "env", "serve", str(cfg), "--port", "0",
                                      "--plugin", plugin, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=environ)
        self._err: list[str] = []
        threading.Thread(target=lambda: self._err.extend(self.proc.stderr), daemon=True).start()
        self.port = 0
        if wait:
            ready, _, _ = select.select([self.proc.stdout], [], [], 60)
            line = self.proc.stdout.readline() if ready else ""
            match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
            if not match:  # never leave a half-started server behind
                self.stop()
            assert match, f"server did not start: {line!r} {self.stderr()}"
            self.port = int(match.group(1))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stderr(self, settle: float = 0.3) -> str:
        time.sleep(settle)
        return "".join(self._err)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(env=None, *args, **kw):
        s = Server(tmp_path, env, *args, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def spec(**options):
    return EnvSpec("reach", to_dict(FaultyReachConfig(**options) if FAULTS & set(options) else ReachConfig(**options)))


def socket_pool(*servers, envs=2, timeout_s=20.0, **kw):
    kw.setdefault("connect_attempts", 2)
    kw.setdefault("connect_timeout_s", 5.0)
    return EnvPool(spec(**servers[0].options), envs_per_worker=envs, timeout_s=timeout_s,
                   transport=SocketTransport([s.address for s in servers], **kw))


def one_line(text: str) -> bool:
    return "\n" not in text.strip() and "Traceback" not in text


# ----------------------------------------------------------------- the happy path


def test_served_envs_step_like_process_workers(serve):
    server = serve()
    with socket_pool(server) as remote, EnvPool(ReachEnv, ReachConfig(), num_workers=1, envs_per_worker=2) as local:
        assert remote.tasks() == local.tasks() and remote.action_spec == local.action_spec
        a, b = remote.reset({0: ("reach_1", 7), 1: ("reach_0", 2)}), local.reset({0: ("reach_1", 7), 1: ("reach_0", 2)})
        for s in (0, 1):
            np.testing.assert_array_equal(a[s]["state"], b[s]["state"])
            np.testing.assert_array_equal(a[s]["image"], b[s]["image"])
        chunk = {0: np.full((3, 1), 0.5, np.float32), 1: np.full((2, 1), -1.0, np.float32)}
        ra, rb = remote.step(chunk, record=True), local.step(chunk, record=True)
        for s in (0, 1):
            assert (ra[s].steps, ra[s].success, ra[s].done, ra[s].info) == (rb[s].steps, rb[s].success, rb[s].done,
                                                                             rb[s].info)
            assert len(ra[s].frames) == len(rb[s].frames) == ra[s].steps
        assert remote.worker_pids() == [server.proc.pid]
    assert "session from 127.0.0.1" in server.stderr()


def test_an_env_raising_is_a_slot_failure_and_the_session_goes_on(serve):
    with socket_pool(serve({"crash_on_init_state": 3}, plugin=FAULTY_PLUGIN)) as pool:
        pool.reset({0: ("reach_0", 3), 1: ("reach_0", 4)})
        out = pool.step({0: ZERO, 1: ZERO})
        assert isinstance(out[0], SlotFailure) and "simulated simulator crash" in out[0].reason
        assert not isinstance(out[1], SlotFailure) and pool.restarts == 0 and pool.pop_lost_slots() == set()


def test_training_against_served_envs_equals_the_in_process_run(serve, tmp_path):
    """Same seed, same env, same policy: rewards and every non-timing metric equal."""
    base = ["env.type=reach", "policy.type=bins", "algo.temperature=1.0", "train.lr=0.03", "train.batch_size=8",
            "train.minibatch_size=32", "rollout.envs_per_worker=8", "train.iterations=3", "train.eval_every=0",
            "eval.max_init_states=4"]
    servers = [serve(None, "--envs", "8"), serve(None, "--envs", "8")]
    runs = {}
    with registered_plugin(ToyPlugin(), "toys") as manager:
        for name, extra in (("process", ["rollout.transport=process", "rollout.num_workers=2"]),
                            ("socket", ["rollout.transport=socket",
                                        f"rollout.transport.addresses=[{servers[0].address},{servers[1].address}]"])):
            cfg = load_config(None, [*base, *extra, f"run_dir={tmp_path / name}"], manager)
            assert Trainer(cfg, manager).run()["status"] == "completed"
            lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
            runs[name] = [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")} for x in lines]
    assert runs["socket"] == runs["process"]
    assert runs["socket"][-1]["rollout/episodes"] >= 64 and "rollout/success_rate" in runs["socket"][-1]


# ----------------------------------------------------------------- hello: auth, version, agreement


def test_a_wrong_or_missing_token_is_refused_with_one_line_on_both_sides(serve):
    server = serve(None, extra_env={"PUSHCUT_ENV_TOKEN": "s3cret"})
    for token in ("nope", ""):
        with pytest.raises(EnvError, match="refused the connection: wrong or missing token") as info:
            socket_pool(server, token=token)
        assert one_line(str(info.value))
    log = server.stderr()
    assert log.count("wrong or missing token") == 2 and "Traceback" not in log
    with socket_pool(server, token="s3cret") as pool:
        assert pool.num_slots == 2


def test_a_non_loopback_bind_needs_a_token(tmp_path):
    cfg = tmp_path / "env.yaml"
    cfg.write_text("env: {type: reach}\n")
    environ = {k: v for k, v in os.environ.items() if k != "PUSHCUT_ENV_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "pushcut.cli", "env", "serve", str(cfg), "--host", "0.0.0.0",
                          "--plugin", TOYS], capture_output=True, text=True, timeout=60, env=environ)
    assert out.returncode == 2 and one_line(out.stderr)
    assert "not loopback) needs a token: set PUSHCUT_ENV_TOKEN" in out.stderr


def test_a_protocol_version_mismatch_is_refused(serve, monkeypatch):
    server = serve()
    monkeypatch.setattr("pushcut.envpool.transport.PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    with pytest.raises(EnvError, match=f"protocol version mismatch: the trainer speaks {PROTOCOL_VERSION + 1}, "
                                       f"this server speaks {PROTOCOL_VERSION}") as info:
        socket_pool(server)
    assert one_line(str(info.value)) and "protocol version mismatch" in server.stderr()


def test_env_name_options_and_action_spec_mismatches_are_refused(serve):
    server = serve()
    with pytest.raises(EnvError, match="serves env 'reach', the trainer asks for 'tabletop'"):
        EnvPool(EnvSpec("tabletop", {}), envs_per_worker=1,
                transport=SocketTransport([server.address], connect_attempts=1))
    with pytest.raises(EnvError, match=r"other options than the config: targets=\[-0.5, 0.5\] there, \[0.1\] here"):
        EnvPool(spec(targets=(0.1,)), envs_per_worker=1, transport=SocketTransport([server.address]))
    with pytest.raises(EnvError, match="the trainer wants 8 envs, this server holds 4: start it with --envs 8"):
        socket_pool(server, envs=8)
    wide = serve(plugin="test_envserver:WidePlugin")
    with pytest.raises(EnvError, match=r"has action spec ActionSpec\(action_dim=2.*every worker must serve the same"):
        socket_pool(server, wide)


# ----------------------------------------------------------------- faults during a run


def test_a_server_killed_mid_step_is_a_counted_failure_then_a_clear_stop(serve):
    slow, healthy = serve({"step_delay_s": 0.2}), serve({"step_delay_s": 0.2})
    with socket_pool(slow, healthy, connect_attempts=2, connect_timeout_s=2.0) as pool:
        pool.reset({s: ("reach_0", s) for s in range(4)})
        threading.Timer(0.3, slow.proc.kill).start()
        t0 = time.monotonic()
        out = pool.step({s: np.zeros((5, 1), np.float32) for s in range(4)})
        assert time.monotonic() - t0 < 15
        assert all(isinstance(out[s], SlotFailure) for s in (0, 1))
        assert "closed the connection" in out[0].reason and "could not bring it back" in out[0].reason
        assert one_line(out[0].reason)
        assert not isinstance(out[2], SlotFailure) and not isinstance(out[3], SlotFailure)
        assert pool.pop_lost_slots() == {0, 1}
        assert pool.step({2: ZERO})[2].steps == 1  # the healthy server serves on
        with pytest.raises(EnvError, match=r"env server 127.0.0.1:\d+ is down .* restart the env servers") as info:
            pool.reset({0: ("reach_0", 1)})
        assert one_line(str(info.value))


def test_a_server_that_stops_answering_is_detected_by_its_missing_heartbeat(serve):
    server = serve({"step_delay_s": 0.5})
    with socket_pool(server, timeout_s=60, connect_attempts=1, connect_timeout_s=1.0) as pool:
        pool.reset({0: ("reach_0", 1)})
        threading.Timer(0.2, lambda: server.proc.send_signal(signal.SIGSTOP)).start()
        t0 = time.monotonic()
        out = pool.step({0: np.zeros((4, 1), np.float32)})
        assert time.monotonic() - t0 < 15  # the silence limit (6 s), not the 60 s step timeout
        assert isinstance(out[0], SlotFailure) and "stopped answering (no heartbeat for 6 s)" in out[0].reason


def test_a_hanging_env_times_out_and_the_busy_server_is_reported(serve):
    server = serve({"hang_on_init_state": 2}, plugin=FAULTY_PLUGIN)
    with socket_pool(server, timeout_s=3, connect_attempts=1, connect_timeout_s=2.0) as pool:
        pool.reset({0: ("reach_0", 2), 1: ("reach_0", 1)})
        out = pool.step({0: ZERO, 1: ZERO})
        assert isinstance(out[0], SlotFailure) and "did not answer within 3 s" in out[0].reason
        assert isinstance(out[1], SlotFailure)
    assert "Traceback" not in server.stderr()


# ----------------------------------------------------------------- bad frames and silent clients


def _raw(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _reply(sock) -> dict:
    return FramedSocket(sock).recv(10)


def test_garbage_truncated_and_unknown_frames_are_refused_and_the_server_serves_on(serve):
    server = serve()
    with _raw(server) as sock:  # not msgpack
        sock.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        assert "undecodable frame" in _reply(sock)["reason"]
    with _raw(server) as sock:  # a pickle where a hello should be
        payload = b"\x80\x04\x95" + b"\0" * 20
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        assert _reply(sock)["t"] == "refuse"
    with _raw(server) as sock:  # an unknown message type
        payload = msgpack.packb({"t": "exec", "code": "import os"})
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        assert "unknown message type 'exec'" in _reply(sock)["reason"]
    with _raw(server) as sock:  # truncated: the length says 100, 5 bytes come, then the client goes
        sock.sendall(struct.pack(">I", 100) + b"\x85abcd")
    with socket_pool(server) as pool:  # still serving
        assert pool.step({0: ZERO})[0].steps == 1
    log = server.stderr()
    assert "truncated frame" in log and "Traceback" not in log


def test_a_garbage_frame_mid_session_ends_that_session_with_one_line(serve):
    server = serve()
    with _raw(server) as sock:
        framed = FramedSocket(sock)
        framed.send({"t": "hello", "v": PROTOCOL_VERSION, "token": "", "env": "reach", "options": {}, "num_envs": 1})
        assert framed.recv(10)["t"] == "welcome"
        sock.sendall(struct.pack(">I", 2) + b"\xc1\xc1")
        reply = framed.recv(10)
        assert reply["t"] == "error" and "undecodable frame" in reply["reason"]
    assert "ended: protocol error: undecodable frame" in server.stderr()


def test_oversized_frames_are_refused_on_both_sides(serve):
    server = serve(None, "--max-frame-mb", "0.01")
    with socket_pool(server) as pool:
        out = pool.step({0: np.zeros((4000, 1), np.float32)})  # 16 kB of actions > 10 kB
        assert isinstance(out[0], SlotFailure) and "over the limit of 10485 bytes" in out[0].reason
    assert "over the limit" in server.stderr()
    big = serve({"num_init_states": 4000})  # its welcome lists 2 x 3990 train states: about 24 kB
    with pytest.raises(EnvError, match=r"env server 127.0.0.1:\d+ sent a frame of \d+ bytes, over the limit") as info:
        socket_pool(big, max_frame_mb=0.01)
    assert one_line(str(info.value))


def test_a_client_that_says_nothing_is_dropped_and_blocks_no_one(serve):
    server = serve(None, "--hello-timeout", "1")
    with _raw(server) as silent:
        with socket_pool(server) as pool:  # served while the silent one waits
            assert pool.num_slots == 2
        silent.settimeout(10)
        assert silent.recv(10) == b""  # closed by the server
    assert "sent no hello within 1 s" in server.stderr()


# ----------------------------------------------------------------- TLS


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls_with_a_self_signed_certificate(serve, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    server = serve(None, "--tls-cert", str(cert), "--tls-key", str(key))
    with socket_pool(server, tls_ca=str(cert)) as pool:
        assert pool.step({0: ZERO})[0].steps == 1
    with pytest.raises(EnvError, match="cannot reach"):
        socket_pool(server, connect_attempts=1)  # plain TCP to a TLS server
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k2.pem"),
                    "-out", str(other), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    with pytest.raises(EnvError, match="TLS handshake with env server .* failed"):
        socket_pool(server, tls_ca=str(other))
    assert "TLS handshake failed" in server.stderr()


class KillAfter:
    """Kills an env server after the rollout of a given iteration."""

    def __init__(self, at, server):
        self.at, self.server = at, server

    @hookimpl
    def pushcut_after_rollout(self, run_dir, step, metrics):
        if step == self.at:
            self.server.proc.kill()
            self.server.proc.wait(10)


def test_training_whose_only_server_dies_stops_with_one_line_and_the_fix(serve, tmp_path):
    server = serve(None, "--envs", "8")
    with registered_plugin(ToyPlugin(), "toys") as manager, registered_plugin(KillAfter(1, server), "kill", manager):
        cfg = load_config(None, ["env.type=reach", "policy.type=bins", "algo.temperature=1.0", "train.batch_size=2",
                                 "train.iterations=3", "train.eval_every=0", "train.eval_at_start=false", "train.save_every=1",
                                 "rollout.transport=socket", f"rollout.transport.addresses=[{server.address}]",
                                 "rollout.envs_per_worker=8", "rollout.transport.connect_attempts=1",
                                 "rollout.transport.connect_timeout_s=2", f"run_dir={tmp_path / 'run'}"], manager)
        t0 = time.monotonic()
        with pytest.raises(EnvError, match=r"env server 127.0.0.1:\d+ is down \(.*\); restart the env servers") as info:
            Trainer(cfg, manager).run()
        assert time.monotonic() - t0 < 60 and one_line(str(info.value))
    assert (tmp_path / "run" / "checkpoints").is_dir()  # iteration 1 is saved: the run resumes from there


def test_training_routes_around_a_dead_server_and_finishes_on_the_others(serve, tmp_path, caplog):
    first, second = serve(None, "--envs", "4"), serve(None, "--envs", "4")
    with registered_plugin(ToyPlugin(), "toys") as manager, registered_plugin(KillAfter(1, first), "kill", manager):
        cfg = load_config(None, ["env.type=reach", "policy.type=bins", "algo.temperature=1.0", "train.batch_size=2",
                                 "train.iterations=3", "train.eval_every=0", "train.eval_at_start=false",
                                 "rollout.transport=socket", f"rollout.transport.addresses=[{first.address},{second.address}]",
                                 "rollout.envs_per_worker=4", "rollout.transport.connect_attempts=1",
                                 "rollout.transport.connect_timeout_s=2", f"run_dir={tmp_path / 'run'}"], manager)
        with caplog.at_level("WARNING", logger="pushcut"):
            summary = Trainer(cfg, manager).run()
    assert summary["status"] == "completed"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert lines[1]["rollout/episodes_failed"] >= 1  # the episodes on the killed server, counted
    assert lines[2]["rollout/episodes_failed"] == 0  # later rounds run on the live server only
    assert sum("is down" in r.message and "continuing on the others (1 of 2 down)" in r.message
               for r in caplog.records) == 1


# ----------------------------------------------------------------- hostile peers (issue 34)


def _hello(sock, num_envs: int = 1) -> FramedSocket:
    framed = FramedSocket(sock)
    framed.send({"t": "hello", "v": PROTOCOL_VERSION, "token": "", "env": "reach", "options": {}, "num_envs": num_envs})
    assert framed.recv(10)["t"] == "welcome"
    return framed


def _closed_within(sock, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), or None if it is still open after ``seconds``."""
    t0 = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - t0 < seconds:
        try:
            if sock.recv(1 << 16) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


@pytest.mark.parametrize("bad", [[], {}, 1.5, ["step"], None])
def test_a_message_type_that_is_no_string_is_one_line_before_and_after_the_hello(serve, bad):
    server = serve()
    payload = msgpack.packb({"t": bad, "items": [[0, [[0.0]], False]]})
    with _raw(server) as sock:  # before the hello
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        reply = _reply(sock)
        assert reply["t"] == "refuse" and "unknown message type" in reply["reason"]
    with _raw(server) as sock:  # after it, mid-session
        framed = _hello(sock)
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        reply = framed.recv(10)
        assert reply["t"] == "error" and "unknown message type" in reply["reason"]
    with socket_pool(server) as pool:  # the next client is served
        assert pool.step({0: ZERO})[0].steps == 1
    log = server.stderr()
    assert "Traceback" not in log and "TypeError" not in log
    assert len([line for line in log.splitlines() if "unknown message type" in line]) == 2
    assert server.proc.poll() is None


def test_a_hello_dripped_byte_by_byte_is_closed_at_its_deadline(serve):
    server = serve(None, "--hello-timeout", "1")
    hello = msgpack.packb({"t": "hello", "v": PROTOCOL_VERSION, "token": "", "env": "reach", "options": {},
                           "num_envs": 1, "padding": "x" * 40})
    frame = struct.pack(">I", len(hello)) + hello
    with _raw(server) as sock:
        t0 = time.monotonic()
        closed_after = None
        for byte in frame:  # one byte every 0.2 s: each read is well inside the timeout, the whole hello is not
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - t0
                break
            if _closed_within(sock, 0.2) is not None:
                closed_after = time.monotonic() - t0
                break
        assert closed_after is not None, "the server waited for the whole dripped hello"
        assert closed_after < 3.0  # the deadline is 1 s; the drip would take ~15 s
    assert "sent no hello within 1 s" in server.stderr()


def test_a_large_first_frame_is_refused_at_its_header(serve):
    server = serve()
    with _raw(server) as sock:
        sock.sendall(struct.pack(">I", 32 << 20))  # announce 32 MiB, send none of it
        reply = _reply(sock)
        assert reply["t"] == "refuse" and "over the limit of 65536 bytes" in reply["reason"]
    with socket_pool(server) as pool:
        assert pool.step({0: ZERO})[0].steps == 1


def test_connections_that_never_say_hello_cannot_lock_a_trainer_out(serve):
    """Past the cap on connections not yet admitted, a new one closes the oldest: sixteen silent
    sockets cost sixteen threads at most, and a trainer still gets in."""
    from pushcut.envpool.server import MAX_PENDING_HELLOS

    server = serve(None, "--hello-timeout", "30")
    silent = [_raw(server) for _ in range(MAX_PENDING_HELLOS)]
    try:
        time.sleep(0.3)
        with socket_pool(server) as pool:  # admitted: the oldest silent connection made room
            assert pool.step({0: ZERO})[0].steps == 1
        assert _closed_within(silent[0], 5.0) is not None
        assert "the oldest of 16 connections not yet admitted" in server.stderr()
        extra = [_raw(server) for _ in range(MAX_PENDING_HELLOS)]  # another wave evicts all the first
        try:
            assert all(_closed_within(sock, 5.0) is not None for sock in silent[1:])
        finally:
            for sock in extra:
                sock.close()
    finally:
        for sock in silent:
            sock.close()


def test_a_first_frame_of_nested_containers_is_refused_before_it_grows():
    from pushcut.envpool.wire import ProtocolError, decode

    flood = msgpack.packb({"t": "hello", "x": [{}] * 60000})  # 60 kB of empty maps: ~60 MB once decoded
    assert len(flood) < 65536
    with pytest.raises(ProtocolError, match="undecodable"):
        decode(flood, small=True)
    assert decode(flood)["t"] == "hello"  # after the hello the full limits apply


@pytest.mark.parametrize("items", [[[0, [[0.0]], False]] * 200, [[0, [[0.0]], False], [0, [[0.0]], False]],
                                   [[True, [[0.0]], False]]])
def test_request_items_are_bounded_by_the_envs_and_never_repeat(serve, items):
    server = serve()
    with _raw(server) as sock:
        framed = _hello(sock, num_envs=2)
        framed.send({"t": "reset", "id": 1, "items": [[0, "reach_0", 0]]})
        while (reply := framed.recv(10))["t"] == "beat":
            pass
        t0 = time.monotonic()
        framed.send({"t": "step", "id": 2, "items": items})
        reply = framed.recv(10)
        assert reply["t"] == "error", reply
        assert re.search(r"names \d+ envs|names env 0 twice|env index True", reply["reason"]), reply["reason"]
        assert time.monotonic() - t0 < 5
    with socket_pool(server) as pool:
        assert pool.step({0: ZERO})[0].steps == 1
    assert "Traceback" not in server.stderr()
