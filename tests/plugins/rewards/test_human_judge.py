"""The human success detector: its page in a real headless browser (frames shown, a click and a
key reach judge_all as verdicts), the timeout that leaves episodes unjudged, refused requests."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from pushcut.contracts import EpisodeOutcome
from pushcut.errors import ConfigError
from pushcut.pluginmanager import get_plugin_manager
from pushcut.plugins.rewards.human import HumanJudge, HumanJudgeConfig
from pushcut.testing import SuccessDetectorContract
from pushcut.webguard import SECRET_HEADER, PageClient

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def outcome(i: int, frames: int = 5) -> EpisodeOutcome:
    """Episode ``i``: its frames are dark except the last ones, which are COLOURS[i]."""
    shots = [np.full((24, 32, 3), 10 * k, np.uint8) for k in range(frames - 2)]
    shots += [np.full((24, 32, 3), COLOURS[i], np.uint8)] * 2
    return EpisodeOutcome(f"task_{i}", f"do thing {i}", i, env_success=False, length=10 + i, frames=shots)


def judge_in_thread(judge, outcomes):
    verdicts = []
    thread = threading.Thread(target=lambda: verdicts.extend(judge.judge_all(outcomes)))
    thread.start()
    return thread, verdicts


def test_registered_as_a_success_detector():
    entry = get_plugin_manager().success_detectors.get("human")
    assert entry.config_class is HumanJudgeConfig and entry.plugin == "human"


def test_page_shows_the_last_frames_and_verdicts_reach_the_trainer(browser_page):
    judge = HumanJudge(HumanJudgeConfig(port=0, timeout_s=30, frames_shown=3))
    try:
        thread, verdicts = judge_in_thread(judge, [outcome(i) for i in range(3)])
        page = browser_page
        page.goto(judge.start())
        page.wait_for_selector("#episode-2 img")
        assert "3 of 3 episode(s) left" in page.inner_text("#status")
        assert "do thing 1" in page.inner_text("#episode-1")
        for i in range(3):
            imgs = page.locator(f"#episode-{i} img")
            assert imgs.count() == 3  # frames_shown of the 5
            page.wait_for_function(f"[...document.querySelectorAll('#episode-{i} img')].every(im => im.complete "
                                   "&& im.naturalWidth === 32)")
            last_pixel = page.evaluate(f"""() => {{
                const im = document.querySelectorAll('#episode-{i} img')[2];
                const c = document.createElement('canvas'); c.width = im.naturalWidth; c.height = im.naturalHeight;
                const g = c.getContext('2d'); g.drawImage(im, 0, 0);
                return Array.from(g.getImageData(5, 5, 1, 1).data.slice(0, 3)); }}""")
            assert tuple(last_pixel) == COLOURS[i]
        page.click("#episode-0 .success-button")  # a click ...
        page.wait_for_selector("#episode-0.success")
        page.keyboard.press("f")  # ... and keys, on the next unjudged episode
        page.wait_for_selector("#episode-1.failure")
        page.keyboard.press("s")
        thread.join(10)
        assert not thread.is_alive()
        assert verdicts == [True, False, True]
        page.wait_for_function("document.getElementById('status').textContent.includes('closed')")
    finally:
        judge.close()


def test_an_operator_who_never_answers_leaves_episodes_unjudged():
    judge = HumanJudge(HumanJudgeConfig(port=0, timeout_s=0.3))
    try:
        assert judge.judge_all([outcome(0), outcome(1)]) == [None, None]
    finally:
        judge.close()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    """A verdict as the page's own buttons send it (with the page's secret)."""
    client = PageClient(url)
    return client.request("POST", "api/verdict", body, {"Content-Type": "application/json",
                                                        SECRET_HEADER: client.secret})


def test_partial_answers_late_and_malformed_verdicts():
    judge = HumanJudge(HumanJudgeConfig(port=0, timeout_s=1.0))
    try:
        url = judge.start()
        thread, verdicts = judge_in_thread(judge, [outcome(0), outcome(1)])
        with urllib.request.urlopen(url + "api/round", timeout=5) as reply:
            while not json.load(reply)["open"]:
                reply = urllib.request.urlopen(url + "api/round", timeout=5)
        assert _post(url, json.dumps({"round": 1, "index": 1, "success": False}).encode())[0] == 200
        assert _post(url, b"not json")[0] == 400
        assert _post(url, json.dumps({"round": 1, "index": 7, "success": True}).encode())[0] == 400
        assert _post(url, json.dumps({"round": 1, "index": 0, "success": "yes"}).encode())[0] == 400
        thread.join(5)
        assert verdicts == [None, False]  # the unanswered one is unjudged, never a failure
        code, reply = _post(url, json.dumps({"round": 1, "index": 0, "success": True}).encode())
        assert code == 409 and "closed" in reply["error"]
    finally:
        judge.close()


def test_config_validation():
    with pytest.raises(ConfigError, match="loopback.*ssh -L"):
        HumanJudgeConfig(host="0.0.0.0")
    with pytest.raises(ConfigError, match="timeout_s must be > 0"):
        HumanJudgeConfig(timeout_s=0)


class TestHumanJudgeContract(SuccessDetectorContract):
    """The contract suite, with an operator that answers over HTTP what the env said."""

    @pytest.fixture
    def detector(self):
        judge = HumanJudge(HumanJudgeConfig(port=0, timeout_s=20, show_env_success=True))
        url, stop = judge.start(), threading.Event()

        def answer():
            answered = set()
            while not stop.is_set():
                with urllib.request.urlopen(url + "api/round", timeout=5) as reply:
                    state = json.load(reply)
                if state["open"] and state["round"] not in answered:
                    for ep in state["episodes"]:
                        body = {"round": state["round"], "index": ep["index"], "success": ep["env_success"]}
                        _post(url, json.dumps(body).encode())
                    answered.add(state["round"])
                time.sleep(0.02)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        yield judge
        stop.set()
        thread.join(5)
        judge.close()


def test_forged_verdicts_are_refused_and_record_nothing():
    """Every way a request that is not the page's own button could post a verdict: refused, and the
    episode stays unjudged."""
    import http.client

    judge = HumanJudge(HumanJudgeConfig(port=0, timeout_s=1.5))
    try:
        url = judge.start()
        client = PageClient(url)
        thread, verdicts = judge_in_thread(judge, [outcome(0)])
        while not client.get("api/round")[1]["open"]:
            time.sleep(0.01)
        own = url.split("//")[1].rstrip("/")
        body = json.dumps({"round": 1, "index": 0, "success": True}).encode()
        good = {"Host": own, "Content-Type": "application/json", SECRET_HEADER: client.secret,
                "Content-Length": str(len(body))}
        forged = {
            "text/plain without the secret": ({"Host": own, "Content-Type": "text/plain",
                                               "Content-Length": str(len(body))}, body, 403),
            "a foreign Origin": ({**good, "Origin": "http://evil.example"}, body, 403),
            "a rebound Host": ({**good, "Host": "evil.example"}, body, 403),
            "a wrong secret": ({**good, SECRET_HEADER: "x" * 43}, body, 403),
            "a form content type": ({**good, "Content-Type": "text/plain"}, body, 415),
            "a negative Content-Length": ({**good, "Content-Length": "-5"}, b"", 400),
            "a Content-Length over 64 KiB": ({**good, "Content-Length": str(1 << 20)}, b"", 413),
        }
        for what, (headers, data, expected) in forged.items():
            conn = http.client.HTTPConnection(*own.rsplit(":", 1), timeout=5)
            try:
                conn.putrequest("POST", "/api/verdict", skip_host=True, skip_accept_encoding=True)
                for key, value in headers.items():
                    conn.putheader(key, value)
                conn.endheaders(data or None)
                assert conn.getresponse().status == expected, what
            finally:
                conn.close()
        for path in ("/", "/api/round"):  # a rebinding site reads neither the secret nor the episodes
            conn = http.client.HTTPConnection(*own.rsplit(":", 1), timeout=5)
            conn.putrequest("GET", path, skip_host=True)
            conn.putheader("Host", "evil.example")
            conn.endheaders()
            assert conn.getresponse().status == 403
            conn.close()
        thread.join(5)
        assert verdicts == [None]
    finally:
        judge.close()
