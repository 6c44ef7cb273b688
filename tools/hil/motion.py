"""The `hand` step: the stage moved as a hand does, judged from the device's own records.

The bench asks the virtual microscope (POST /virtual "hand") to follow a seeded TourPath and
rebuilds the same path here (same slide, same seed): that is the stage's ground truth, placed
on the device clock by the path's `t0_ns`. The device must find the motion in the image (the
emulated device runs with `dut.report_motion: false`, so no frame says "moving"). Checked from
GET /results: blank within one camera interval of every pan faster than the blanking speed, no
overlay from a frame whose field moved faster, overlays back after the stage settles, and slow
pans keep the overlay, shifted with the field (motion compensation).

Times are device ns; stage positions um; shifts camera px.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right

import numpy as np

from .runner import Bench, Checks


def _local_path(b: Bench, seed: int, seconds: float):
    """(TourPath, um per camera px): the path the device follows, rebuilt on the bench."""
    from lucida.runtime.virtual.camera import CameraConfig
    from lucida.runtime.virtual.scope import VirtualMicroscope
    from lucida.runtime.virtual.stage import TourPath

    d = b.scenario.dut
    scope = VirtualMicroscope(
        seed=d.seed,
        camera=CameraConfig(resolution=(d.width, d.height), fps=d.fps),
        objective=b.status().get("objective") or d.objective,
    )
    return TourPath(scope.slide, seed, duration_s=seconds), scope.um_per_px


def _capture_times(records, fps: float):
    """seq -> capture time (device ns) for any frame, interpolated between overlays' frames
    (the camera is paced at `fps`)."""
    known = sorted({(r["seq"], r["t_capture_ns"]) for r in records if r["kind"] == "overlay"})
    if len(known) < 2:
        return None
    s = np.array([k[0] for k in known], float)
    t = np.array([k[1] for k in known], float)
    period = 1e9 / fps

    def at(seq):
        seq = np.asarray(seq, float)
        inner = np.interp(seq, s, t)
        return np.where(
            seq < s[0],
            t[0] + (seq - s[0]) * period,
            np.where(seq > s[-1], t[-1] + (seq - s[-1]) * period, inner),
        )

    return at, int(s[0]), int(s[-1])


def hand(b: Bench, p, c: Checks) -> None:
    b.need("virtual", "the stage of a real microscope is not moved by the bench")
    st = b.status()
    fps = float(b.scenario.dut.fps)
    interval_ns = int(1e9 / fps)
    c.metrics["report_motion"] = b.scenario.dut.report_motion
    if b.scenario.dut.report_motion:
        c.skip("motion from the image", "dut.report_motion is true: the source reports motion")
    with b.steady():  # an overlay on display before the hand starts
        pass
    r = b.dut.client.call(
        "POST", "/virtual", {"action": "hand", "seed": p.seed, "seconds": p.seconds}
    )
    t0 = int(r["t0_ns"])
    speeds = []
    end = time.monotonic() + p.seconds + p.back_within_s  # and time to come back after
    with b.recorder.capture(truth=False) as got:  # full records: shift_px, regions
        while time.monotonic() < end:  # the device's blanking speed moves with its latency
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            speeds.append(b.status().get("blank_speed_um_s"))
        b.settle(0.5)
    b.dut.client.call("POST", "/virtual", {"action": "hold"})
    path, um_px = _local_path(b, p.seed, p.seconds)
    c.check(
        "bench and device follow the same path",
        np.allclose(path.xy[0], r.get("start_um"), atol=0.01),
        r.get("start_um"),
        [round(float(v), 3) for v in path.xy[0]],
    )
    speeds = [v for v in speeds if v]
    blank = float(np.median(speeds)) if speeds else st.get("blank_speed_um_s")
    if not c.check("device reports a blanking speed", bool(blank), blank):
        return
    fast_v, slow_v = blank * (1 + p.margin), blank * (1 - p.margin)
    c.metrics.update(
        blank_speed_um_s=round(blank, 1),
        um_per_px=um_px,
        segments=[[round(a, 2), round(z, 2), k] for a, z, k in path.segments],
    )
    t_end = t0 + int((p.seconds + p.back_within_s) * 1e9)
    before = [
        r
        for r in b.recorder.snapshot()  # what was on display when the hand started
        if r["kind"] in ("overlay", "blank") and r["t_display_ns"] < t0
    ]
    recs = [r for r in got if r["kind"] in ("overlay", "blank") and r["t_display_ns"] >= t0]
    disp = sorted(before[-1:] + recs, key=lambda r: r["t_display_ns"])
    times = [r["t_display_ns"] for r in disp]
    cap = _capture_times(recs, fps)
    n_over = sum(r["kind"] == "overlay" for r in disp)
    if not c.check(
        "overlays drawn during the hand's moves",
        cap is not None,
        n_over,
        ">= 2",
        note=f"the device says: {b.status().get('blank_reason')}",
    ):
        return
    cap_at, s_lo, s_hi = cap
    to_s = lambda ns: (ns - t0) / 1e9  # noqa: E731
    pan = path.pan_speed_um_s()

    def pos(t_ns):
        s = path.state(to_s(t_ns))
        return s.x_um, s.y_um

    def field_speed(seq):  # um/s of the field between frame seq-1 and seq (true stage)
        ta, tb = cap_at([seq - 1, seq])
        (xa, ya), (xb, yb) = pos(int(ta)), pos(int(tb))
        return math.hypot(xb - xa, yb - ya) / max((tb - ta) / 1e9, 1e-6)

    def shown_at(t_ns):
        i = bisect_right(times, t_ns) - 1
        return disp[i] if i >= 0 else None

    # 1. each onset: the first frame whose field moved faster than the blanking speed since
    # the frame before it; the display must be blank `blank_within_intervals` after its capture
    seqs = np.arange(
        int(np.floor(_seq_at(cap_at, s_lo, s_hi, t0))),
        int(np.ceil(_seq_at(cap_at, s_lo, s_hi, t_end))) + 1,
    )
    seqs = seqs[cap_at(seqs) >= t0 + interval_ns]
    fast = {int(q): field_speed(int(q)) > fast_v for q in seqs}
    onsets = [
        q
        for q in fast
        if fast[q]
        and not fast.get(q - 1, False)
        and cap_at(q) + (p.blank_within_intervals + 1) * interval_ns < times[-1]
    ]
    late = []
    for q in onsets:
        t_check = int(cap_at(q)) + int(p.blank_within_intervals * interval_ns)
        rec = shown_at(t_check)
        if rec is None or rec["kind"] != "blank":
            late.append(round(to_s(int(cap_at(q))), 2))
    c.metrics.update(onsets=len(onsets), onsets_not_blank=late)
    if c.check(
        "pans faster than the blanking speed",
        len(onsets) > 0,
        len(onsets),
        ">= 1",
        note="the path has no fast pan: choose another seed or longer seconds",
    ):
        c.check(
            f"blank within {p.blank_within_intervals:g} camera interval(s) of each onset",
            not late,
            f"{len(onsets) - len(late)}/{len(onsets)}",
            f"{len(onsets)}/{len(onsets)}",
        )
    # 2. no overlay from a frame whose field moved faster than the blanking speed
    shown = [r for r in disp if r["kind"] == "overlay" and t0 <= r["t_capture_ns"] <= t_end]
    moving = [r for r in shown if field_speed(r["seq"]) > blank]
    c.metrics.update(overlays=len(shown), overlays_from_moving_frames=len(moving))
    c.check(
        "no overlay from a frame taken while the field moved faster", not moving, len(moving), 0
    )
    # 3. after each fast pan, an overlay on a frame taken after the stage slowed, in time
    # settled: the hand stopped (or only drifts, < 0.1 x the blanking speed) for back_within_s
    quiet = int(p.back_within_s / path.dt_s)
    pan_q = np.concatenate([pan, np.zeros(quiet + 1)])  # after its end the stage stays still
    ends, was_fast = [], False
    for k in np.flatnonzero((pan_q > fast_v) | (pan_q <= 0.1 * blank)):
        if pan_q[k] > fast_v:
            was_fast = True
        elif was_fast and pan_q[k : k + quiet].max() <= 0.1 * blank:
            ends.append(int(k))
            was_fast = False
    back, missing = [], []
    for k in ends:
        if k + quiet > len(pan) + 1:
            continue  # the run ended before the overlay had its time to come back
        t_settle = t0 + int(k * path.dt_s * 1e9)
        first = next((r for r in shown if r["t_capture_ns"] >= t_settle), None)
        dt = None if first is None else (first["t_display_ns"] - t_settle) / 1e9
        (back if dt is not None and dt <= p.back_within_s else missing).append(
            round(dt, 2) if dt is not None else None
        )
    c.metrics.update(overlay_back_after_s=back, overlay_not_back=missing)
    if back or missing:
        c.check(
            f"overlay back within {p.back_within_s:g} s of the stage settling",
            not missing,
            f"{len(back)}/{len(back) + len(missing)}",
            f"{len(back) + len(missing)}",
        )
    else:
        c.skip("overlay back after settling", "no fast pan followed by a quiet stage")
    b.motion_series = _timeline(path, pan, disp, t0, t_end, blank, onsets, cap_at)
    # 4. slow pans: an overlay on display, shifted with the field
    win = int(1.0 / path.dt_s)
    fast_recent = np.convolve(pan > slow_v, np.ones(win), "full")[: len(pan)] > 0
    slow = (pan > 0) & (pan < slow_v) & ~fast_recent
    n_slow = n_shown = 0
    err_on, err_off, covered, why = [], [], [], {}
    for tau in np.arange(1.0, p.seconds, 0.02):
        k = int(tau / path.dt_s)
        if not slow[k]:
            continue
        t = t0 + int(tau * 1e9)
        n_slow += 1
        rec = shown_at(t)
        if rec is None or rec["kind"] != "overlay":
            reason = "nothing" if rec is None else rec.get("reason")
            why[reason] = why.get(reason, 0) + 1
            continue
        n_shown += 1
        if rec["t_display_ns"] < t0:
            continue
        (x1, y1), (x0, y0) = pos(rec["t_display_ns"] + interval_ns // 2), pos(rec["t_capture_ns"])
        true = (-(x1 - x0) / um_px, -(y1 - y0) / um_px)
        if math.hypot(*true) < 1.0:
            continue  # compensation is judged where an unshifted overlay would lag >= 1 px
        sx, sy = rec.get("shift_px") or (0.0, 0.0)
        err_on.append(math.hypot(true[0] - sx, true[1] - sy))
        err_off.append(math.hypot(*true))
        covered.append((sx * true[0] + sy * true[1]) / (true[0] ** 2 + true[1] ** 2))
    share = round(n_shown / n_slow, 3) if n_slow else None
    p95 = lambda e: round(float(np.percentile(e, 95)), 2) if e else None  # noqa: E731
    c.metrics.update(
        slow_pan_s=round(n_slow * 0.02, 2),
        slow_shown_share=share,
        shift_err_px_p95_on=p95(err_on),
        shift_err_px_p95_off=p95(err_off),
        slow_blank_reasons=why,
        compensation_samples=len(covered),
        shift_covers_median=round(float(np.median(covered)), 3) if covered else None,
    )
    if not n_slow:
        c.skip("overlay kept during slow pans", "the path has no slow pan after a quiet second")
        return
    c.at_least("overlay on display during slow pans (share of time)", share, p.slow_shown_min)
    if p.compensated_min is None and p.shift_err_px_max is None:
        return
    if not covered:
        c.skip("motion compensation", "no overlay drawn >= 1 px behind its field in a slow pan")
        return
    c.at_most("overlay vs its tissue (p95, camera px)", p95(err_on), p.shift_err_px_max)
    c.at_least(
        "share of the field's displacement the shift follows (median)",
        c.metrics["shift_covers_median"],
        p.compensated_min,
    )


def _seq_at(cap_at, s_lo: int, s_hi: int, t_ns: int) -> float:
    """The frame seq captured at about t_ns (inverse of cap_at, by bisection on seq)."""
    lo, hi = s_lo - 10_000, s_hi + 10_000
    for _ in range(60):
        mid = (lo + hi) / 2
        if cap_at(mid) < t_ns:
            lo = mid
        else:
            hi = mid
    return lo


def _timeline(path, pan, disp, t0: int, t_end: int, blank: float, onsets, cap_at) -> dict:
    """What the report plots (s from the hand's start): the hand's pan speed (um/s, every
    20 ms), the display (overlay/blank changes), the blanking speed and the onset frames."""
    step = max(1, int(0.02 / path.dt_s))
    t = np.arange(0, len(pan), step) * path.dt_s
    changes, last = [], None
    for r in disp:
        if r["kind"] != last and r["t_display_ns"] <= t_end:
            changes.append([round(max(0.0, (r["t_display_ns"] - t0) / 1e9), 3), r["kind"]])
            last = r["kind"]
    return {
        "t_s": np.round(t, 3).tolist(),
        "pan_um_s": np.round(pan[::step], 1).tolist(),
        "display": changes,
        "end_s": round((t_end - t0) / 1e9, 2),
        "blank_speed_um_s": round(blank, 1),
        "onsets_s": [round((float(cap_at(q)) - t0) / 1e9, 3) for q in onsets],
    }
