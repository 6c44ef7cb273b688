"""Runs a scenario against a device: steps in order, each with checks and a verdict.

Verdicts: passed (every check held), failed (a check did not, or the device misbehaved),
skipped (this device cannot do the step, the device is out of service after a failed health
check, or --fail-fast stopped the run) and error (the bench itself broke). A skipped step is
never counted as passed; the run passes only when nothing failed or errored.
"""

from __future__ import annotations

import logging
import platform
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from lucida.runtime.stats import percentiles

from .client import DeviceError, Recorder
from .dut import Dut
from .metrics import Tally, latencies_ms
from .scenario import Scenario, Step

log = logging.getLogger(__name__)


class Skip(Exception):
    """The step cannot run on this device (the message says why)."""


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not checked (skipped), with `note` saying why
    value: object = None
    limit: object = None
    note: str = ""


@dataclass
class StepResult:
    index: int
    name: str
    kind: str
    verdict: str  # passed / failed / skipped / error
    message: str = ""
    started_s: float = 0.0
    duration_s: float = 0.0
    checks: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


class Checks:
    """Collects a step's checks and metrics; `verdict()` sums them up."""

    def __init__(self):
        self.items: list[Check] = []
        self.metrics: dict = {}

    def check(self, name: str, ok: bool, value=None, limit=None, note: str = "") -> bool:
        """Record a check; `note` explains a failure and is dropped when the check passes."""
        self.items.append(Check(name, bool(ok), value, limit, "" if ok else note))
        return bool(ok)

    def at_most(self, name: str, value, limit) -> bool:
        if limit is None:
            return True
        ok = value is not None and value <= limit
        return self.check(name, ok, value, f"<= {limit}")

    def at_least(self, name: str, value, limit) -> bool:
        if limit is None:
            return True
        ok = value is not None and value >= limit
        return self.check(name, ok, value, f">= {limit}")

    def skip(self, name: str, why: str) -> None:
        self.items.append(Check(name, None, note=why))

    def verdict(self) -> tuple[str, str]:
        failed = [c for c in self.items if c.ok is False]
        if failed:
            return "failed", "; ".join(_describe(c) for c in failed)
        done = [c for c in self.items if c.ok]
        if self.items and not done:
            return "skipped", "; ".join(f"{c.name}: {c.note}" for c in self.items)
        skipped = [c for c in self.items if c.ok is None]
        extra = f" ({len(skipped)} check(s) skipped: {skipped[0].note})" if skipped else ""
        return "passed", f"{len(done)} check(s) passed{extra}"


def _describe(c: Check) -> str:
    text = f"{c.name}: {c.value}"
    if c.limit is not None:
        text += f" (want {c.limit})"
    return text + (f" - {c.note}" if c.note else "")


