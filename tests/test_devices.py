"""Several Edge TPUs (runtime.devices) and the timed fake Edge TPU (tests/fake_edgetpu.c).

Devices are the fake delegate library: in pass-through mode it claims no ops, so each "device" is
a real CPU interpreter standing in; in timed mode (a SIMULATION) it claims the whole graph, sleeps
per invoke and writes output byte j = input byte j * in_bytes / out_bytes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from lucida.runtime.api import _device_metrics
from lucida.runtime.backends import select_backend
from lucida.runtime.config import ModelsConfig
from lucida.runtime.devices import MultiEngine, build_engine
from lucida.runtime.engine import Engine
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError


@pytest.fixture()
def fake_tpus(fake_tpu_env):
    """Three fake devices usb:0..2 in pass-through mode; returns the create log."""
    return fake_tpu_env("usb:0,usb:1,usb:2")


def _frame(seed=0, size=(200, 150)):
    """An RGB frame that the tiny bundle (64x64 tiles, stride 48, 1 um/px) cuts into 4x3 tiles."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)


@pytest.mark.parametrize("timed", [False, True], ids=["cpu-standing-in", "timed-simulation"])
def test_tiles_are_stitched_identically_on_1_2_and_3_devices(
    tpu_bundle, fake_tpus, monkeypatch, timed
):
    if timed:
        monkeypatch.setenv("FAKE_EDGETPU_INVOKE_MS", "1")
    frames = [_frame(s) for s in range(3)]
    one = Engine(tpu_bundle, device="usb:0", num_threads=1)
    assert len(one.plan(200, 150).tiles) == 12
    want = [one.infer(f, um_per_px=1.0).probs for f in frames]
    if not timed:  # pass-through: the CPU computed the model, as without any delegate
        cpu = Engine(tpu_bundle, device="cpu", num_threads=1)
        assert np.array_equal(want[0], cpu.infer(frames[0], um_per_px=1.0).probs)
    for specs in (["usb:0", "usb:1"], ["usb:0", "usb:1", "usb:2"]):
        multi = MultiEngine(tpu_bundle, specs, num_threads=1)
        try:
            for f, w in zip(frames, want):
                got = multi.infer(f, um_per_px=1.0).probs
                assert got.dtype == w.dtype and np.array_equal(got, w)  # bit for bit
            # the pipeline's path: the tiles' input tensors made ahead, spread the same way
            ahead = multi.input_tensors(multi.resample(frames[0], 1.0))
            assert np.array_equal(multi.infer_input(ahead).probs, want[0])
            stats = multi.device_stats()
            assert [s["device"] for s in stats] == specs
            assert sum(s["invokes"] for s in stats) == 48 and multi.cpu_tiles == 0
            assert all(s["state"] == "ok" and s["errors"] == 0 for s in stats)
            assert multi.info.delegate == "edgetpu:" + ",".join(specs)
            multi.close()  # a replaced engine: a frame still running on it finishes
            assert np.array_equal(multi.infer(frames[0], um_per_px=1.0).probs, want[0])
        finally:
            multi.close()


def test_timed_device_output_is_a_deterministic_function_of_the_input(
    tpu_bundle, fake_tpus, monkeypatch
):
    monkeypatch.setenv("FAKE_EDGETPU_INVOKE_MS", "1")
    e = Engine(tpu_bundle, device="usb:0", num_threads=1)
    x = _frame(5, (64, 64))
    it = e.interpreter
    it.set_tensor(e._in["index"], x[None])
    it.invoke()
    out = it.get_tensor(e._out["index"]).ravel()
    flat = x.ravel()
    want = flat[(np.arange(out.size, dtype=np.int64) * flat.size) // out.size]
    assert np.array_equal(out.view(np.uint8), want)


def test_timed_device_sleeps_per_invoke_without_using_the_cpu(tpu_bundle, fake_tpus, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_INVOKE_MS", "1")  # the option below wins over the env
    backend = select_backend()
    from lucida.runtime.edgetpu import library_path

    d = backend.load_delegate(library_path(), {"device": "usb:1", "sim_invoke_ms": "30"})
    it = backend.Interpreter(
        model_path=str(tpu_bundle.file("edgetpu.tflite")), experimental_delegates=[d]
    )
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], _frame(1, (64, 64))[None])
    it.invoke()
    t0, c0 = time.monotonic_ns(), time.thread_time_ns()
    for _ in range(3):
        it.invoke()
    wall, cpu = time.monotonic_ns() - t0, time.thread_time_ns() - c0
    assert wall >= 3 * 30e6  # a sleep lasts at least as long as asked
    assert cpu < wall / 3  # sleeping: the host CPU stays free
    assert fake_tpus.read_text().splitlines()[-1] == "create device=usb:1 sim_invoke_ms=30"


