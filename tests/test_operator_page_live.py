"""The operator page driven as a person drives it (clicks, a slider, keys) in headless Chromium,
against a daemon on the virtual microscope running the shipped lymph-s model: task buttons,
camera controls, and the banners when the field guard or the watchdog stop the outline."""

from __future__ import annotations

import json

import pytest
from browser import Page
from lucida.models import write_bundle
from lucida.models.registry import shipped_bundle
from lucida.runtime.config import parse_config
from lucida.runtime.daemon import Daemon
from test_daemon import TOKEN, call, wait_for

BANNERS = "[...document.querySelectorAll('#banners .banner')].map((b) => b.textContent).join('|')"


@pytest.fixture()
def scope_daemon(tmp_path):
    """lymph-s on the virtual microscope (320 x 180 px, 10 fps), plus a second task, "stroma",
    whose only bundle (lymph-s's graph under another name) is made for 10x."""
    lymph = shipped_bundle("lymph-s")
    m = lymph.manifest.model_dump(mode="json")
    files = {n: lymph.path / n for n in m["files"]}
    write_bundle(
        tmp_path / "more" / "stroma-s",
        dict(m, name="stroma-s", task="stroma", objectives=["10x"]),
        files,
    )
    cfg = {
        "source": {
            "type": "virtual",
            "seed": 1001,
            "fps": 10,
            "objective": "10x",
            "width": 320,
            "height": 180,
        },
        "models": {
            "task": "lymph",
            "device": "cpu",
            "num_threads": 1,
            "dirs": [str(tmp_path / "more")],
            "overrides": {"lymph": {"default": {"bundle": "lymph-s"}}},
        },
        "display": {"width": 320, "height": 180},
        "http": {"port": 0, "token": TOKEN},
        "state_dir": str(tmp_path / "state"),
        "log": {"events": str(tmp_path / "events.jsonl")},
    }
    d = Daemon(parse_config(cfg))
    d.start()
    # a still field on tumour: the default path pans, and the guard compares a field with itself
    code, _ = call(d, "POST", "/virtual", {"action": "tour", "where": "tumour", "dwell_s": 3600})
    assert code == 200
    yield d
    d.stop()


def _page(daemon, tmp_path) -> Page:
    return Page(tmp_path, f"{daemon.http.url}/#token={TOKEN}")


@pytest.mark.timeout(240)
def test_task_buttons_switch_what_the_models_find(scope_daemon, tmp_path):
    d = scope_daemon
    with _page(d, tmp_path) as page:
        page.wait("document.getElementById('s-model').textContent === 'lymph-s'")
        tasks = page.eval(
            "[...document.querySelectorAll('#tasks button')].map((b) => [b.dataset.task,"
            " b.getAttribute('aria-pressed'), b.disabled, b.title])"
        )
        assert tasks == [
            ["lymph", "true", False, "models for 10x, 20x"],
            ["stroma", "false", False, "models for 10x"],
        ]
        page.click("#tasks button[data-task=stroma]")
        page.wait("document.getElementById('s-model').textContent === 'stroma-s'")
        assert d.status()["task"] == "stroma" and d.status()["model"] == "stroma-s"
        # stroma has no model at 20x: its button says so and cannot be pressed
        page.wait("document.querySelector('[data-objective=\"20x\"]').disabled")
        assert page.eval("document.querySelector('[data-objective=\"20x\"]').title") == (
            "no model for 20x"
        )
        assert (
            page.eval(
                "document.querySelector('#tasks button[data-task=stroma]')"
                ".getAttribute('aria-pressed')"
            )
            == "true"
        )
        # the choice survives a restart: it is in settings.json beside the threshold
        saved = json.loads(d.settings_file.read_text())
        assert saved["task"] == "stroma" and saved["config_task"] == "lymph"
        page.click("#tasks button[data-task=lymph]")
        page.wait("document.getElementById('s-model').textContent === 'lymph-s'")
        page.wait("!document.querySelector('[data-objective=\"20x\"]').disabled")
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["task"] for e in events if e["event"] == "task"] == ["stroma", "lymph"]


def test_post_task_is_validated_and_needs_the_token(scope_daemon):
    d = scope_daemon
    assert wait_for(lambda: d.status()["model"] == "lymph-s", 20)
    assert call(d, "POST", "/task", {"task": "stroma"}, token=None)[0] == 401
    assert call(d, "POST", "/task", {"task": "stroma"}, token="wrong")[0] == 403
    code, body = call(d, "POST", "/task", {"task": "mitosis"})
    assert code == 400 and body["error"] == (
        "task 'mitosis': no model for it on this device; expected one of lymph, stroma"
    )
    code, body = call(d, "POST", "/task", {"task": 3})
    assert code == 400 and "'task'" in body["error"]
    code, body = call(d, "POST", "/task", {"task": "lymph", "now": True})
    assert code == 400 and "unknown key 'now'" in body["error"]
    assert d.status()["task"] == "lymph"  # nothing changed on a refused request
    code, body = call(d, "POST", "/task", {"task": "stroma"})
    assert code == 200 and body == {"task": "stroma", "model": "stroma-s"}
    code, inv = call(d, "GET", "/models")
    assert inv["task"] == "stroma" and inv["tasks"]["stroma"]["20x"] is None
    assert inv["tasks"]["lymph"]["20x"] == "lymph-s"
    # a snapshot says which model drew it, and the camera's brightness settings
    assert wait_for(lambda: d.display_state()["showing"] == "overlay", 30)
    code, snap = call(d, "POST", "/snapshot", {"case_id": "T-1"})
    assert code == 200, snap
    code, meta = call(d, "GET", f"/snapshots/{snap['id']}")
    assert meta["model"]["name"] == "stroma-s"
    assert meta["camera"]["controls"] == {"exposure_ms": 10.0, "gain": 1.0, "fps": 10.0}


