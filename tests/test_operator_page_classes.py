"""The operator page's class check boxes for a multi-class model, in headless Chromium."""

from __future__ import annotations

import re

import pytest
from conftest import daemon_config
from test_any_model import _write_png, gleason_bundle, gleason_scene, made  # noqa: F401
from test_daemon import TOKEN, call, wait_for
from test_live_page import chromium

pytestmark = pytest.mark.tf


def _boxes(daemon, tmp_path) -> dict:
    html = chromium(
        tmp_path,
        "--virtual-time-budget=5000",
        "--window-size=1366,900",
        "--dump-dom",
        daemon.http.url + "/",
    ).stdout.split("<script>")[0]
    field = re.search(r'<fieldset id="classes"[^>]*>.*?</fieldset>', html, re.S)
    assert field and "hidden" not in field.group(0)[:40], html[-2000:]
    return {
        m.group(2): "checked" in m.group(1)
        for m in re.finditer(r'<input([^>]*)data-cls="([^"]+)"[^>]*>', field.group(0))
    }


@pytest.mark.timeout(240)
def test_page_shows_a_check_box_per_class_and_follows_the_toggles(
    gleason_bundle,  # noqa: F811
    tmp_path,
):
    from lucida.runtime.config import parse_config
    from lucida.runtime.daemon import Daemon

    frames = tmp_path / "frames"
    frames.mkdir()
    _write_png(frames / "0.png", gleason_scene())
    source = {"type": "replay", "path": str(frames), "fps": 10.0, "width": 128, "height": 96}
    daemon = Daemon(parse_config(daemon_config(tmp_path, gleason_bundle, source, TOKEN)))
    daemon.pipeline.set_objective("10x")
    daemon.start()
    try:
        assert wait_for(lambda: daemon.pipeline.classes(), 20)
        assert _boxes(daemon, tmp_path) == {"GP3": True, "GP4": True, "GP5": True}
        code, _ = call(daemon, "POST", "/overlay", {"classes": {"GP4": False}})
        assert code == 200
        assert _boxes(daemon, tmp_path) == {"GP3": True, "GP4": False, "GP5": True}
    finally:
        daemon.stop()
