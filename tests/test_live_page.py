"""The live-view page in a real browser (Debian's headless Chromium) against a loopback daemon."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from test_daemon import TOKEN, daemon, wait_for  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium(tmp_path, *args, timeout=60):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make system-deps installs it)")
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_page_shows_live_status_from_the_daemon(daemon, tmp_path):  # noqa: F811
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    r = chromium(tmp_path, "--virtual-time-budget=4000", "--dump-dom", daemon.http.url + "/")
    dom = r.stdout
    assert 'id="s-model">tiny<' in dom, r.stderr[-2000:]
    assert 'id="s-objective">10x<' in dom
    assert "camera-lucida: tiny at 10x" in dom  # the title the script set


@pytest.mark.timeout(120)
def test_page_screenshot_shows_the_stream(daemon, tmp_path):  # noqa: F811
    import cv2

    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    shot = tmp_path / "page.png"
    chromium(
        tmp_path,
        "--virtual-time-budget=4000",
        "--window-size=1280,720",
        f"--screenshot={shot}",
        daemon.http.url + "/#token=" + TOKEN,  # the stream needs the token (issue 20)
    )
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (720, 1280)
    # the live image area (top-left, inside <main>) is not the page's flat background
    assert img[80:300, 20:400].std() > 5
