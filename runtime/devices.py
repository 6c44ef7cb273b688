"""Several Edge TPUs for one bundle: one interpreter per device, a frame's tiles spread over them.

`models.device: [usb:0, usb:1]` (or `all`) gives a MultiEngine: the tiles of a frame go to one
worker thread per device, each with its own delegate and interpreter (an Engine on that device),
taking the next tile as soon as it is free; outputs are stitched by tile index, so the heatmap is
the same whichever device ran a tile. A device whose invoke fails is rebuilt (a new delegate and
interpreter, with back-off) while the others keep serving; one that cannot be rebuilt is dropped.
The CPU interpreter runs tiles only when no device is left.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import replace

import numpy as np
from lucida.models import Bundle

from .backends import Backend, select_backend
from .edgetpu import list_edge_tpus
from .engine import Engine, EngineError, HealthCheckError
from .retry import Backoff
from .stats import percentiles_ms
from .tiling import stitch_into

log = logging.getLogger(__name__)


def build_engine(
    bundle: Bundle,
    device: str | list[str] | tuple = "auto",
    backend: str | Backend | None = None,
    num_threads: int | None = None,
) -> Engine:
    """An Engine for one device spec; a MultiEngine for a list of specs or "all" (when two or
    more devices answer). "all" with one device found is that device; with none, "auto"."""
    if not isinstance(device, (list, tuple)) and device != "all":
        return Engine(bundle, device=device, backend=backend, num_threads=num_threads)
    be = backend if isinstance(backend, Backend) else select_backend(backend)
    specs = device_specs(device, be)
    if len(specs) >= 2:
        return MultiEngine(bundle, specs, backend=be, num_threads=num_threads)
    return Engine(bundle, device=specs[0] if specs else "auto", backend=be, num_threads=num_threads)


def device_specs(
    device: str | list[str] | tuple, backend: str | Backend | None = None
) -> list[str]:
    """The Edge TPUs a `models.device` value names: the list itself, every one found for "all",
    the one spec for "usb:N"/"pci:N"; none for "auto", "edgetpu" or "cpu"."""
    if isinstance(device, (list, tuple)):
        return list(device)
    if device == "all":
        be = backend if isinstance(backend, Backend) else select_backend(backend)
        return [t.spec for t in list_edge_tpus(be)]
    return [device] if device.startswith(("usb:", "pci:")) else []


class DeviceSlot:
    """One device: its engine, state ("ok", "rebuilding", "dropped") and counters.

    invoke_ns: recent invoke() times (ns) on this device; host_cpu_ns: worker-thread CPU time
    spent outside invoke (tensor copies, dequantization), cumulative.
    """

    def __init__(self, spec: str):
        self.spec = spec
        self.engine: Engine | None = None
        self.state = "starting"
        self.invokes = self.errors = self.rebuilds = 0
        self.last_error = ""  # the last invoke failure (or why the device did not open)
        self.rebuild_error = ""  # why the last rebuild attempt failed
        self.invoke_ns: deque[int] = deque(maxlen=4096)
        self.host_cpu_ns = 0

    def stats(self) -> dict:
        """What /status and /metrics show for this device."""
        return {
            "device": self.spec,
            "state": self.state,
            "invokes": self.invokes,
            "errors": self.errors,
            "rebuilds": self.rebuilds,
            "last_error": self.last_error,
            "rebuild_error": self.rebuild_error,
            **percentiles_ms(np.array(self.invoke_ns), "invoke_ms"),
        }


class _Job:
    """The tiles of one call: outputs by index, and how many are still missing."""

    def __init__(self, n: int):
        self.outs: list = [None] * n
        self.left = n
        self.cond = threading.Condition()

    def done(self, i: int, out: np.ndarray) -> None:
        with self.cond:
            self.outs[i] = out
            self.left -= 1
            if not self.left:
                self.cond.notify_all()


class MultiEngine(Engine):
    """One bundle on several devices (specs like "usb:0"); runs like an Engine.

    The Engine part is the bundle's CPU interpreter: it plans tiles, resamples, checks the model
    against the manifest, and runs tiles only when every device was dropped.
    max_rebuilds: attempts to rebuild a failed device before dropping it; rebuild_delay_s: the
    first back-off delay (doubling).
    """

    def __init__(
        self,
        bundle: Bundle,
        devices: list[str],
        backend: str | Backend | None = None,
        num_threads: int | None = None,
        max_rebuilds: int = 3,
        rebuild_delay_s: float = 0.5,
    ):
        if len(set(devices)) != len(devices):
            raise EngineError(f"models.device lists a device twice: {devices}")
        super().__init__(bundle, device="cpu", backend=backend, num_threads=num_threads)
        self.max_rebuilds, self.rebuild_delay_s = max_rebuilds, rebuild_delay_s
        self.slots = [DeviceSlot(spec) for spec in devices]
        self.cpu_tiles = 0  # tiles run on the CPU because no device was left
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()
        self._cpu_lock = threading.Lock()
        for slot in self.slots:
            try:
                slot.engine = self._open_device(slot.spec)
                slot.state = "ok"
            except EngineError as exc:
                slot.state, slot.last_error = "dropped", str(exc)
                log.warning("Edge TPU %s not used: %s", slot.spec, exc)
        up = [s.spec for s in self.slots if s.state == "ok"]
        self.info = replace(
            self.info,
            delegate="edgetpu:" + ",".join(up) if up else "cpu",
            model_file="edgetpu.tflite" if up else self.info.model_file,
            model_sha256=bundle.sha256("edgetpu.tflite") if up else self.info.model_sha256,
            fallback_reason="" if up else "no Edge TPU of " + ", ".join(devices) + " answered",
            extra={**self.info.extra, "devices": list(devices)},
        )
        self._lead_lock = threading.Lock()  # the first device is served by the calling thread
        self._workers = [
            threading.Thread(target=self._work, args=(s,), name=f"lucida-{s.spec}", daemon=True)
            for s in self.slots[1:]
        ]
        for t in self._workers:
            t.start()

    # -- devices ---------------------------------------------------------------------------------
    def _open_device(self, spec: str) -> Engine:
        """An engine on exactly this device; EngineError when its delegate does not load."""
        if not self.bundle.has_edgetpu:
            raise EngineError(f"bundle {self.bundle.name} has no edgetpu.tflite")
        e = Engine(self.bundle, device=spec, backend=self.backend, num_threads=1)
        if e.info.delegate == "cpu":  # Engine fell back: not a device
            raise EngineError(e.info.fallback_reason or f"{spec}: no delegate")
        return e

    def _rebuild(self, slot: DeviceSlot) -> None:
        """Reopen a failed device with back-off; drop it after max_rebuilds failed attempts."""
        slot.engine = None  # release the old delegate before the device is opened again
        backoff = Backoff(self.rebuild_delay_s, 5.0)
        for _ in range(self.max_rebuilds):
            if backoff.wait(self._closed):
                return
            try:
                slot.engine = self._open_device(slot.spec)
            except EngineError as exc:
                slot.rebuild_error = str(exc)
                continue
            slot.rebuilds += 1
            slot.state = "ok"
            log.warning("Edge TPU %s rebuilt after a failure", slot.spec)
            return
        slot.state = "dropped"
        log.error("Edge TPU %s dropped: %s", slot.spec, slot.rebuild_error)

    def _serve(self, slot: DeviceSlot, task: tuple, caller: bool) -> None:
        """Run one queued tile on `slot`; on failure, queue it again and mark the slot for a
        rebuild. caller: on the thread that called infer (its CPU is counted there)."""
        job, i, tile = task
        engine = slot.engine
        c0, k0 = time.thread_time_ns(), engine.invoke_cpu_ns
        try:
            out = engine.infer_tile(tile)
        except Exception as exc:  # the device failed: someone else runs this tile
            slot.errors += 1
            slot.last_error = f"{type(exc).__name__}: {exc}"
            slot.state = "rebuilding"
            log.warning("Edge TPU %s failed: %s", slot.spec, slot.last_error)
            self._tasks.put(task)
            if caller:  # the first device has no thread of its own: rebuild on a helper
                threading.Thread(target=self._rebuild, args=(slot,), daemon=True).start()
            return
        slot.invokes += 1
        slot.invoke_ns.append(engine.invoke_ns[-1])
        self.invoke_ns.append(engine.invoke_ns[-1])
        if caller:
            self.invoke_cpu_ns += engine.invoke_cpu_ns - k0
        else:
            slot.host_cpu_ns += time.thread_time_ns() - c0 - (engine.invoke_cpu_ns - k0)
        job.done(i, out)

    def _work(self, slot: DeviceSlot) -> None:
        """The thread of a device other than the first: take the next tile, run it."""
        while not self._closed.is_set():
            if slot.state == "dropped":
                return
            if slot.state == "rebuilding":
                self._rebuild(slot)
                continue
            try:
                task = self._tasks.get(timeout=0.2)
            except queue.Empty:
                continue
            self._serve(slot, task, caller=False)

    def _serving(self) -> bool:
        """A device thread may still take tiles (none does after close())."""
        return not self._closed.is_set() and any(s.state != "dropped" for s in self.slots)

    def _run(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of these tiles, in order. The calling thread serves the first device itself
        (no hand-off: as fast as one Engine), the other devices' threads take tiles as they free
        up; with no device left, the calling thread runs what is queued on the CPU."""
        job = _Job(len(tiles))
        for i, t in enumerate(tiles):
            self._tasks.put((job, i, t))
        lead = self.slots[0]
        while job.left:
            if lead.state == "ok" and self._lead_lock.acquire(blocking=False):
                try:
                    task = self._tasks.get_nowait()
                except queue.Empty:
                    task = None
                try:
                    if task is not None:
                        self._serve(lead, task, caller=True)
                        continue
                finally:
                    self._lead_lock.release()
            elif not self._serving():
                self._run_on_cpu()
                continue
            with job.cond:
                if job.left:
                    job.cond.wait(0.01)
        return job.outs

    def _run_on_cpu(self) -> None:
        """No device is left: run one queued tile on the CPU interpreter, if there is one."""
        try:
            job, i, tile = self._tasks.get(timeout=0.01)
        except queue.Empty:
            return
        with self._cpu_lock:
            out = Engine.infer_tile(self, tile)
            self.cpu_tiles += 1
        job.done(i, out)

    # -- the Engine interface --------------------------------------------------------------------
    def infer_tile(self, tile: np.ndarray) -> np.ndarray:
        return self._run([tile])[0]

    def _infer_tiled(self, img: np.ndarray, w: int, h: int, tensors=None):
        """(positive map, None) stitched from tiles (or their input tensors, made ahead) spread
        over the devices; a model with several positive classes (a per-class stack) runs its
        tiles through Engine's path."""
        o = self.manifest.output
        if o.kind != "heatmap" or len(o.positives) > 1:
            return super()._infer_tiled(img, w, h, tensors)
        plan = self.plan(w, h)
        tiles = (
            list(tensors)
            if tensors is not None
            else [img[y0 : y0 + plan.tile_h, x0 : x0 + plan.tile_w] for x0, y0, *_ in plan.tiles]
        )
        out = np.empty((plan.padded_h // plan.cell, plan.padded_w // plan.cell), np.float32)
        for i, tile_out in enumerate(self._run(tiles)):
            stitch_into(out, plan, i, tile_out)
        return out[: plan.out_h, : plan.out_w], None

    def health_check(self, raise_on_fail: bool = True) -> dict:
        """The golden check on every device that serves (each engine against the golden output
        of the model file it runs: edgetpu.tflite's own when the bundle has one), or on the CPU
        interpreter when no device is left. For a fresh engine, before it serves tiles."""
        up = [s for s in self.slots if s.state == "ok" and s.engine is not None]
        if not up:
            return super().health_check(raise_on_fail)
        per = {s.spec: s.engine.health_check(raise_on_fail=False) for s in up}
        bad = {spec: r for spec, r in per.items() if not r["ok"]}
        result = {**(next(iter(bad.values())) if bad else per[up[0].spec]), "devices": per}
        result["ok"] = not bad
        if raise_on_fail and bad:
            raise HealthCheckError(
                f"bundle {self.bundle.name}: golden check failed on {', '.join(bad)}: "
                f"{next(iter(bad.values()))}"
            )
        return result

    def host_cpu_offset_ns(self) -> int:
        return sum(s.host_cpu_ns for s in self.slots) - self.invoke_cpu_ns

    def invokes_per_frame(self, tiles: int) -> int:
        """Invokes per frame on the busiest device when `tiles` are spread over those serving."""
        n = sum(s.state == "ok" for s in self.slots)
        return math.ceil(tiles / n) if n else tiles

    def device_stats(self) -> list[dict]:
        """Per device: state, invokes, errors, rebuilds, invoke p50/p90/p99 (ms)."""
        return [s.stats() for s in self.slots]

    def close(self) -> None:
        """Stop the device threads; later calls run on the first device (or the CPU) alone."""
        self._closed.set()
        for t in self._workers:
            t.join(1.0)
