"""The robot's operator page and the human verdict page attacked the way a hostile site open in the
operator's browser would: a real headless chromium loads a page from another origin (another local
port) that fires every request a browser lets a foreign page send — no-cors text/plain POSTs, a
form post, a guessed secret header, a read of the page — at both pages. Nothing may change."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml

from pushcut.contracts import EpisodeOutcome
from pushcut.plugins.envs.real.launch import RobotServerProcess
from pushcut.plugins.rewards.human import HumanJudge, HumanJudgeConfig
from pushcut.webguard import PageClient

ATTACK = """<!doctype html><html><head><title>attacking</title></head><body>
<form id="form" method="POST" action="{target}{path}" enctype="text/plain" target="sink">
<input name='{{"round": 1, "index": 0, "success": true, "x": "' value='"}}'></form>
<iframe name="sink"></iframe>
<script>
const target = "{target}", path = "{path}";
const body = JSON.stringify({{round: 1, index: 0, success: true}});
const results = [];
async function attack() {{
  results.push(await fetch(target + path, {{method: 'POST', mode: 'no-cors', headers: {{'Content-Type': 'text/plain'}},
    body}}).then(() => 'sent', e => 'blocked'));
  results.push(await fetch(target + path, {{method: 'POST', mode: 'no-cors', body}}).then(() => 'sent', e => 'blocked'));
  results.push(await fetch(target + path, {{method: 'POST', headers: {{'Content-Type': 'application/json',
    'X-Pushcut-Page': 'guessed'}}, body}}).then(() => 'sent', e => 'blocked'));
  results.push(await fetch(target).then(r => r.text()).then(t => 'read ' + t.length, e => 'unreadable'));
  document.getElementById('form').submit();
  await new Promise(r => setTimeout(r, 500));
  document.title = 'done ' + results.join(',');
}}
attack();
</script></body></html>"""


class AttackSite:
    """A page on another origin (its own local port) that attacks ``target`` + ``path``."""

    def __init__(self, target: str, path: str) -> None:
        html = ATTACK.format(target=target, path=path).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def run(self, page) -> str:
        page.goto(self.url)
        page.wait_for_function("document.title.startsWith('done')", timeout=20000)
        return page.title()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_foreign_page_cannot_release_the_estop_or_confirm(browser_page, tmp_path):
    config = tmp_path / "robot.yaml"
    config.write_text(yaml.safe_dump({"env": {"type": "real", "driver": {"type": "replay", "image_size": 16},
                                              "operator_port": 0, "confirm_reset": False}}))
    proc = RobotServerProcess(config, ["--port", "0"])
    sites = []
    try:
        operator = PageClient(proc.operator_url)
        assert operator.post("estop")[0] == 200
        for path in ("reset", "confirm"):
            site = AttackSite(proc.operator_url, path)
            sites.append(site)
            title = site.run(browser_page)
            assert "unreadable" in title, title  # the page and its secret stay unreadable to the foreign origin
            assert operator.get("status")[1]["estop"], f"a foreign page's POST to /{path} released the e-stop"
        browser_page.goto(proc.operator_url)  # the operator's own page still works
        browser_page.click("#reset")
        deadline = time.monotonic() + 5
        while operator.get("status")[1]["estop"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not operator.get("status")[1]["estop"]
    finally:
        for site in sites:
            site.close()
        proc.stop()


def test_a_foreign_page_cannot_forge_a_verdict(browser_page):
    judge = HumanJudge(HumanJudgeConfig(port=0, timeout_s=4))
    site = None
    try:
        url = judge.start()
        frame = np.zeros((8, 8, 3), np.uint8)
        verdicts: list = []
        worker = threading.Thread(target=lambda: verdicts.extend(judge.judge_all(
            [EpisodeOutcome("t", "do it", 0, False, 3, frames=[frame])])))
        worker.start()
        client = PageClient(url)
        deadline = time.monotonic() + 5
        while not client.get("api/round")[1]["open"] and time.monotonic() < deadline:
            time.sleep(0.02)
        site = AttackSite(url, "api/verdict")
        assert "unreadable" in site.run(browser_page)
        worker.join(10)
        assert verdicts == [None]  # no verdict reached the trainer: the episode stays unjudged
    finally:
        if site is not None:
            site.close()
        judge.close()