@pytest.mark.timeout(300)
def test_banners_say_why_the_outline_stopped(scope_daemon, tmp_path):
    """Out of focus, overexposed (set from the page's exposure slider), stage moving, no model
    for 40x, camera stalled: each one reached on the running daemon, each one in words."""
    d = scope_daemon

    def banner(page, words, timeout_s=30):
        return page.wait(f"({BANNERS}).includes({json.dumps(words)}) && ({BANNERS})", timeout_s)

    def drawing(page):
        assert wait_for(lambda: d.display_state()["showing"] != "nothing", 30)
        page.wait(f"({BANNERS}) === ''", 30)

    with _page(d, tmp_path) as page:
        drawing(page)
        # the focus knob: the guard refuses a blurred field
        assert call(d, "POST", "/virtual", {"action": "focus", "defocus_um": 12})[0] == 200
        assert "Out of focus: no outline until the field is sharp again." in banner(
            page, "Out of focus"
        )
        assert call(d, "POST", "/virtual", {"action": "focus", "defocus_um": 0})[0] == 200
        drawing(page)

        # the camera controls this source has, and only those; brightness from the slider
        controls = page.eval(
            "[...document.querySelectorAll('#camera [data-control]')].map((c) => c.dataset.control)"
        )
        assert controls == ["exposure_ms", "gain", "fps"]  # the virtual camera has no WB/AE
        assert page.eval("document.getElementById('camera').hidden") is False
        assert page.text("#cam-exposure_ms-value") == "10"
        page.eval(
            "(() => { const e = document.getElementById('cam-exposure_ms'); e.value = 80;"
            " e.dispatchEvent(new Event('change')); })()"
        )
        assert wait_for(lambda: d.pipeline.source.camera.exposure_ms == 80.0)
        assert "Overexposed: too many clipped pixels; lower the light or exposure." in banner(
            page, "Overexposed"
        )
        page.wait("document.getElementById('cam-exposure_ms-value').textContent === '80'")
        steps = []
        for _ in range(12):  # "[" steps the brightness down (x 0.8), as the slider does
            before = d.pipeline.source.camera.exposure_ms
            page.key("[")
            assert wait_for(lambda b=before: d.pipeline.source.camera.exposure_ms < b)
            steps.append(d.pipeline.source.camera.exposure_ms)
            if steps[-1] <= 10:
                break
        assert steps[:3] == [64.0, 51.0, 41.0] and steps[-1] <= 10
        drawing(page)

        # a hand on the stage: nothing drawn while it moves
        assert call(d, "POST", "/virtual", {"action": "hand", "seconds": 60, "seed": 3})[0] == 200
        assert "Stage moving: the outline comes back when the slide rests." in banner(
            page, "Stage moving"
        )
        assert call(d, "POST", "/virtual", {"action": "hold"})[0] == 200

        # an objective with no model
        assert call(d, "POST", "/objective", {"objective": "40x"})[0] == 200
        assert "No model for 40x: nothing is drawn at this objective." in banner(
            page, "No model for 40x"
        )
        assert call(d, "POST", "/objective", {"objective": "10x"})[0] == 200

        # a frozen camera
        assert call(d, "POST", "/virtual", {"action": "stall", "seconds": 8})[0] == 200
        assert "Camera stalled: no new frames. Check the camera and its cable." in banner(
            page, "Camera stalled"
        )


@pytest.mark.timeout(120)
def test_a_source_without_camera_controls_shows_none(tmp_path):
    from conftest import daemon_config, replay_frames

    frames = replay_frames(tmp_path / "frames", 2)
    source = {"type": "replay", "path": str(frames), "fps": 10.0, "width": 128, "height": 96}
    cfg = daemon_config(tmp_path, shipped_bundle("lymph-s"), source, TOKEN)
    cfg["models"] = {"task": "lymph", "device": "cpu", "num_threads": 1, "dirs": []}
    d = Daemon(parse_config(cfg))
    d.pipeline.set_objective("10x")
    d.start()
    try:
        assert d.status()["camera_controls"] == {}
        with _page(d, tmp_path) as page:
            page.wait("document.getElementById('s-model').textContent !== '-'")
            assert page.eval("document.getElementById('camera').hidden") is True
            assert page.eval("document.querySelectorAll('#camera [data-control]').length") == 0
    finally:
        d.stop()
