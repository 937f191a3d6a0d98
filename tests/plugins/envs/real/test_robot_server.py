"""`pushcut robot serve` as a real process on loopback, reached through the socket transport:
token, one trainer at a time, interventions in the step info, the trainer going silent or away,
the e-stop endpoint, the console and the local signal, and the server restarting mid-run."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request

import numpy as np
import pytest
import yaml

from pushcut.envpool import EnvPool, SlotFailure
from pushcut.envpool.transports.socket import SocketTransport
from pushcut.envpool.spec import EnvSpec
from pushcut.errors import EnvError
from pushcut.plugins.envs.real.launch import RobotServerProcess
from pushcut.webguard import PageClient

SIM = {"env": {"type": "tabletop", "image_size": 32, "video_size": 32, "tasks": ["press_button", "lift_blue"]}}
TOKEN = "robot-test-token"
ROBOT = {"env": {"type": "real", "driver": {"type": "sim", **SIM}, "operator_port": 0,
                   "safety": {"action_low": [-0.5, -0.5, -0.5, -1], "action_high": [0.5, 0.5, 0.5, 1],
                              "watchdog_ms": 150}}}


def write_config(path, data=ROBOT):
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = write_config(tmp_path_factory.mktemp("robot") / "robot.yaml")
    with RobotServerProcess(config, ["--port", "0"], env={"PUSHCUT_ENV_TOKEN": TOKEN}) as proc:
        yield proc


def connect(address: str, token: str = TOKEN, attempts: int = 1) -> EnvPool:
    return EnvPool(EnvSpec("real", {}), num_workers=1, envs_per_worker=1, timeout_s=30,
                   transport=SocketTransport([address], token=token, connect_attempts=attempts, connect_timeout_s=10))


def status(server) -> dict:
    with urllib.request.urlopen(server.operator_url + "status", timeout=5) as reply:
        return json.load(reply)


def post(server, path: str) -> dict:
    """A button of the operator page, pressed as the page itself sends it (with its secret)."""
    status, reply = PageClient(server.operator_url).post(path)
    assert status == 200, reply
    return reply


def wait_until(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(autouse=True)
def robot_released(request):
    """After a test on the shared server, wait until the server has read the trainer's goodbye and
    freed the robot (it does so asynchronously), so the next test's connection is not refused as busy."""
    yield
    if "server" in request.fixturenames:
        server = request.getfixturevalue("server")
        assert wait_until(lambda: not status(server)["active"]), "the robot was not freed after the trainer left"


def test_wrong_token_is_refused(server):
    with pytest.raises(EnvError, match="wrong or missing token"):
        connect(server.address, token="not-the-token")
    with pytest.raises(EnvError, match="wrong or missing token"):
        connect(server.address, token="")


def test_second_trainer_is_refused_while_the_robot_is_in_use(server):
    first = connect(server.address)
    try:
        t0 = time.monotonic()
        with pytest.raises(EnvError, match="busy"):
            connect(server.address)
        assert time.monotonic() - t0 < 5  # refused at once, not queued behind the first trainer
        first.reset({0: ("press_button", 0)})  # the first trainer keeps the robot
        assert not isinstance(first.step({0: np.zeros((2, 4), np.float32)})[0], SlotFailure)
    finally:
        first.close()


def test_interventions_reach_the_trainer_in_the_step_info(server):
    with connect(server.address) as pool:
        pool.reset({0: ("lift_blue", 1)})
        result = pool.step({0: np.array([[2.0, 0, 0, 0], [0.1, 0, 0, 0], [0, -9.0, 0, 0]], np.float32)})[0]
        assert result.info["safety/clipped"] == 2
        assert result.info["episode_id"] >= 1


def test_trainer_going_silent_then_away_the_robot_holds(server):
    pool = connect(server.address)
    pool.reset({0: ("press_button", 2)})
    pool.step({0: np.full((3, 4), 0.2, np.float32)})
    before = status(server)["totals"]
    time.sleep(0.5)  # the trainer stops sending: the watchdog (150 ms) holds
    assert status(server)["totals"]["watchdog_holds"] == before["watchdog_holds"] + 1
    for channel in pool._channels:
        channel.framed.close()  # the trainer vanishes without a goodbye
    pool.close()
    assert wait_until(lambda: status(server)["totals"]["disconnects"] == before["disconnects"] + 1)
    assert not status(server)["active"]
    with connect(server.address, attempts=3) as again:  # and the next trainer gets the robot
        assert "image" in again.reset({0: ("press_button", 0)})[0]


def test_estop_endpoint_latches_until_reset_at_the_robot(server):
    with connect(server.address) as pool:
        pool.reset({0: ("press_button", 0)})
        assert post(server, "estop")["estop"]
        failed = pool.step({0: np.zeros((2, 4), np.float32)})[0]
        assert isinstance(failed, SlotFailure) and "e-stop engaged" in failed.reason
        assert isinstance(pool.reset({0: ("press_button", 1)})[0], SlotFailure)
        server.type("r")  # a person at the robot's console
        assert wait_until(lambda: not status(server)["estop"])
        pool.reset({0: ("press_button", 1)})
        assert pool.step({0: np.zeros((2, 4), np.float32)})[0].steps == 2
        post(server, "estop")
        post(server, "reset")  # or the operator page on the robot PC
        assert not status(server)["estop"]


def test_local_estop_by_signal_and_console(server):
    server.signal(signal.SIGUSR1)
    assert wait_until(lambda: status(server)["estop"])
    server.type("r")
    assert wait_until(lambda: not status(server)["estop"])
    server.type("e")
    assert wait_until(lambda: status(server)["estop"])
    assert "SIGUSR1" in server.wait_for("E-STOP from SIGUSR1")
    server.type("r")
    assert wait_until(lambda: not status(server)["estop"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_restart_mid_run(tmp_path):
    config = write_config(tmp_path / "robot.yaml")
    port = free_port()
    first = RobotServerProcess(config, ["--port", str(port)], env={"PUSHCUT_ENV_TOKEN": TOKEN})
    pool = connect(first.address, attempts=5)
    try:
        pool.reset({0: ("press_button", 0)})
        assert pool.step({0: np.zeros((2, 4), np.float32)})[0].steps == 2
        first.kill()  # the robot PC's server dies mid-episode
        second = RobotServerProcess(config, ["--port", str(port)], env={"PUSHCUT_ENV_TOKEN": TOKEN})
        try:
            lost = pool.step({0: np.zeros((2, 4), np.float32)})[0]
            assert isinstance(lost, SlotFailure)  # that episode is lost and counted, not hung on
            obs = pool.reset({0: ("press_button", 0)})[0]  # the pool reconnected to the new server
            assert not isinstance(obs, SlotFailure), obs
            assert pool.step({0: np.zeros((2, 4), np.float32)})[0].steps == 2
        finally:
            pool.close()
            second.stop()
    finally:
        first.kill()
