"""`pushcut robot serve` attacked from outside, as a real process (replay driver, so every command
the robot received is in its record file): process-directed e-stop signals while a session idles,
forged and cross-origin requests to the operator page, malformed messages before and during a
session, an idle trainer. Every server process is stopped in a ``finally``, pass or fail."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import threading
import time

import msgpack
import numpy as np
import pytest
import yaml

from pushcut.envpool import EnvPool, SlotFailure
from pushcut.envpool.transports.socket import SocketTransport
from pushcut.envpool.spec import EnvSpec
from pushcut.plugins.envs.real.launch import RobotServerProcess
from pushcut.webguard import SECRET_HEADER, PageClient, split_host
from pushcut.envpool.wire import PROTOCOL_VERSION, FramedSocket

TOKEN = "hostile-test-token"


def robot_config(tmp_path, **env) -> str:
    record = tmp_path / "commands.jsonl"
    data = {"env": {"type": "real", "operator_port": 0, "control_hz": 50,
                    "driver": {"type": "replay", "record_file": str(record), "image_size": 16, "max_steps": 400},
                    "safety": {"watchdog_ms": 0}, **env}}
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def records(tmp_path) -> list[dict]:
    path = tmp_path / "commands.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def robot(tmp_path):
    """A replay robot server (operator page on, token set), stopped afterwards whatever happened."""
    proc = RobotServerProcess(robot_config(tmp_path), ["--port", "0"], env={"PUSHCUT_ENV_TOKEN": TOKEN})
    try:
        yield proc
    finally:
        proc.stop()


def connect(address: str) -> EnvPool:
    return EnvPool(EnvSpec("real", {}), num_workers=1, envs_per_worker=1, timeout_s=30,
                   transport=SocketTransport([address], token=TOKEN, connect_attempts=3, connect_timeout_s=10))


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def estop_engaged(robot) -> bool:
    return PageClient(robot.operator_url).get("status")[1]["estop"]


# ----------------------------------------------------------------- the signal e-stop


def test_every_process_directed_sigusr1_latches_within_100_ms_while_a_session_idles_and_the_page_is_polled(
        robot, tmp_path):
    pool = connect(robot.address)
    stop_polling = threading.Event()

    def poll() -> None:  # an operator's page polling, so a page thread is often the one running
        client = PageClient(robot.operator_url)
        while not stop_polling.is_set():
            client.get("status")

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(2)]
    for t in pollers:
        t.start()
    latencies = []
    try:
        pool.reset({0: ("dry_run", 0)})  # the session idles now: the server's main thread sits in a read
        for _ in range(12):
            before = len([r for r in records(tmp_path) if r["kind"] == "stop"])
            sent = time.time()
            os.kill(robot.proc.pid, signal.SIGUSR1)  # process-directed: the kernel picks the thread
            assert wait_until(lambda: len([r for r in records(tmp_path) if r["kind"] == "stop"]) > before, 5.0)
            stop = [r for r in records(tmp_path) if r["kind"] == "stop"][-1]
            latencies.append(stop["time"] - sent)
            robot.type("r")
            assert wait_until(lambda: not estop_engaged(robot))
            time.sleep(0.05)
    finally:
        stop_polling.set()
        pool.close()
    print("SIGUSR1 -> driver.stop() latencies (ms):", [round(x * 1e3, 1) for x in latencies])
    assert max(latencies) < 0.1, [round(x * 1e3, 1) for x in latencies]


def test_sigterm_during_an_idle_session_shuts_down_and_the_robot_holds(tmp_path):
    proc = RobotServerProcess(robot_config(tmp_path), ["--port", "0"], env={"PUSHCUT_ENV_TOKEN": TOKEN})
    pool = None
    try:
        pool = connect(proc.address)
        pool.reset({0: ("dry_run", 0)})
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(10) == 0
        assert records(tmp_path)[-1]["kind"] == "hold"
    finally:
        if pool is not None:
            pool.close()
        proc.stop()


# ----------------------------------------------------------------- the operator page


def raw_request(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
    """Status of a request with exactly these headers (Host included, however forged)."""
    host, port = split_host(url.split("//")[1].rstrip("/"))
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(body or None)
        return conn.getresponse().status
    finally:
        conn.close()


def test_forged_and_cross_origin_requests_change_nothing(robot):
    page = PageClient(robot.operator_url)
    own = robot.operator_url.split("//")[1].rstrip("/")
    assert page.post("estop")[0] == 200 and estop_engaged(robot)
    secret = page.secret
    json_headers = {"Host": own, "Content-Type": "application/json", SECRET_HEADER: secret, "Content-Length": "2"}
    attacks = {
        "a foreign page's simple POST (text/plain, no secret)": (
            "/reset", {"Host": own, "Origin": "http://evil.example", "Content-Type": "text/plain",
                       "Content-Length": "2"}, b"{}", 403),
        "the right secret from a foreign Origin": (
            "/reset", {**json_headers, "Origin": "http://evil.example"}, b"{}", 403),
        "a null Origin (sandboxed frame)": ("/reset", {**json_headers, "Origin": "null"}, b"{}", 403),
        "a DNS-rebound name in Host": ("/reset", {**json_headers, "Host": f"evil.example:{own.rsplit(':', 1)[1]}"},
                                       b"{}", 403),
        "the right name on another port": ("/reset", {**json_headers, "Host": "127.0.0.1:1"}, b"{}", 403),
        "no secret": ("/reset", {k: v for k, v in json_headers.items() if k != SECRET_HEADER}, b"{}", 403),
        "a wrong secret": ("/reset", {**json_headers, SECRET_HEADER: secret[:-1] + "x"}, b"{}", 403),
        "the secret with a form body": ("/reset", {**json_headers, "Content-Type": "application/x-www-form-urlencoded"},
                                        b"{}", 415),
        "a negative Content-Length": ("/reset", {**json_headers, "Content-Length": "-1"}, b"", 400),
        "an oversized Content-Length": ("/reset", {**json_headers, "Content-Length": str(10 << 20)}, b"", 413),
        "confirm from a foreign Origin": ("/confirm", {**json_headers, "Origin": "http://evil.example"}, b"{}", 403),
    }
    for what, (path, headers, body, expected) in attacks.items():
        assert raw_request(robot.operator_url, "POST", path, headers, body) == expected, what
        assert estop_engaged(robot), f"{what} released the e-stop"
    for path in ("/", "/status"):  # a rebound name can read neither the page (its secret) nor the state
        assert raw_request(robot.operator_url, "GET", path, {"Host": "evil.example"}) == 403
    assert raw_request(robot.operator_url, "POST", "/estop", {"Host": "evil.example"}) == 403
    assert raw_request(robot.operator_url, "POST", "/estop", {"Host": own, "Origin": "http://evil.example"}) == 200
    assert page.post("reset")[0] == 200  # the page's own button still works
    assert not estop_engaged(robot)


# ----------------------------------------------------------------- malformed messages


def _send_raw(sock: socket.socket, message: dict) -> None:
    payload = msgpack.packb(message)
    sock.sendall(struct.pack(">I", len(payload)) + payload)


@pytest.mark.parametrize("bad", [[], {}, 1.5])
def test_a_bad_message_type_mid_episode_ends_only_that_session(robot, tmp_path, bad):
    with socket.create_connection(("127.0.0.1", robot.port), timeout=10) as sock:  # before the hello
        _send_raw(sock, {"t": bad})
        assert FramedSocket(sock).recv(10)["t"] == "refuse"
    with socket.create_connection(("127.0.0.1", robot.port), timeout=10) as sock:  # mid-episode
        framed = FramedSocket(sock)
        framed.send({"t": "hello", "v": PROTOCOL_VERSION, "token": TOKEN, "env": "real", "options": {},
                     "num_envs": 1})
        assert framed.recv(10)["t"] == "welcome"
        framed.send({"t": "reset", "id": 1, "items": [[0, "dry_run", 0]]})
        while framed.recv(10)["t"] != "result":
            pass
        _send_raw(sock, {"t": bad, "id": 2, "items": [[0, [[0.1, 0, 0, 0]], False]]})
        reply = framed.recv(10)
        assert reply["t"] == "error" and "unknown message type" in reply["reason"]
    assert wait_until(lambda: records(tmp_path)[-1]["kind"] == "hold")  # the robot holds for the lost session
    with connect(robot.address) as pool:  # and serves the next trainer
        pool.reset({0: ("dry_run", 1)})
        assert pool.step({0: np.zeros((2, 4), np.float32)})[0].steps == 2
    assert robot.proc.poll() is None and "Traceback" not in robot.output


def test_an_idle_trainer_loses_its_session_the_robot_holds_and_the_next_trainer_gets_it(tmp_path):
    proc = RobotServerProcess(robot_config(tmp_path, session_idle_timeout_s=1.0), ["--port", "0"],
                              env={"PUSHCUT_ENV_TOKEN": TOKEN})
    try:
        frozen = connect(proc.address)
        frozen.reset({0: ("dry_run", 0)})
        frozen.step({0: np.full((2, 4), 0.1, np.float32)})
        proc.wait_for("idle session timeout", 10)  # the trainer froze; its session is dropped
        assert records(tmp_path)[-1]["kind"] == "hold"
        with connect(proc.address) as other:  # the robot is free for the next trainer at once
            other.reset({0: ("dry_run", 1)})
            assert other.step({0: np.zeros((1, 4), np.float32)})[0].steps == 1
        lost = frozen.step({0: np.zeros((1, 4), np.float32)})[0]
        assert isinstance(lost, SlotFailure)  # the frozen one's episode is gone, counted, not resumed
        frozen.close()
    finally:
        proc.stop()


def test_sigterm_stops_a_server_started_with_sigint_ignored(tmp_path):
    """A shell starts background jobs with SIGINT ignored; SIGTERM must still shut the server down
    (through its own SIGINT handler) and leave the robot held."""
    import subprocess
    import sys

    config = robot_config(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "pushcut.cli", "robot", "serve", config, "--port", "0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert "serving robot" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stdout.read()
        assert records(tmp_path)[-1]["kind"] == "hold", records(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_page_bound_off_loopback_offers_no_reset_even_with_the_trainers_token(tmp_path):
    proc = RobotServerProcess(robot_config(tmp_path, operator_host="0.0.0.0"), ["--port", "0"],
                              env={"PUSHCUT_ENV_TOKEN": TOKEN})
    try:
        port = proc.operator_url.rstrip("/").rsplit(":", 1)[1]
        page = PageClient(f"http://127.0.0.1:{port}/")
        assert page.post("estop")[0] == 200
        status, reply = page.request("POST", "reset", b"{}", {"Content-Type": "application/json",
                                                               SECRET_HEADER: page.secret, "X-Pushcut-Token": TOKEN})
        assert status == 403 and "only at the robot" in reply["error"]
        assert estop_engaged(proc)
        proc.type("r")  # the console at the robot releases it
        assert wait_until(lambda: not estop_engaged(proc))
    finally:
        proc.stop()


def test_slow_page_clients_are_cut_at_their_deadline_and_hang_ups_print_no_traceback(robot):
    from pushcut.webguard import REQUEST_DEADLINE_S

    host, port = split_host(robot.operator_url.split("//")[1].rstrip("/"))
    drips = [socket.create_connection((host, port), timeout=5) for _ in range(40)]
    for sock in drips:
        sock.sendall(b"GET /status HTTP/1.1\r\n")
    t0 = time.monotonic()
    open_after = len(drips)
    while time.monotonic() - t0 < REQUEST_DEADLINE_S + 8 and open_after:
        time.sleep(1.0)
        open_after = 0
        for sock in drips:  # one header line a second: every read is well inside the per-read timeout
            try:
                sock.sendall(b"X-Drip: 1\r\n")
                open_after += 1
            except OSError:
                pass
    for sock in drips:
        sock.close()
    assert open_after == 0, f"{open_after} dripping connections outlived the {REQUEST_DEADLINE_S:g} s deadline"
    assert PageClient(robot.operator_url).get("status")[0] == 200
    with socket.create_connection((host, port), timeout=5) as sock:  # a client that hangs up mid-request
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\n\r\n")
    time.sleep(0.5)
    assert "Traceback" not in robot.output
