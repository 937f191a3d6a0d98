"""A real headless browser (Debian's chromium driven by playwright) for the human-judge page, the
robot's operator page and the attacks on both (tests/plugins/rewards, tests/plugins/envs/real)."""

from __future__ import annotations

import os
import shutil

import pytest


def chromium_path() -> str | None:
    for name in (os.environ.get("PUSHCUT_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture
def browser_page():
    """A fresh page of a headless chromium; skipped (with the fix) when playwright or chromium is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: "
                                   "pip install -c constraints.txt playwright (scripts/setup.sh does)")
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary: apt-get install chromium (scripts/setup.sh does)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        try:
            yield browser.new_page()
        finally:
            browser.close()
