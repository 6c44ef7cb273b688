"""`models.preload`: a bundle per objective, each on Edge TPUs of its own, switched without loading.

Devices are the fake delegate library (tests/fake_edgetpu.c) in pass-through mode: each "device"
is a real CPU interpreter standing in; FAKE_EDGETPU_LOG records every delegate created, i.e.
every interpreter built on a device.
"""

from __future__ import annotations

import numpy as np
import pytest
from lucida.models import Registry, write_bundle
from lucida.runtime.config import ModelsConfig
from lucida.runtime.models import ModelSelector


@pytest.fixture()
def registry(tiny_bundle, tmp_path):
    """Bundles tiny-10x (objective 10x) and tiny-20x (20x), both with an edgetpu.tflite."""
    folder = tmp_path / "bundles"
    for obj in ("10x", "20x"):
        m = tiny_bundle.manifest.model_dump(mode="json")
        m.update(name=f"tiny-{obj}", objectives=[obj])
        files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
        files["edgetpu.tflite"] = files["cpu.tflite"]
        write_bundle(folder / f"tiny-{obj}", m, files)
    return Registry(search_dirs=[folder], config={})


@pytest.fixture()
def opens(fake_tpu_env):
    """Four fake devices usb:0..3; returns a function listing the devices opened so far."""
    log = fake_tpu_env("usb:0,usb:1,usb:2,usb:3")

    def opened() -> list[str]:
        if not log.exists():
            return []
        return [w.split("=", 1)[1] for line in log.read_text().splitlines() for w in line.split()
                if w.startswith("device=")]  # fmt: skip

    return opened


def _frame(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (150, 200, 3), np.uint8)


def test_each_objective_keeps_its_own_device_and_a_switch_builds_no_interpreter(registry, opens):
    sel = ModelSelector(
        registry=registry, task="test", device=["usb:0", "usb:1"], num_threads=1, preload=True
    )
    try:
        assert sel.preload(["20x", "10x", None]) == ["tiny-10x", "tiny-20x"]
        assert sel.placement == {"tiny-10x": ["usb:0"], "tiny-20x": ["usb:1"]}
        assert sel.placement_note == ""
        assert sorted(opens()) == ["usb:0", "usb:1"]  # one interpreter per device, at start
        at10, at20 = sel.for_objective("10x"), sel.for_objective("20x")
        assert at10.engine.info.delegate == "edgetpu:usb:0"
        assert at20.engine.info.delegate == "edgetpu:usb:1"
        interpreters = (at10.engine.interpreter, at20.engine.interpreter)
        want = {o: a.engine.infer(_frame(), um_per_px=1.0).probs for o, a in
                (("10x", at10), ("20x", at20))}  # fmt: skip
        for turn in ["10x", "20x"] * 4:  # turns of the nosepiece
            active = sel.for_objective(turn)
            got = active.engine.infer(_frame(), um_per_px=1.0).probs
            assert np.array_equal(got, want[turn])
        assert (sel.for_objective("10x").engine, sel.for_objective("20x").engine) == (
            at10.engine,
            at20.engine,
        )
        assert (at10.engine.interpreter, at20.engine.interpreter) == interpreters
        assert sorted(opens()) == ["usb:0", "usb:1"]  # nothing was opened or rebuilt
    finally:
        sel.close()


def test_without_preload_every_bundle_opens_every_device(registry, opens):
    """What preload changes: otherwise both bundles share both devices (each device then holds
    two models and reloads its on-chip cache on every switch)."""
    sel = ModelSelector(registry=registry, task="test", device=["usb:0", "usb:1"], num_threads=1)
    try:
        sel.preload(["10x", "20x"])
        assert sel.placement == {}
        assert sorted(opens()) == ["usb:0", "usb:0", "usb:1", "usb:1"]
        for obj in ("10x", "20x"):
            assert sel.for_objective(obj).engine.info.delegate == "edgetpu:usb:0,usb:1"
    finally:
        sel.close()


def test_fewer_devices_than_bundles_says_so_and_loads_on_the_shared_device(registry, opens):
    sel = ModelSelector(
        registry=registry, task="test", device=["usb:0"], num_threads=1, preload=True
    )
    try:
        assert sel.preload(["10x", "20x"]) == ["tiny-10x", "tiny-20x"]
        assert sel.placement == {}
        assert "2 bundles (tiny-10x, tiny-20x) but 1 Edge TPU(s) in models.device (usb:0)" in (
            sel.placement_note
        )
        assert "every bundle loads on the shared device(s)" in sel.placement_note
        assert opens() == ["usb:0", "usb:0"]
        for obj in ("10x", "20x"):
            assert sel.for_objective(obj).engine.info.delegate == "edgetpu:usb:0"
    finally:
        sel.close()


def test_devices_are_dealt_out_in_turn_and_auto_names_none(registry):
    bundles = [registry.get("tiny-10x"), registry.get("tiny-20x")]
    three = ModelSelector(registry=registry, device=["usb:0", "usb:1", "pci:0"], preload=True)
    assert three.place(bundles) == {"tiny-10x": ["usb:0", "pci:0"], "tiny-20x": ["usb:1"]}
    one_bundle = ModelSelector(registry=registry, device=["usb:0", "usb:1"], preload=True)
    assert one_bundle.place(bundles[:1]) == {} and one_bundle.placement_note == ""
    auto = ModelSelector(registry=registry, device="auto", preload=True)
    assert auto.place(bundles) == {}
    assert "0 Edge TPU(s) in models.device (none)" in auto.placement_note


def test_config_option_reaches_the_selector(tiny_bundle, tmp_path):
    from conftest import daemon_config
    from lucida.runtime.config import parse_config
    from lucida.runtime.daemon import Daemon

    assert ModelsConfig().preload is False
    source = {"type": "replay", "path": str(tmp_path), "fps": 5, "width": 64, "height": 64}
    cfg = daemon_config(tmp_path, tiny_bundle, source, "tok")
    cfg["models"].update(preload=True, device=["usb:0", "usb:1"])
    assert Daemon(parse_config(cfg)).models.preload_devices is True
