"""The operator page in headless Chromium against a loopback daemon: DOM and screenshots.

Set LUCIDA_PAGE_SHOTS=DIR to keep the screenshots (docs/operator-*.jpg are the same four views of
`lucida run` on examples/virtual.yaml, see docs/operator.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import pytest
from test_daemon import call, daemon, wait_for  # noqa: F401  (fixture)
from test_live_page import chromium

WIDTHS = {1366: 860, 768: 1700}


def dom(daemon, tmp_path, width=1366, hash_=""):  # noqa: F811
    r = chromium(
        tmp_path,
        "--virtual-time-budget=5000",
        f"--window-size={width},{WIDTHS.get(width, 900)}",
        "--dump-dom",
        daemon.http.url + "/" + hash_,
    )
    return r.stdout.split("<script>")[0]  # the rendered DOM, not the script's text


def button(html: str, objective: str) -> str:
    m = re.search(rf'<button[^>]*data-objective="{objective}"[^>]*>', html)
    assert m, html[-3000:]
    return m.group(0)


@pytest.mark.timeout(180)
def test_page_has_big_choices_plain_labels_and_research_label(daemon, tmp_path):  # noqa: F811
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    html = dom(daemon, tmp_path)
    assert 'id="s-model">tiny<' in html and 'id="s-objective">10x<' in html
    assert ">Research use only<" in html
    assert 'aria-pressed="true"' in button(html, "10x")
    assert "disabled" not in button(html, "20x")
    forty = button(html, "40x")  # the tiny model is made for 10x and 20x only
    assert "disabled" in forty and 'title="no model for 40x"' in forty
    assert re.search(r'id="threshold-value"[^>]*>0\.\d\d<', html)  # the slider says its value
    assert 'id="s-accel">CPU<' in html and "ms typical" in html
    tasks = html.split('id="tasks"')[1].split("</fieldset>")[0]
    assert 'aria-pressed="true"' in tasks and ">test<" in tasks  # the task running now
    assert 'id="classes" hidden' in html  # single-class model: no class boxes
    assert 'id="camera" hidden' in html  # a folder of images has no camera controls
    assert 'data-layout="side"' in html
    assert '<div class="banner' not in html  # drawing: nothing to explain


@pytest.mark.timeout(180)
def test_banners_say_why_nothing_is_drawn(daemon, tmp_path):  # noqa: F811
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    call(daemon, "POST", "/overlay", {"enabled": False})
    assert wait_for(lambda: daemon.display_state()["reason"] is not None)
    assert "Outline switched off." in dom(daemon, tmp_path)
    call(daemon, "POST", "/overlay", {"enabled": True})
    call(daemon, "POST", "/objective", {"objective": "40x"})
    assert wait_for(lambda: call(daemon, "GET", "/status")[1]["model"] is None)
    html = dom(daemon, tmp_path)
    assert "No model for 40x: nothing is drawn at this objective." in html
    assert 'aria-pressed="true"' in button(html, "40x")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("width", sorted(WIDTHS))
@pytest.mark.parametrize("view", ["preview", "ar"])
def test_screenshots_at_two_widths(daemon, tmp_path, width, view):  # noqa: F811
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    height = WIDTHS[width]
    shot = tmp_path / "page.png"
    hash_ = "#ar" if view == "ar" else ""
    chromium(
        tmp_path,
        "--virtual-time-budget=5000",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        daemon.http.url + "/" + hash_,
    )
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (height, width)
    html = dom(daemon, tmp_path, width, hash_)
    assert f'data-layout="{"side" if width > 900 else "stacked"}"' in html
    keep = os.environ.get("LUCIDA_PAGE_SHOTS")
    if keep:
        out = Path(keep) / f"operator-{view}-{width}.jpg"
        cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 82])
