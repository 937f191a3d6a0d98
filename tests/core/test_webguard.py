"""pushcut.webguard: which Host and Origin values a page accepts, and a page on IPv6 loopback."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from pushcut.webguard import PageClient, PageGuard, split_host


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:7373", ("127.0.0.1", 7373)), ("LOCALHOST:80", ("localhost", 80)), ("localhost", ("localhost", None)),
    ("[::1]:7373", ("::1", 7373)), ("[::1]", ("::1", None)), ("::1", None), ("[::1]x", None), ("a:b", None),
    ("host:0", None), ("host:70000", None), ("", None), (":80", None), ("localhost:\xb2", None),
    ("localhost:\u0663", None), ("localhost:+80", None),
])
def test_split_host(value, expected):
    assert split_host(value) == expected


def test_a_loopback_page_answers_only_to_its_loopback_names_and_port():
    guard = PageGuard("127.0.0.1", 7373)
    for ok in ("127.0.0.1:7373", "localhost:7373", "[::1]:7373"):
        assert guard.host_ok(ok), ok
    for bad in ("127.0.0.1:7374", "127.0.0.1", "evil.example:7373", "127.0.0.2:7373", "[::2]:7373", None, "",
                "localhost.evil.example:7373", "0x7f000001:7373"):
        assert not guard.host_ok(bad), bad
    assert guard.origin_ok(None) and guard.origin_ok("http://localhost:7373")
    for bad in ("null", "http://evil.example:7373", "https://localhost:7373", "http://localhost:7373/x",
                "http://localhost:1", "localhost:7373"):
        assert not guard.origin_ok(bad), bad


def test_a_page_bound_elsewhere_answers_to_its_configured_host_and_a_wildcard_to_ip_literals():
    named = PageGuard("robot-pc.lab", 8080)
    assert named.host_ok("robot-pc.lab:8080") and not named.host_ok("localhost:8080")
    assert not named.host_ok("10.0.0.5:8080")
    anywhere = PageGuard("0.0.0.0", 8080)
    assert anywhere.host_ok("10.0.0.5:8080") and anywhere.host_ok("localhost:8080") and anywhere.host_ok("[fe80::1]:8080")
    assert not anywhere.host_ok("evil.example:8080")  # a name could be rebound to this machine; an IP cannot


def test_each_page_process_has_its_own_secret():
    assert PageGuard("127.0.0.1", 1).secret != PageGuard("127.0.0.1", 1).secret
    assert len(PageGuard("127.0.0.1", 1).secret) >= 32


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_the_verdict_page_works_on_ipv6_loopback():
    import threading

    from pushcut.contracts import EpisodeOutcome
    from pushcut.plugins.rewards.human import HumanJudge, HumanJudgeConfig

    judge = HumanJudge(HumanJudgeConfig(host="::1", port=0, timeout_s=10))
    try:
        url = judge.start()
        assert url.startswith("http://[::1]:")
        verdicts: list = []
        worker = threading.Thread(target=lambda: verdicts.extend(judge.judge_all(
            [EpisodeOutcome("t", "do it", 0, False, 3, frames=[np.zeros((4, 4, 3), np.uint8)])])))
        worker.start()
        client = PageClient(url)
        while not client.get("api/round")[1]["open"]:
            pass
        assert client.post("api/verdict", {"round": 1, "index": 0, "success": True})[0] == 200
        worker.join(10)
        assert verdicts == [True]
    finally:
        judge.close()
