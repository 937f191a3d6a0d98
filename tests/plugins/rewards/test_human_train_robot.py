"""End to end: `pushcut train` runs GRPO against `pushcut robot serve` (sim driver, tabletop) on
loopback, and every reward comes from a person's clicks on the human judge page — here a real
headless browser clicking success on even and failure on odd episodes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest
import yaml

from pushcut.plugins.envs.real.launch import RobotServerProcess

ROBOT = {"env": {
    "type": "real",
    "driver": {"type": "sim", "env": {"type": "tabletop", "tasks": ["press_button"], "video_size": 64}},
    "safety": {"workspace_low": [-0.28, -0.25, 0.02], "workspace_high": [0.28, 0.22, 0.25], "watchdog_ms": 2000,
               "max_episode_steps": 8},
    "control_hz": 200.0,
}}


def run_config(run_dir, address: str) -> dict:
    return {
        "run_dir": str(run_dir), "seed": 0,
        "env": {"type": "real"},
        "policy": {"type": "tiny", "chunk_size": 4, "action_dim": 4},
        "success": {"type": "human", "port": 0, "timeout_s": 120, "frames_shown": 2},
        "algo": {"group_size": 2},
        "rollout": {"transport": {"type": "socket", "addresses": [address]}, "envs_per_worker": 1, "max_steps": 8},
        "train": {"iterations": 2, "batch_size": 1, "max_sample_rounds": 1, "minibatch_size": 2, "eval_every": 0,
                  "save_every": 0, "eval_at_start": False, "torch_threads": 1, "lr": 1e-4},
        "eval": {"max_init_states": 1, "videos_per_task": 0},
    }


def operator(page, url: str, stop: threading.Event, clicks: list[tuple[int, int, bool]]) -> None:
    """Judge every round the page shows: success for even, failure for odd episodes."""
    page.goto(url)
    seen = set()
    while not stop.is_set():
        try:
            state = page.evaluate("() => fetch('/api/round').then(r => r.json())")
        except Exception:
            if stop.wait(2.0):  # the trainer finished and took its page with it
                return
            raise
        if state["open"] and state["round"] not in seen:
            page.wait_for_selector(f"#episode-{len(state['episodes']) - 1}")
            page.wait_for_function("document.getElementById('status').textContent.includes('round "
                                   f"{state['round']}:')")
            for ep in state["episodes"]:
                ok = ep["index"] % 2 == 0
                page.click(f"#episode-{ep['index']} .{'success' if ok else 'failure'}-button")
                page.wait_for_selector(f"#episode-{ep['index']}.{'success' if ok else 'failure'}")
                clicks.append((state["round"], ep["index"], ok))
            seen.add(state["round"])
        time.sleep(0.1)


@pytest.mark.slow
def test_train_against_robot_serve_with_the_browser_as_operator(tmp_path, browser_page):
    (tmp_path / "robot.yaml").write_text(yaml.safe_dump(ROBOT))
    with RobotServerProcess(tmp_path / "robot.yaml", ["--port", "0"]) as robot:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump(run_config(tmp_path / "run", robot.address)))
        train = subprocess.Popen([sys.executable, "-m", "pushcut.cli", "train", str(config)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        url_found = threading.Event()
        url: list[str] = []

        def pump():
            for line in train.stderr:
                lines.append(line)
                m = re.search(r"verdict page at (http://\S+)", line)
                if m:
                    url.append(m.group(1))
                    url_found.set()

        threading.Thread(target=pump, daemon=True).start()
        assert url_found.wait(240), "".join(lines)
        stop, clicks = threading.Event(), []
        try:
            worker_error: list[BaseException] = []
            # playwright's sync API must stay on the thread that made the page: drive it here
            done = threading.Thread(target=lambda: (train.wait(), stop.set()), daemon=True)
            done.start()
            try:
                operator(browser_page, url[0], stop, clicks)
            except BaseException as exc:  # noqa: BLE001 - report with the trainer's output below
                worker_error.append(exc)
            rc = train.wait(300)
        finally:
            if train.poll() is None:
                train.kill()
        out = train.stdout.read()
        assert not worker_error, f"{worker_error[0]!r}\n{''.join(lines)}"
        assert rc == 0, "".join(lines[-40:])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl = [m for m in metrics if "actor/pg_loss" in m]
    assert len(rl) == 2  # two GRPO iterations ran
    # each round's two episodes got one success and one failure from the browser: every group mixed, kept
    assert all(m["rollout/success_rate"] == 0.5 for m in rl), rl
    assert {(r, i) for r, i, _ in clicks} >= {(1, 0), (1, 1), (2, 0), (2, 1)}
    # the robot's interventions reach the trainer's metrics, summed over each round's episodes
    for m in rl:
        assert {"rollout/safety/clipped", "rollout/safety/estops"} <= set(m), sorted(m)
        assert m["rollout/safety/estops"] == 0
    assert "session from" in robot.output and out