class Bench:
    """The run: a scenario, a device, what was recorded and the series the report plots."""

    def __init__(self, scenario: Scenario, dut: Dut, fail_fast: bool = False, echo=None):
        self.scenario, self.dut, self.fail_fast = scenario, dut, fail_fast
        self.echo = echo or (lambda line: None)
        self.recorder: Recorder | None = None
        self.offset_ns = 0
        self.offset_unc_ns = 0
        self.t0_dev = 0
        self.results: list[StepResult] = []
        self.out_of_service: str | None = None
        self.last_bundle = None  # path of the last bundle deployed by a step
        self.tally = Tally()
        self.fps_series: list[tuple[float, float, str]] = []  # (t s, fps, step)
        self.rss_series: list[tuple[float, float]] = []  # (t s, MiB)
        self.identity: dict = {}
        self.models_seen: dict = {}
        self.touring = False  # a stage step set the virtual stage touring
        self.restarts: list[float] = []  # t (s) when the daemon was restarted by a step
        self.motion_series: dict = {}  # a hand step's timeline (tools/hil/motion.py)

    # -- clock -----------------------------------------------------------------------------
    def sync_clock(self) -> None:
        self.offset_ns, self.offset_unc_ns = self.dut.client.clock_offset()

    def device_now(self) -> int:
        """The device's monotonic clock now (ns), estimated from the host's."""
        return time.monotonic_ns() + self.offset_ns

    def t_rel(self, t_dev_ns: int) -> float:
        return round((t_dev_ns - self.t0_dev) / 1e9, 2)

    def settle(self, seconds: float = 0.0) -> None:
        """Sleep, then make sure the recorder has seen the device clock pass now."""
        if seconds > 0:
            time.sleep(seconds)
        target = self.device_now()
        self.recorder.poll()
        self.recorder.wait_device_time(target, timeout_s=10)

    # -- helpers steps use ------------------------------------------------------------------
    def status(self) -> dict:
        st = self.dut.client.status()
        if st.get("model"):
            self.models_seen[st["model"]] = st.get("model_sha256")
        if st.get("rss_mb") is not None and self.t0_dev:
            self.rss_series.append((self.t_rel(self.device_now()), st["rss_mb"]))
        return st

    def wait_status(self, pred, timeout_s: float) -> dict:
        """GET /status until pred(status) holds or timeout_s passes; the last status."""
        end = time.monotonic() + timeout_s
        st = self.status()
        while not pred(st) and time.monotonic() < end:
            time.sleep(0.2)
            st = self.status()
        return st

    def restarted(self) -> None:
        """A step restarted the daemon: records start again, the plots mark it."""
        self.recorder.restarted()
        self.restarts.append(self.t_rel(self.device_now()))

    def await_overlay(self, timeout_s: float = 15.0, streak: int = 3) -> bool:
        """Wait until the display steadily shows overlays: the last `streak` display records
        are overlays and the latest was drawn within the last 0.5 s (device clock)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.recorder.poll()
            disp = [r for r in self.recorder.snapshot()[-50:] if r["kind"] in ("overlay", "blank")]
            last = disp[-streak:]
            if (
                len(last) == streak
                and all(r["kind"] == "overlay" for r in last)
                and self.device_now() - last[-1]["t_display_ns"] < 500_000_000
            ):
                return True
            time.sleep(0.05)
        return False

    @contextmanager
    def steady(self, overlay: bool = True):
        """Hold a touring virtual stage still while a trigger is tested (so the overlay it must
        clear is not cleared by a stage jump first), wait for an overlay, resume the tour after.
        Yields whether an overlay is on display."""
        held = self.touring and "virtual" in self.dut.capabilities
        if held:
            self.dut.client.call("POST", "/virtual", {"action": "hold"})
        try:
            yield self.await_overlay() if overlay else False
        finally:
            if held:
                self.dut.resume_tour()

    def overlay_after(self, t_capture_ns: int, timeout_s: float) -> dict | None:
        """The first overlay drawn on a frame captured after t_capture_ns (device clock)."""
        return self.recorder.wait_for(
            lambda r: r["kind"] == "overlay" and r["t_capture_ns"] > t_capture_ns, timeout_s
        )

    def need(self, capability: str, why: str) -> None:
        if capability not in self.dut.capabilities:
            raise Skip(f"{self.dut.kind} device: {why}")

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict:
        from . import steps

        t_start = time.time()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        setup_error = None
        try:
            self.dut.start()
            self.recorder = Recorder(self.dut.client).start()
            self.sync_clock()
            self.t0_dev = self.device_now()
            self.identity = self._identity()
        except (OSError, ValueError) as exc:
            setup_error = f"device setup failed: {exc}"
        self.echo(
            f"lucida hil: {self.scenario.name} on {self.dut.kind} device "
            f"({len(self.scenario.steps)} steps)"
        )
        try:
            for step in self.scenario.steps:
                res = self._run_step(step, steps.HANDLERS[step.kind], setup_error)
                self.results.append(res)
                self.echo(
                    f"  [{res.verdict.upper():7}] {res.name} ({res.duration_s:.1f} s): {res.message}"
                )
            if setup_error is None:
                try:
                    self.identity = self._identity()
                except OSError:
                    pass
        finally:
            if self.recorder is not None:
                self.recorder.stop()
            self.dut.close()
        return self._report(started, time.time() - t_start, setup_error)

    def _run_step(self, step: Step, handler, setup_error: str | None) -> StepResult:
        res = StepResult(
            step.index,
            step.name,
            step.kind,
            "skipped",
            params=step.params.model_dump(mode="json"),
            started_s=self.t_rel(self.device_now()) if self.t0_dev else 0.0,
        )
        earlier_failed = any(r.verdict in ("failed", "error") for r in self.results)
        if setup_error:  # the first step carries the error, the others were not run
            res.message = setup_error if not self.results else "not run: device setup failed"
            res.verdict = "error" if not self.results else "skipped"
            return res
        if self.out_of_service:
            res.message = f"device out of service: {self.out_of_service}"
            return res
        if self.fail_fast and earlier_failed:
            res.message = "not run (--fail-fast after a failed step)"
            return res
        t0 = time.monotonic()
        checks = Checks()
        try:
            handler(self, step.params, checks)
            res.verdict, res.message = checks.verdict()
            if not checks.items:
                res.verdict, res.message = "passed", "done"
        except Skip as exc:
            res.verdict, res.message = "skipped", str(exc)
        except (DeviceError, OSError, ValueError) as exc:
            res.verdict, res.message = "failed", str(exc)
        except Exception as exc:  # a bench bug: reported, the run goes on
            log.debug("step %s", step.name, exc_info=True)
            res.verdict = "error"
            res.message = f"bench error: {exc!r} " + traceback.format_exc(limit=-2).strip()
        res.duration_s = round(time.monotonic() - t0, 2)
        res.checks = [asdict(c) for c in checks.items]
        res.metrics = checks.metrics
        if step.kind == "health" and res.verdict == "failed":
            self.out_of_service = f"health check failed ({res.message})"
        return res

    def _identity(self) -> dict:
        st = self.status()
        return {
            "kind": self.dut.kind,
            "url": self.dut.client.url,
            "host": st.get("host"),
            "machine": st.get("machine"),
            "backend": st.get("backend"),
            "delegate": st.get("delegate"),
            "fallback_reason": st.get("fallback_reason"),
            "model": st.get("model"),
            "model_sha256": st.get("model_sha256"),
            "deployed": st.get("deployed"),
            "source": st.get("source"),
            "versions": st.get("versions"),
            "bench_host": platform.node(),
            "clock_offset_ms": round(self.offset_ns / 1e6, 3),
            "clock_uncertainty_ms": round(self.offset_unc_ns / 1e6, 3),
        }

    def _report(self, started: str, duration_s: float, setup_error: str | None) -> dict:
        counts = {
            v: sum(r.verdict == v for r in self.results)
            for v in ("passed", "failed", "skipped", "error")
        }
        ok = setup_error is None and counts["failed"] == 0 and counts["error"] == 0
        records = self.recorder.snapshot() if self.recorder else []
        lat = latencies_ms(records)
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "scenario_file": str(self.scenario.path) if self.scenario.path else None,
            "started": started,
            "duration_s": round(duration_s, 1),
            "verdict": "passed" if ok else "failed",
            "counts": counts,
            "setup_error": setup_error,
            "device": {**self.identity, "models_seen": self.models_seen},
            "steps": [asdict(r) for r in self.results],
            "series": {
                "latency_ms": [round(x, 2) for x in lat],
                "latency_percentiles_ms": percentiles(lat, ndigits=1),
                "fps": [list(x) for x in self.fps_series],
                "rss_mb": [list(x) for x in self.rss_series],
                "restarts_s": self.restarts,
                "iou_per_objective": self.tally.summary()["iou_per_objective"],
                "records_seen": len(records),
                "records_dropped": self.recorder.dropped if self.recorder else 0,
                "motion": self.motion_series,
            },
        }