def test_pass_through_mode_runs_the_real_model(tpu_bundle, fake_tpus):
    e = Engine(tpu_bundle, device="usb:2", num_threads=1)
    assert e.info.delegate == "edgetpu:usb:2" and e.health_check()["ok"]


def test_golden_recorded_on_a_device_is_what_every_device_is_checked_against(
    tpu_bundle, fake_tpus, capsys
):
    """`lucida golden` on an Edge TPU (here the fake one, passing through to the CPU: not an
    Edge TPU's rounding) records edgetpu.tflite's own golden output; a multi-device engine checks
    every device against it, the CPU engine keeps cpu.tflite's."""
    import json

    from lucida.models import load_bundle
    from lucida.runtime.engine import HealthCheckError
    from lucida.tools.cli import main
    from lucida.tools.toolchain.golden import add_model_golden

    capsys.readouterr()
    assert main(["golden", str(tpu_bundle.path), "--device", "usb:0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model_file"] == "edgetpu.tflite" and r["delegate"] == "edgetpu:usb:0"
    assert r["difference_from_cpu"] == 0.0  # pass-through: the CPU's own output
    b = load_bundle(tpu_bundle.path)
    assert b.manifest.golden.outputs == {"edgetpu.tflite": "golden_output.edgetpu.npy"}
    multi = MultiEngine(b, ["usb:0", "usb:1"], num_threads=1)
    try:
        h = multi.health_check()
    finally:
        multi.close()
    assert h["ok"] and set(h["devices"]) == {"usb:0", "usb:1"}
    assert all(d["model_file"] == "edgetpu.tflite" for d in h["devices"].values())
    # edgetpu.tflite's golden moved away from what the devices give: every device fails
    b = add_model_golden(b, "edgetpu.tflite", np.clip(b.golden()[1] + 0.3, 0, 1))
    multi = MultiEngine(b, ["usb:0", "usb:1"], num_threads=1)
    try:
        with pytest.raises(HealthCheckError, match="usb:0, usb:1"):
            multi.health_check()
    finally:
        multi.close()
    assert Engine(b, device="cpu", num_threads=1).health_check()["ok"]  # cpu.tflite's own


@pytest.mark.parametrize("failing", [0, 1], ids=["first-device", "second-device"])
def test_a_failing_device_is_dropped_while_the_others_keep_serving(
    tpu_bundle, fake_tpus, monkeypatch, failing
):
    monkeypatch.setenv("FAKE_EDGETPU_INVOKE_MS", "1")
    want = Engine(tpu_bundle, device="usb:0", num_threads=1).infer(_frame(), um_per_px=1.0).probs
    monkeypatch.setenv("FAKE_EDGETPU_FAIL_DEVICE", f"usb:{failing}")
    monkeypatch.setenv("FAKE_EDGETPU_FAIL_AFTER", "5")
    multi = MultiEngine(tpu_bundle, ["usb:0", "usb:1"], num_threads=1, rebuild_delay_s=0.01)
    monkeypatch.setenv("FAKE_EDGETPU_DEVICES", f"usb:{1 - failing},usb:2")  # no rebuild possible
    try:
        for _ in range(6):  # 72 tiles: the device fails on its 6th invoke, mid-frame
            assert np.array_equal(multi.infer(_frame(), um_per_px=1.0).probs, want)
        deadline = time.monotonic() + 10
        while multi.device_stats()[failing]["state"] != "dropped" and time.monotonic() < deadline:
            time.sleep(0.01)
        bad, good = multi.device_stats()[failing], multi.device_stats()[1 - failing]
        assert bad["state"] == "dropped" and bad["errors"] == 1 and bad["invokes"] == 5
        assert "simulated device failure" in bad["last_error"]
        assert f"no Edge TPU answered at usb:{failing}" in bad["rebuild_error"]
        assert good["state"] == "ok" and good["invokes"] == 72 - 5 and multi.cpu_tiles == 0
        assert np.array_equal(multi.infer(_frame(), um_per_px=1.0).probs, want)
    finally:
        multi.close()


def test_a_failing_device_is_rebuilt_and_serves_again(tpu_bundle, fake_tpus, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_INVOKE_MS", "1")
    monkeypatch.setenv("FAKE_EDGETPU_FAIL_DEVICE", "usb:1")
    monkeypatch.setenv("FAKE_EDGETPU_FAIL_AFTER", "3")  # every new delegate fails after 3 invokes
    multi = MultiEngine(tpu_bundle, ["usb:0", "usb:1"], num_threads=1, rebuild_delay_s=0.01)
    try:
        deadline = time.monotonic() + 10
        while multi.device_stats()[1]["rebuilds"] < 1 and time.monotonic() < deadline:
            multi.infer(_frame(), um_per_px=1.0)
        multi.close()  # no rebuild may start between the stats and the log read below
        bad = multi.device_stats()[1]
        assert bad["rebuilds"] >= 1 and bad["errors"] >= 1 and bad["state"] != "dropped"
        log = fake_tpus.read_text().splitlines()
        assert log.count("create device=usb:1") == 1 + bad["rebuilds"]
    finally:
        multi.close()


def test_with_no_device_left_the_cpu_serves(tpu_bundle, fake_tpus, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_INVOKE_MS", "1")
    monkeypatch.setenv("FAKE_EDGETPU_FAIL_AFTER", "0")  # every device fails its first invoke
    multi = MultiEngine(tpu_bundle, ["usb:0", "usb:1"], num_threads=1, rebuild_delay_s=0.01)
    monkeypatch.setenv("FAKE_EDGETPU_DEVICES", "")  # and none comes back
    try:
        got = multi.infer(_frame(), um_per_px=1.0).probs
        cpu = Engine(tpu_bundle, device="cpu", num_threads=1).infer(_frame(), um_per_px=1.0).probs
        assert np.array_equal(got, cpu)  # the real model on the CPU, not the simulation
        assert multi.cpu_tiles == 12
        assert [s["state"] for s in multi.device_stats()] == ["dropped", "dropped"]
    finally:
        multi.close()


def test_all_means_every_device_found(tpu_bundle, fake_tpus, monkeypatch):
    e = build_engine(tpu_bundle, "all", num_threads=1)
    try:
        assert isinstance(e, MultiEngine) and e.info.extra["devices"] == ["usb:0", "usb:1", "usb:2"]
    finally:
        e.close()
    monkeypatch.setenv("FAKE_EDGETPU_DEVICES", "usb:0")
    single = build_engine(tpu_bundle, "all", num_threads=1)
    assert not isinstance(single, MultiEngine) and single.info.delegate == "edgetpu:usb:0"


def test_config_takes_a_device_list_or_all():
    assert ModelsConfig(device=["usb:0", "usb:1"]).device == ["usb:0", "usb:1"]
    assert ModelsConfig(device="all").device == "all"
    for bad in (["cpu"], [], "usb:x"):
        with pytest.raises(ValidationError):
            ModelsConfig(device=bad)


def test_metrics_report_each_device():
    devices = [
        {"device": "usb:0", "state": "ok", "invokes": 7, "errors": 0, "rebuilds": 0,
         "invoke_ms_p50": 5.1, "invoke_ms_p90": 5.2, "invoke_ms_p99": 5.3},
        {"device": "usb:1", "state": "dropped", "invokes": 3, "errors": 2, "rebuilds": 1,
         "invoke_ms_p50": 5.0, "invoke_ms_p90": 5.0, "invoke_ms_p99": 5.0},
    ]  # fmt: skip

    class Collector:
        def collect(self):
            return _device_metrics(devices)

    reg = CollectorRegistry()
    reg.register(Collector())
    text = generate_latest(reg).decode()
    assert 'lucida_device_invokes_total{device="usb:0"} 7.0' in text
    assert 'lucida_device_errors_total{device="usb:1"} 2.0' in text
    assert 'lucida_device_up{device="usb:1"} 0.0' in text
    assert 'lucida_device_invoke_ms{device="usb:0",quantile="0.99"} 5.3' in text


def test_pipeline_reports_each_device_and_cpu_per_stage(tpu_bundle, fake_tpus, monkeypatch):
    from lucida.overlay.compose import ARComposer
    from lucida.runtime.models import ModelSelector
    from lucida.runtime.pipeline import Optics, Pipeline
    from lucida.runtime.sources import ReplaySource

    monkeypatch.setenv("FAKE_EDGETPU_INVOKE_MS", "1")
    models = ModelSelector(bundle=tpu_bundle, device=["usb:0", "usb:1"], num_threads=1)
    source = ReplaySource([_frame(s) for s in range(3)], fps=60, objective="10x")
    p = Pipeline(source, models, ar=ARComposer((200, 150)), optics_for=lambda o: Optics(1.0))
    p.start()
    try:
        deadline = time.monotonic() + 20
        while p.stats.counts["displayed"] < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        st = p.status()
    finally:
        p.stop()
        models.for_objective("10x").engine.close()
    assert st["delegate"] == "edgetpu:usb:0,usb:1"
    assert [d["device"] for d in st["devices"]] == ["usb:0", "usb:1"]
    assert all(d["invokes"] > 0 and d["invoke_ms_p50"] >= 1.0 for d in st["devices"])
    cpu = p.stats.cpu_ms_per_frame()
    assert all(cpu[k] > 0 for k in ("preprocess", "infer_host", "contours", "render"))
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"), abs=1e-3)


def test_bench_refuses_several_devices_without_the_simulation(capsys):
    from lucida.tools.cli import main

    assert main(["bench", "pipeline", "--devices", "2", "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "--devices needs --sim-edgetpu-ms" in err and "Traceback" not in err


def test_a_bundle_without_edgetpu_model_runs_on_the_cpu_with_the_reason(tiny_bundle, fake_tpus):
    multi = MultiEngine(tiny_bundle, ["usb:0", "usb:1"], num_threads=1)
    try:
        assert multi.info.delegate == "cpu" and multi.info.model_file == "cpu.tflite"
        assert "no Edge TPU of usb:0, usb:1 answered" in multi.info.fallback_reason
        assert all("has no edgetpu.tflite" in s["last_error"] for s in multi.device_stats())
        cpu = Engine(tiny_bundle, device="cpu", num_threads=1).infer(_frame(), um_per_px=1.0)
        assert np.array_equal(multi.infer(_frame(), um_per_px=1.0).probs, cpu.probs)
        assert not fake_tpus.exists()  # no device was opened
    finally:
        multi.close()


def test_daemon_reports_each_device_in_status_and_metrics(
    tpu_bundle, fake_tpus, monkeypatch, tmp_path
):
    from conftest import daemon_config, replay_frames
    from lucida.runtime.config import parse_config
    from lucida.runtime.daemon import Daemon
    from test_daemon import call, wait_for

    monkeypatch.setenv("FAKE_EDGETPU_INVOKE_MS", "1")
    frames = replay_frames(tmp_path / "frames", 4, size=(200, 150))
    source = {"type": "replay", "path": str(frames), "fps": 20, "width": 200, "height": 150}
    cfg = daemon_config(tmp_path, tpu_bundle, source, "tok")
    cfg["models"]["device"] = ["usb:0", "usb:1"]
    d = Daemon(parse_config(cfg))
    d.pipeline.set_objective("10x")
    d.start()
    try:
        assert wait_for(lambda: d.pipeline.stats.counts["processed"] > 3, timeout=30)
        code, st = call(d, "GET", "/status", token="tok")
        assert code == 200 and st["delegate"] == "edgetpu:usb:0,usb:1"
        assert [x["device"] for x in st["devices"]] == ["usb:0", "usb:1"]
        assert all(x["state"] == "ok" and x["invokes"] > 0 for x in st["devices"])
        code, text = call(d, "GET", "/metrics", token="tok")
        assert code == 200 and 'lucida_device_up{device="usb:1"} 1.0' in text
        assert 'lucida_device_invokes_total{device="usb:0"}' in text
    finally:
        d.stop()
