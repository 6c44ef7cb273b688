"""One function per step kind: do it to the device, then check what the device did.

Each takes (bench, params, checks), raises Skip when the device cannot do it, DeviceError
when the device misbehaves outright, and otherwise records checks and metrics. Times that
matter are the device's (records from GET /results); bench actions are placed on the device
clock with the measured offset (see client.clock_offset).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from lucida.runtime.stats import percentiles

from .client import DeviceError
from .metrics import Tally, clearing, median_thirds, overlays, window_fps
from .motion import hand
from .runner import Bench, Checks


# -- health and deploy ------------------------------------------------------------------------
def health(b: Bench, p, c: Checks) -> None:
    end = time.monotonic() + p.timeout_s
    st = b.status()
    while not (st.get("source_ok") and st.get("model")) and time.monotonic() < end:
        time.sleep(0.5)
        st = b.status()
    c.check("camera delivers frames", st.get("source_ok"), st.get("source"))
    c.check("a model is running", bool(st.get("model")), st.get("model"))
    h = b.dut.client.call("POST", "/health", timeout_s=p.timeout_s)
    c.metrics.update(health=h, delegate=st.get("delegate"), backend=st.get("backend"))
    c.check(
        "golden check",
        h.get("ok") is True,
        h.get("max_abs_error", h.get("error")),
        f"<= {h.get('atol')}" if "atol" in h else None,
    )


def resolve_bundle(b: Bench, ref: str) -> Path:
    """A bundle folder or .tar.gz: a path (scenario-relative first), a folder name in the
    device's model dirs (emulated), or a shipped bundle's name."""
    found = b.scenario.resolve(ref)
    if found is not None:
        return found
    for d in getattr(b.dut, "model_dirs", []):
        if (Path(d) / ref / "manifest.json").exists():
            return Path(d) / ref
    from lucida.models.registry import SHIPPED_DIR

    if (SHIPPED_DIR / ref / "manifest.json").exists():
        return SHIPPED_DIR / ref
    raise DeviceError(f"bundle {ref!r}: no such folder, .tar.gz or shipped bundle")


def _archive(path: Path, tmp: Path) -> bytes:
    from lucida.models import load_bundle, pack_bundle

    if path.is_dir():
        load_bundle(path)
        path = pack_bundle(path, tmp / f"{path.name}.tar.gz")
    return path.read_bytes()


def _bundle_name(path: Path) -> str:
    from lucida.models import load_bundle

    return load_bundle(path).name


def deploy(b: Bench, p, c: Checks) -> None:
    path = resolve_bundle(b, p.bundle)
    name = _bundle_name(path)
    with tempfile.TemporaryDirectory() as tmp:
        data = _archive(path, Path(tmp))
    with b.steady(overlay=p.cleared_within_ms is not None):
        t_send = b.device_now()
        answer = b.dut.client.call("POST", "/models", data, timeout_s=p.timeout_s)
        if p.cleared_within_ms is not None:
            b.settle(max(0.5, p.cleared_within_ms / 1000 + 0.3))
    b.last_bundle = path
    b.models_seen[name] = answer.get("sha256")
    c.metrics.update(answer={k: answer.get(k) for k in ("model", "sha256", "delegate", "health")})
    c.check("device accepted the bundle", answer.get("ok") is True, answer.get("model"))
    c.check(
        "golden check on the device",
        (answer.get("health") or {}).get("ok") is True,
        answer.get("health"),
    )
    st = b.status()
    active = (st.get("deployed") or {}).get("active") or ""
    c.check("recorded as the deployed bundle", Path(active).name.startswith(name), active)
    st = b.wait_status(lambda s: s.get("model") == name, 10)
    if st.get("model") == name:
        c.check("running it now", True, name)
    else:
        c.skip("running it now", f"objective {st.get('objective')} is run by {st.get('model')}")
    if p.cleared_within_ms is not None:
        swap = next(
            (
                r
                for r in b.recorder.snapshot()
                if r["kind"] == "clear_request"
                and r.get("reason") == f"model {name}"
                and r["t_ns"] >= t_send
            ),
            None,
        )
        if not c.check(
            "model switch blanked the display", swap is not None, swap and swap["reason"]
        ):
            return
        _clearing_checks(b, c, swap["t_ns"], p.cleared_within_ms, "model", model=name)


# -- turret, stage, time --------------------------------------------------------------------------
def _clearing_checks(
    b: Bench, c: Checks, t_trigger: int, limit_ms: float, mode: str = "fov", model=None
) -> None:
    b.settle(max(0.5, limit_ms / 1000 + 0.3))
    cl = clearing(b.recorder.snapshot(), t_trigger, mode, model)
    c.metrics["clearing"] = cl
    if not c.check(
        "an overlay was on display to clear",
        cl["showing_at_trigger"],
        cl["showing_at_trigger"],
        note="nothing drawn at the trigger: the clearing was not exercised",
    ):
        return
    c.at_most("overlay cleared within (ms, device clock)", cl["cleared_after_ms"], limit_ms)
    c.check(
        "no stale overlay after the clear", cl["stale_after_clear"] == 0, cl["stale_after_clear"]
    )


def objective(b: Bench, p, c: Checks) -> None:
    with b.steady(overlay=p.cleared_within_ms is not None):
        before = b.status().get("objective")
        t_trigger = b.device_now()
        how = b.dut.set_objective(p.to)
        st = b.wait_status(lambda s: s.get("objective") == p.to, p.timeout_s)
        c.metrics.update(objective_from=before, objective_to=p.to, turned_by=how)
        c.metrics["switch_s_host"] = round((b.device_now() - t_trigger) / 1e9, 2)
        c.check("daemon follows the nosepiece", st.get("objective") == p.to, st.get("objective"))
        c.metrics["model"] = st.get("model")
        if p.cleared_within_ms is not None:
            if before == p.to:
                c.skip("overlay cleared", f"already at {p.to}: the turret did not move")
                return
            _clearing_checks(b, c, t_trigger, p.cleared_within_ms)


def stage(b: Bench, p, c: Checks) -> None:
    b.need("virtual", "the stage of a real microscope is not moved by the bench")
    r = b.dut.tour({"where": list(p.where), "dwell_s": p.dwell_s, "seed": p.seed})
    b.touring = True
    c.metrics["points_um"] = r.get("points")


def wait(b: Bench, p, c: Checks) -> None:
    time.sleep(p.seconds)


# -- what is displayed ------------------------------------------------------------------------
def expect(b: Bench, p, c: Checks) -> None:
    want_truth = p.iou_min is not None or p.fov_accuracy_min is not None
    with b.recorder.capture(truth=want_truth and "virtual" in b.dut.capabilities) as got:
        time.sleep(p.seconds)
        b.settle()
    st = b.status()
    shown = [r for r in got if r["kind"] == "overlay"]
    c.metrics.update(overlays=len(shown), model=st.get("model"), objective=st.get("objective"))
    if p.min_overlays:
        c.at_least("overlays drawn", len(shown), p.min_overlays)
    c.at_most("overlays drawn", len(shown), p.max_overlays)
    if p.objective is not None:
        objs = sorted({str(r.get("objective")) for r in shown}) or [str(st.get("objective"))]
        c.check("objective", objs == [p.objective], ",".join(objs), p.objective)
    if p.model is not None:
        c.check("model", st.get("model") == p.model, st.get("model"), p.model)
    if p.delegate is not None:
        c.check("delegate", st.get("delegate") == p.delegate, st.get("delegate"), p.delegate)
    if not want_truth:
        return
    if not b.dut.has_truth:
        why = "no ground truth on this device (give --truth MASKS for a replayed slide)"
        for name, lim in (
            ("contour IoU", p.iou_min),
            ("FoV detection accuracy", p.fov_accuracy_min),
        ):
            if lim is not None:
                c.skip(name, why)
        return
    tally = Tally()
    for r in shown:
        truth = b.dut.truth_for(r)
        if truth is not None:
            tally.add(r, truth)
            b.tally.add(r, truth)
    c.metrics.update(tally.summary())
    if not c.check("frames with ground truth", tally.frames > 0, tally.frames, ">= 1"):
        return
    c.at_least("contour IoU (pooled)", tally.iou if tally.iou is not None else 0.0, p.iou_min)
    c.at_least("FoV detection accuracy", tally.fov_accuracy, p.fov_accuracy_min)


def measure(b: Bench, p, c: Checks) -> None:
    t0 = b.device_now() + 100_000_000
    total = p.windows * p.window_s
    dropped0 = b.recorder.dropped
    time.sleep(total + 0.1)
    b.settle(0.3)
    lost = b.recorder.dropped - dropped0
    recs = b.recorder.snapshot()
    fps = window_fps(recs, t0, p.window_s, p.windows)
    t1 = t0 + int(total * 1e9)
    shown = overlays(recs, t0, t1)
    lat = [(r["t_display_ns"] - r["t_capture_ns"]) / 1e6 for r in shown]
    pct = percentiles(lat, "latency_ms_", ndigits=1)
    for k, f in enumerate(fps):
        b.fps_series.append((b.t_rel(t0 + int((k + 0.5) * p.window_s * 1e9)), f, "measure"))
    med = float(np.median(fps))
    c.metrics.update(fps_windows=fps, fps_median=med, overlays=len(shown), **pct)
    c.metrics["status"] = {
        k: v
        for k, v in b.status().items()
        if k.endswith(("_p50", "_p90", "_p99")) or k.startswith("fps")
    }
    c.check("overlays drawn", len(shown) > 0, len(shown), "> 0")
    c.check("every display record received (none overwritten)", lost == 0, lost, 0)
    c.at_least("fps (median of windows)", med, p.fps_min)
    for q, lim in (
        (50, p.latency_p50_ms_max),
        (90, p.latency_p90_ms_max),
        (99, p.latency_p99_ms_max),
    ):
        c.at_most(f"latency p{q} (ms, capture->display)", pct.get(f"latency_ms_p{q}"), lim)


def soak(b: Bench, p, c: Checks) -> None:
    st0 = b.status()
    pid0 = st0.get("pid")
    t_start = b.device_now()
    end = time.monotonic() + p.seconds
    rss, fps, down, t_rss = [], [], 0, []
    last = t_start
    while time.monotonic() < end:
        time.sleep(min(p.sample_s, max(0.0, end - time.monotonic())))
        b.settle()
        now = b.device_now()
        try:
            st = b.status()
        except OSError:
            down += 1
            continue
        if st.get("pid") != pid0:
            down += 1
        dt = (now - last) / 1e9
        n = len(overlays(b.recorder.snapshot(), last, now))
        f = round(n / dt, 2) if dt > 0 else 0.0
        fps.append(f)
        rss.append(st.get("rss_mb"))
        t_rss.append((now - t_start) / 1e9)
        b.fps_series.append((b.t_rel((last + now) // 2), f, "soak"))
        last = now
    r0, r1 = median_thirds(rss)
    f0, f1 = median_thirds(fps)
    growth = None if r0 is None else round(r1 - r0, 1)
    drop = None if not f0 else round(1 - f1 / f0, 3)
    c.metrics.update(samples=len(rss), rss_mb=rss, fps=fps, rss_growth_mb=growth, fps_drop=drop)
    c.check("device stayed up (same process, always answering)", down == 0, down, "0 outages")
    if p.rss_growth_pct_max is not None:
        warm = [r for t, r in zip(t_rss, rss) if t >= p.warmup_s]
        w0, w1 = median_thirds(warm)
        pct = None if not w0 else round(100 * (w1 - w0) / w0, 2)
        c.metrics.update(rss_after_warmup_mb=[w0, w1], rss_growth_pct=pct, warmup_s=p.warmup_s)
        if pct is None:
            c.skip("memory growth (%)", f"fewer than 3 samples after the {p.warmup_s:g} s warm-up")
        else:
            c.at_most(
                f"memory growth after {p.warmup_s:g} s (%, last third vs first)",
                pct,
                p.rss_growth_pct_max,
            )
    if p.rss_growth_mb_max is not None:
        if growth is None:
            c.skip("memory growth", "fewer than 3 samples with memory figures")
        else:
            c.at_most("memory growth (MiB, last third vs first)", growth, p.rss_growth_mb_max)
    if p.fps_drop_max is not None:
        if drop is None:
            c.skip("fps drift", "fewer than 3 samples or no overlays")
        else:
            c.at_most("fps drop (fraction, last third vs first)", drop, p.fps_drop_max)
    c.at_least("fps (median of samples)", float(np.median(fps)) if fps else None, p.fps_min)


# -- faults -----------------------------------------------------------------------------------------
def fault(b: Bench, p, c: Checks) -> None:
    f = p.fault
    FAULTS[f.kind](b, f, c)


def _recovered(b: Bench, c: Checks, t_ns: int, within_s: float, what: str) -> None:
    r = b.overlay_after(t_ns, within_s)
    c.check(
        f"overlay back after {what}",
        r is not None,
        None if r is None else f"{(r['t_display_ns'] - t_ns) / 1e9:.2f} s",
        f"<= {within_s} s",
    )


def source_stall(b: Bench, f, c: Checks) -> None:
    b.need("virtual", "a real camera cannot be frozen by the bench")
    with b.steady():
        r = b.dut.client.call("POST", "/virtual", {"action": "stall", "seconds": f.seconds})
        t = r["t_ns"]
        time.sleep(f.seconds)
        if f.cleared_within_ms is not None:
            _clearing_checks(b, c, t, f.cleared_within_ms, "blank")
        _recovered(b, c, t + int(f.seconds * 1e9), f.recover_within_s, "the stall")


def source_unplug(b: Bench, f, c: Checks) -> None:
    b.need("virtual", "a real camera cannot be unplugged by the bench")
    with b.steady():
        r = b.dut.client.call("POST", "/virtual", {"action": "unplug"})
        t = r["t_ns"]
        time.sleep(f.seconds)
        st = b.status()
        c.check("status says the camera is lost", st.get("source_ok") is False, st.get("source_ok"))
        r2 = b.dut.client.call("POST", "/virtual", {"action": "replug"})
        if f.cleared_within_ms is not None:
            _clearing_checks(b, c, t, f.cleared_within_ms, "blank")
        _recovered(b, c, r2["t_ns"], f.recover_within_s, "replugging")
    c.metrics["reopens"] = b.status().get("reopens")


def serial_unplug(b: Bench, f, c: Checks) -> None:
    b.need("nosepiece", "the bench cannot pull a real serial adapter")
    with b.steady():
        before = b.status()
        t = b.device_now()
        b.dut.nosepiece.unplug()
        time.sleep(f.seconds)
        link = b.status().get("serial") or {}
        c.check(
            "status says the serial link is down",
            link.get("connected") is False,
            link.get("connected"),
        )
        b.dut.nosepiece.replug()
        t2 = b.device_now()
        if f.cleared_within_ms is not None:
            _clearing_checks(b, c, t, f.cleared_within_ms, "blank")
        st = b.wait_status(lambda s: (s.get("serial") or {}).get("connected"), f.recover_within_s)
        c.check(
            "serial link reconnected",
            (st.get("serial") or {}).get("connected") is True,
            (st.get("serial") or {}).get("connected"),
        )
        obj = before.get("objective")
        st = b.wait_status(lambda s: s.get("objective") == obj, f.recover_within_s)
        c.check("objective known again", st.get("objective") == obj, st.get("objective"), obj)
        c.metrics["serial"] = st.get("serial")
        _recovered(b, c, t2, f.recover_within_s, "replugging the serial adapter")


def serial_garbage(b: Bench, f, c: Checks) -> None:
    b.need("serial", "the bench has no serial line to the device (--serial PORT)")
    with b.steady():
        before = b.status()
        rng = np.random.default_rng(f.seed)
        noise = rng.integers(0, 256, f.bytes, dtype=np.uint8).tobytes()
        # noise, a partial command, an over-long line, more noise: none of it is a position
        half = f.bytes // 2
        data = noise[:half] + b"1OB" + b"Z" * 300 + b"\r\n" + noise[half:] + b"\r\n"
        t = b.device_now()
        b.dut.serial_write(data)
        time.sleep(1.0)
        st = b.status()
        obj = before.get("objective")
        c.check("objective unchanged", st.get("objective") == obj, st.get("objective"), obj)
        link0, link1 = before.get("serial") or {}, st.get("serial") or {}
        if link1:
            c.metrics["lines_garbage"] = [link0.get("lines_garbage"), link1.get("lines_garbage")]
            c.check("serial link still up", link1.get("connected") is True, link1.get("connected"))
        _recovered(b, c, t, f.recover_within_s, "the noise")


def edgetpu_unavailable(b: Bench, f, c: Checks) -> None:
    b.need("process", "the bench cannot unplug a real Edge TPU")
    before = b.status()
    missing = Path(tempfile.gettempdir(), "lucida-hil-no-such-libedgetpu.so.1")
    b.dut.restart(env={"LUCIDA_EDGETPU_LIB": str(missing)}, device="edgetpu")
    b.restarted()
    t = b.device_now()
    st = b.wait_status(lambda s: s.get("model"), f.recover_within_s)
    c.metrics.update(delegate=st.get("delegate"), fallback_reason=st.get("fallback_reason"))
    c.check("runs on the CPU", st.get("delegate") == "cpu", st.get("delegate"), "cpu")
    reason = st.get("fallback_reason") or ""
    c.check("says why", bool(reason), reason)
    if "no edgetpu.tflite" in reason:
        c.skip("names the missing library", "the bundle has no edgetpu.tflite: no library tried")
    elif reason:
        c.check("names the missing library", str(missing) in reason, reason[:120])
    c.check(
        "same model", st.get("model") == before.get("model"), st.get("model"), before.get("model")
    )
    _recovered(b, c, t, f.recover_within_s, "falling back to the CPU")
    b.dut.restart()
    b.restarted()
    st = b.wait_status(lambda s: s.get("model"), f.recover_within_s)
    c.check(
        "back on its own delegate", st.get("delegate") == before.get("delegate"), st.get("delegate")
    )


def _corrupt(kind: str, src: Path, tmp: Path) -> bytes:
    from lucida.models import load_bundle, pack_bundle, write_bundle

    bundle = load_bundle(src)
    folder = tmp / kind / bundle.name
    shutil.copytree(bundle.path, folder)
    if kind == "truncated":
        data = pack_bundle(folder, tmp / f"{kind}.tar.gz").read_bytes()
        return data[: len(data) // 2]
    if kind == "tampered":
        model = folder / "cpu.tflite"
        raw = bytearray(model.read_bytes())
        mid = len(raw) // 2
        raw[mid : mid + 16] = bytes(255 - x for x in raw[mid : mid + 16])
        model.write_bytes(bytes(raw))
    else:  # bad_golden: hashes verify, the golden check must not
        import json

        m = json.loads((folder / "manifest.json").read_text())
        if not m.get("golden"):
            raise DeviceError(f"bundle {bundle.name} has no golden I/O to corrupt")
        files = {n: folder / n for n in m["files"]}
        golden = np.load(folder / m["golden"]["output"])
        files[m["golden"]["output"]] = np.clip(1.0 - golden, 0, 1).astype(np.float32) + 0.25
        out = tmp / kind / "rewritten"
        write_bundle(out, m, files)
        folder = out
    return pack_bundle(folder, tmp / f"{kind}.tar.gz").read_bytes()


def corrupt_deploy(b: Bench, f, c: Checks) -> None:
    before = b.status()
    if f.bundle is not None:
        src = resolve_bundle(b, f.bundle)
    elif b.last_bundle is not None:
        src = b.last_bundle
    else:
        active = (before.get("deployed") or {}).get("active")
        if not active or not Path(active).exists():
            raise DeviceError("no bundle to corrupt: deploy one first or name it (bundle:)")
        src = Path(active)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in f.how:
            data = _corrupt(kind, src, Path(tmp))
            status, answer = b.dut.client.request("POST", "/models", data, timeout_s=120)
            msg = answer.get("error", answer) if isinstance(answer, dict) else answer
            c.metrics[f"{kind}_answer"] = [status, str(msg)[:200]]
            c.check(f"{kind} bundle refused", 400 <= status < 500, f"HTTP {status}", "4xx")
    t = b.device_now()
    st = b.status()
    c.check(
        "same model", st.get("model") == before.get("model"), st.get("model"), before.get("model")
    )
    c.check(
        "same model file",
        st.get("model_sha256") == before.get("model_sha256"),
        (st.get("model_sha256") or "")[:12],
        (before.get("model_sha256") or "")[:12],
    )
    c.check(
        "same deployed bundle",
        st.get("deployed") == before.get("deployed"),
        (st.get("deployed") or {}).get("active"),
    )
    _recovered(b, c, t, f.recover_within_s, "the refused deploys")


def _settings(b: Bench) -> dict:
    st = b.status()
    over = b.dut.client.call("POST", "/overlay", {})
    return {
        "model": st.get("model"),
        "model_sha256": st.get("model_sha256"),
        "deployed": st.get("deployed"),
        "overlay": over.get("overlay"),
        "threshold": over.get("threshold"),
        "objective": st.get("objective"),
    }


def sigkill(b: Bench, f, c: Checks) -> None:
    b.need("process", "the bench does not kill a real device's daemon")
    before = _settings(b)
    rc = b.dut.kill()
    c.check("killed by SIGKILL", rc == -9, rc, -9)
    t0 = time.monotonic()
    time.sleep(f.restart_after_s)  # systemd: Restart=on-failure, RestartSec
    b.dut.launch()
    b.restarted()
    c.metrics["ready_after_s"] = round(time.monotonic() - t0, 2)
    c.check("READY again", b.dut.alive, b.dut.alive)
    t = b.device_now()
    end = time.monotonic() + f.recover_within_s
    after = _settings(b)
    while after["objective"] != before["objective"] and time.monotonic() < end:
        time.sleep(0.2)
        after = _settings(b)
    for key in ("model", "model_sha256", "deployed", "overlay", "threshold", "objective"):
        c.check(f"same {key}", after[key] == before[key], after[key], before[key])
    _recovered(b, c, t, f.recover_within_s, "the restart")


FAULTS = {
    "source_stall": source_stall,
    "source_unplug": source_unplug,
    "serial_unplug": serial_unplug,
    "serial_garbage": serial_garbage,
    "edgetpu_unavailable": edgetpu_unavailable,
    "corrupt_deploy": corrupt_deploy,
    "sigkill": sigkill,
}


def hostile(b: Bench, p, c: Checks) -> None:
    from .hostile import run

    run(b, p, c)


HANDLERS = {
    "health": health,
    "deploy": deploy,
    "objective": objective,
    "stage": stage,
    "wait": wait,
    "expect": expect,
    "measure": measure,
    "soak": soak,
    "fault": fault,
    "hand": hand,
    "hostile": hostile,
}
