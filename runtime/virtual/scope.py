"""The virtual microscope: a synthetic slide seen through an objective turret, a motorised
stage and a camera. A frame source like any other (open -> read -> close).

Optics. The objective sets the size of a camera pixel on the slide (OBJECTIVES, um/px at the
camera, i.e. sensor pixel pitch / total magnification, for a 1920x1080 camera behind a
0.5x-ish relay: 10x -> 1.0 um/px). The field of view is resolution * um/px: at 10x,
1920 x 1080 px = 1920 x 1080 um; at 40x, 480 x 270 um.

Stage. A StagePath (scripted waypoints, or a seeded random path of pans, pauses and jumps) gives
the centre of the field of view in slide um over time. Time is wall-clock since open() when
realtime (read() is paced at the frame rate), or frame count / fps when realtime=False (frames
come as fast as they can be made, and the run is reproducible).

Turret. `set_objective(name)` rotates the nosepiece: for `turret_move_s` the light path is
blocked (dark frames, objective None, turret_position() None), then the new objective is in
place but `moving` stays True for `settle_s` (refocus). `moving` is also True while the stage
moves and for `settle_s` after a jump. TURRET lists the objective at each 1-based position,
the way a nosepiece controller reports it.

Camera. See camera.py: exposure, gain, noise, vignetting, colour cast, motion blur.

Speed. The slide is rendered in tiles (tile_px square, at the objective's um/px, aligned to a
global pixel lattice) kept in an LRU cache keyed by (objective, tile x, tile y); a frame is a
crop of cached tiles, so panning renders only the tiles that come into view.

Faults for tests: stall(seconds) freezes the camera (read blocks, then returns None);
unplug()/replug() make read raise SourceError.

Look at it:  python -m lucida.runtime.virtual.scope --out /tmp/frame.png
Measure it:  python -m lucida.runtime.virtual.scope --bench
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections import OrderedDict

import cv2
import numpy as np

from ..frame import Frame
from ..sources import FrameSource, SourceError
from .camera import CameraConfig, CameraModel
from .stage import StagePath, StageState, Waypoint
from .tissue import SyntheticSlide

# Camera um/px per objective (see the module docstring).
OBJECTIVES: dict[str, float] = {"2x": 5.0, "4x": 2.5, "10x": 1.0, "20x": 0.5, "40x": 0.25}
TURRET: tuple[str, ...] = ("2x", "4x", "10x", "20x", "40x")  # objective at positions 1..5

__all__ = ["OBJECTIVES", "TURRET", "ScopeError", "SourceError", "VirtualMicroscope"]


class ScopeError(ValueError):
    """A virtual-microscope setting that cannot be honoured (unknown objective, ...)."""


class VirtualMicroscope(FrameSource):
    """A frame source that looks at a SyntheticSlide (see the module docstring).

    slide: the specimen (default SyntheticSlide(seed)); path: stage motion (default a seeded
    random path over the tissue); camera: CameraConfig; objective: starting objective;
    turret: objective per nosepiece position; realtime: pace read() at the frame rate;
    report_motion: False makes it a camera like any other (Frame.moving is never set: the
    pipeline must see motion in the image); subpixel: render fractional stage positions
    (bilinear) instead of snapping to whole pixels (what a real sensor sees of slow motion).
    """

    def __init__(
        self,
        slide: SyntheticSlide | None = None,
        *,
        seed: int = 0,
        path: StagePath | None = None,
        camera: CameraConfig | None = None,
        objective: str = "10x",
        turret: tuple[str, ...] = TURRET,
        turret_move_s: float = 0.5,
        settle_s: float = 0.3,
        realtime: bool = True,
        report_motion: bool = True,
        subpixel: bool = False,
        tile_px: int = 512,
        cache_tiles: int = 64,
        name: str = "virtual",
    ):
        self.slide = slide if slide is not None else SyntheticSlide(seed)
        self.camera = camera or CameraConfig()
        for o in turret:
            if o not in OBJECTIVES:
                raise ScopeError(f"turret objective {o!r} is not one of {sorted(OBJECTIVES)}")
        self.turret = tuple(turret)
        if objective not in self.turret:
            raise ScopeError(f"objective {objective!r} is not on the turret {list(self.turret)}")
        if turret_move_s < 0 or settle_s < 0:
            raise ScopeError("turret_move_s and settle_s must be >= 0 seconds")
        if not 64 <= tile_px <= 4096:
            raise ScopeError(f"tile_px must be 64..4096, got {tile_px}")
        self.name = name
        self.realtime = realtime
        self.report_motion = report_motion
        self.subpixel = subpixel
        self.turret_move_s = float(turret_move_s)
        self.settle_s = float(settle_s)
        self.tile_px = int(tile_px)
        self._cache_tiles = max(4, int(cache_tiles))
        self._seed = seed if slide is None else self.slide.seed
        self._path = path or StagePath.random(self.slide, self._seed)
        self._path_t0 = 0.0
        self._cam = CameraModel(self.camera, seed=self._seed)
        self._tiles: OrderedDict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = (
            OrderedDict()
        )
        self._lock = threading.RLock()
        self._is_open = False
        self._unplugged = False
        self._stall_until_ns = 0
        self._seq = 0
        self._t_open_ns = 0
        self._next_ns = 0
        # Turret: turning towards `_target` since sim time `_move_from_t` (s).
        self._target = objective
        self._move_from_t = -math.inf
        self.focus_offset_um = 0.0  # the focus knob: added to the stage path's focus error (um)

    # -- source interface ---------------------------------------------------------------------
    def open(self) -> None:
        """Start the camera; time starts at the first open and runs on across a close and
        reopen (a replugged camera sees the stage and turret where they are now).
        Raises SourceError while unplugged."""
        with self._lock:
            if self._unplugged:
                raise SourceError(f"{self.name}: camera unplugged")
            if self._is_open:
                return
            self._is_open = True
            now = time.monotonic_ns()
            self._t_open_ns = self._t_open_ns or now
            self._next_ns = now

    def close(self) -> None:
        with self._lock:
            self._is_open = False

    def __enter__(self) -> VirtualMicroscope:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """The next frame: paced at the frame rate when realtime, None when the camera stalls
        past timeout_s, SourceError when unplugged or not open."""
        deadline = time.monotonic_ns() + int(max(0.0, timeout_s) * 1e9)
        with self._lock:
            self._check_plugged()
            stall_until = self._stall_until_ns
        now = time.monotonic_ns()
        if now < stall_until:  # frozen camera: nothing until the stall ends or we give up
            time.sleep(max(0, min(stall_until, deadline) - now) / 1e9)
            if time.monotonic_ns() < self._stall_until_ns:
                return None
            with self._lock:
                self._check_plugged()
                self._next_ns = time.monotonic_ns()
        if self.realtime:
            now = time.monotonic_ns()
            if self._next_ns > now:
                if self._next_ns > deadline:
                    time.sleep(max(0, deadline - now) / 1e9)
                    return None
                time.sleep((self._next_ns - now) / 1e9)
        with self._lock:
            self._check_plugged()
            t_ns = time.monotonic_ns()
            t = self._now_s(t_ns)
            seq = self._seq
            self._seq += 1
            period = int(1e9 / self.camera.fps)
            self._next_ns = max(self._next_ns + period, t_ns) if self.realtime else t_ns
            stage = self._path.state(t - self._path_t0)
            obj, turret_moving, settling = self._turret_state(t)
        moving = self.report_motion and (
            turret_moving or settling or stage.speed_um_s > 0 or stage.since_jump_s < self.settle_s
        )
        w, h = self.camera.resolution
        s = OBJECTIVES[obj or self._target]
        if turret_moving:
            image = self._cam.dark((h, w))
            mask = np.zeros((h, w), bool)
        else:
            view, mask = self._field_of_view(obj, stage.x_um, stage.y_um)
            defocus = stage.defocus_um + self.focus_offset_um
            if abs(defocus) > 0.25:  # out of focus: blur ~ defocus x NA-ish / px
                view = cv2.GaussianBlur(view, (0, 0), 0.4 * abs(defocus) / s + 0.1)
            image = self._cam.apply(view, (stage.vx_um_s / s, stage.vy_um_s / s))
        meta = {
            "truth_mask": mask,
            "stage_um": (stage.x_um, stage.y_um),
            "um_per_px": s,
            "slide_seed": self.slide.seed,
            "velocity_um_s": (stage.vx_um_s, stage.vy_um_s),
            "turret_moving": turret_moving,
            "t_sim_s": t,
        }
        return Frame(
            image=image, t_capture_ns=t_ns, seq=seq, objective=obj, moving=moving, meta=meta
        )

    def flush(self) -> None:
        """Nothing is buffered: every read renders the present."""

    # -- control -------------------------------------------------------------------------------
    @property
    def objective(self) -> str | None:
        """The objective in the light path; None while the turret is between positions."""
        with self._lock:
            return self._turret_state(self._now_s())[0]

    @property
    def position(self) -> tuple[float, float]:
        """Stage position now: centre of the field of view, slide um."""
        with self._lock:
            st = self._path.state(self._now_s() - self._path_t0)
        return (st.x_um, st.y_um)

    @property
    def moving(self) -> bool:
        """True while the stage or the turret moves, or settles after a jump or a turret move."""
        with self._lock:
            t = self._now_s()
            st = self._path.state(t - self._path_t0)
            _, turning, settling = self._turret_state(t)
        return turning or settling or st.speed_um_s > 0 or st.since_jump_s < self.settle_s

    @property
    def um_per_px(self) -> float:
        """Camera um/px of the objective in place (or arriving)."""
        with self._lock:
            return OBJECTIVES[self._target]

    @property
    def fov_um(self) -> tuple[float, float]:
        """Field of view (width, height) in slide um: resolution * um/px."""
        w, h = self.camera.resolution
        s = self.um_per_px
        return (w * s, h * s)

    def set_objective(self, name: str) -> None:
        """Rotate the turret to `name` (takes turret_move_s, then settle_s)."""
        if name not in self.turret:
            raise ScopeError(f"objective {name!r} is not on the turret {list(self.turret)}")
        with self._lock:
            if name == self._target:
                return
            self._target = name
            # Before open() the turret is simply set; afterwards it takes time to turn.
            self._move_from_t = self._now_s() if self._is_open or not self.realtime else -math.inf

    def set_turret_position(self, position: int) -> None:
        """Rotate the turret to 1-based `position`."""
        if not 1 <= position <= len(self.turret):
            raise ScopeError(f"turret position must be 1..{len(self.turret)}, got {position}")
        self.set_objective(self.turret[position - 1])

    def turret_position(self) -> int | None:
        """1-based nosepiece position, None while between positions (what a controller reports)."""
        obj = self.objective
        return None if obj is None else self.turret.index(obj) + 1

    def set_camera(self, camera: CameraConfig) -> None:
        """Change camera settings (exposure, gain, noise, vignetting, cast, resolution, fps)."""
        model = CameraModel(camera, seed=self._seed)
        with self._lock:
            self.camera = camera
            self._cam = model

    def set_controls(self, controls: dict) -> dict:
        """Camera controls (runtime.camera_controls): exposure_ms, gain and fps change the
        camera model; auto exposure and white balance are not modelled (reported as refused)."""
        from dataclasses import replace

        from ..camera_controls import check_controls

        controls = check_controls(controls)
        known = {k: controls[k] for k in ("exposure_ms", "gain", "fps") if k in controls}
        cam = replace(self.camera, **known)  # CameraConfig validates the ranges
        self.set_camera(cam)
        self.controls_applied = {
            n: {"asked": v, "accepted": n in known, "read": getattr(cam, n, None)}
            for n, v in controls.items()
        }
        return self.controls_applied

    def camera_controls(self) -> dict:
        """exposure, gain and frame rate: the camera model's values now."""
        cam = self.camera
        return {"exposure_ms": cam.exposure_ms, "gain": cam.gain, "fps": cam.fps}

    def set_focus(self, defocus_um: float) -> None:
        """Turn the focus knob: `defocus_um` (um) from best focus, on top of the path's drift."""
        if not math.isfinite(defocus_um) or abs(defocus_um) > 100:
            raise ScopeError(f"defocus must be within +-100 um, got {defocus_um!r}")
        self.focus_offset_um = float(defocus_um)

    def set_path(self, path: StagePath) -> None:
        """Follow `path` from now on (its time 0 is now)."""
        with self._lock:
            self._path = path
            self._path_t0 = self._now_s()

    def goto(self, x_um: float, y_um: float, speed_um_s: float | None = None) -> None:
        """Move the stage to (x_um, y_um): a jump (then settle_s) or a pan at speed_um_s."""
        x0, y0 = self.position
        self.set_path(StagePath([Waypoint(x0, y0), Waypoint(x_um, y_um, speed_um_s)]))

    # -- faults --------------------------------------------------------------------------------
    def stall(self, seconds: float) -> None:
        """Freeze the camera for `seconds` (wall clock): read() blocks and returns None."""
        with self._lock:
            self._stall_until_ns = time.monotonic_ns() + int(max(0.0, seconds) * 1e9)

    def unplug(self) -> None:
        """Pull the camera cable: read() and open() raise SourceError until replug()."""
        with self._lock:
            self._unplugged = True

    def replug(self) -> None:
        with self._lock:
            self._unplugged = False

    # -- internals -----------------------------------------------------------------------------
    def _check_plugged(self) -> None:
        if self._unplugged:
            raise SourceError(f"{self.name}: camera unplugged")
        if not self._is_open:
            raise SourceError(f"{self.name}: not open")

    def _now_s(self, t_ns: int | None = None) -> float:
        """Simulation time (s): wall time since open when realtime, else seq / fps."""
        if not self.realtime:
            return self._seq / self.camera.fps
        if not self._is_open:
            return 0.0
        return ((t_ns if t_ns is not None else time.monotonic_ns()) - self._t_open_ns) / 1e9

    def _turret_state(self, t: float) -> tuple[str | None, bool, bool]:
        """(objective in place or None, turret moving, settling after the move) at sim time t."""
        dt = t - self._move_from_t
        if dt < self.turret_move_s:
            return None, True, False
        return self._target, False, dt < self.turret_move_s + self.settle_s

    def _tile(self, obj: str, tx: int, ty: int) -> tuple[np.ndarray, np.ndarray]:
        key = (obj, tx, ty)
        with self._lock:
            hit = self._tiles.get(key)
            if hit is not None:
                self._tiles.move_to_end(key)
                return hit
        s = OBJECTIVES[obj]
        n = self.tile_px
        tile = self.slide.render(tx * n * s, ty * n * s, n, n, s)
        with self._lock:
            self._tiles[key] = tile
            while len(self._tiles) > self._cache_tiles:
                self._tiles.popitem(last=False)
        return tile

    def _field_of_view(self, obj: str, x_um: float, y_um: float) -> tuple[np.ndarray, np.ndarray]:
        """(rgb, truth mask) seen at objective `obj` with the stage at (x_um, y_um), no camera
        effects; the top-left pixel is snapped to the objective's pixel lattice unless
        `subpixel` (then interpolated; the truth mask stays snapped)."""
        w, h = self.camera.resolution
        s = OBJECTIVES[obj]
        fx, fy = x_um / s - w / 2, y_um / s - h / 2  # top-left, camera px on the slide
        if self.subpixel:  # a real image moves by fractions of a pixel too
            px0, py0 = math.floor(fx) - 1, math.floor(fy) - 1
            rgb, mask = self._crop(obj, px0, py0, w + 3, h + 3)
            centre = (fx - px0 + (w - 1) / 2, fy - py0 + (h - 1) / 2)
            mx, my = int(round(fx)) - px0, int(round(fy)) - py0
            return cv2.getRectSubPix(rgb, (w, h), centre), mask[my : my + h, mx : mx + w]
        return self._crop(obj, int(round(fx)), int(round(fy)), w, h)

    def _crop(self, obj: str, px0: int, py0: int, w: int, h: int):
        """(rgb, truth mask) of the w x h px box at (px0, py0) on objective `obj`'s lattice."""
        n = self.tile_px
        rgb = np.empty((h, w, 3), np.uint8)
        mask = np.empty((h, w), bool)
        for ty in range(py0 // n, (py0 + h - 1) // n + 1):
            for tx in range(px0 // n, (px0 + w - 1) // n + 1):
                t_rgb, t_mask = self._tile(obj, tx, ty)
                x0, x1 = max(px0, tx * n), min(px0 + w, (tx + 1) * n)
                y0, y1 = max(py0, ty * n), min(py0 + h, (ty + 1) * n)
                dst = (slice(y0 - py0, y1 - py0), slice(x0 - px0, x1 - px0))
                src = (slice(y0 - ty * n, y1 - ty * n), slice(x0 - tx * n, x1 - tx * n))
                rgb[dst] = t_rgb[src]
                mask[dst] = t_mask[src]
        return rgb, mask

    def stage_at(self, t_ns: int) -> StageState:
        """The stage at device time `t_ns` (realtime only): what was under the objective then."""
        with self._lock:
            return self._path.state((t_ns - self._t_open_ns) / 1e9 - self._path_t0)

    def state(self) -> tuple[StageState, str | None]:
        """(stage state, objective in place) now; for monitors and tests."""
        with self._lock:
            t = self._now_s()
            return self._path.state(t - self._path_t0), self._turret_state(t)[0]


def _bench(args: argparse.Namespace) -> int:
    """Frame rate of the virtual microscope, panning slowly, on one core."""
    cv2.setNumThreads(1)
    slide = SyntheticSlide(args.seed)
    rng = np.random.default_rng(args.seed)
    x, y = slide.random_point(rng, "tissue")
    path = StagePath([Waypoint(x, y), Waypoint(x + args.speed * 1000, y, args.speed)])
    cam = CameraConfig(resolution=(args.width, args.height))
    scope = VirtualMicroscope(
        slide, path=path, camera=cam, objective=args.objective, realtime=False
    )
    scope.open()
    t_first = time.perf_counter()
    scope.read()  # the first frame renders every tile in view
    first_ms = (time.perf_counter() - t_first) * 1e3
    walls, cpus = [], []
    t_end = time.perf_counter() + args.seconds
    while time.perf_counter() < t_end:
        t0, c0 = time.perf_counter(), time.process_time()
        scope.read()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    scope.close()
    print(
        f"virtual microscope {args.width}x{args.height} @ {args.objective}, pan {args.speed:g} um/s "
        f"(30 fps sim time), 1 cv2 thread: first frame {first_ms:.0f} ms; then {len(walls)} frames:"
    )
    for name, d in (("wall", walls), ("CPU", cpus)):
        d = np.asarray(d) * 1e3
        p50, p90, p99 = np.percentile(d, [50, 90, 99])
        fps = len(d) / d.sum() * 1e3
        print(
            f"  {name}: {fps:.1f} fps, frame time p50 {p50:.1f} / p90 {p90:.1f} / p99 {p99:.1f} ms; "
            f"limit 15 fps -> {fps / 15:.2f}x"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lucida.runtime.virtual.scope", description=__doc__.split("\n")[0]
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", default="10x", choices=TURRET)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--speed", type=float, default=100.0, help="bench pan speed, um/s")
    p.add_argument("--seconds", type=float, default=10.0, help="bench duration")
    p.add_argument("--bench", action="store_true", help="measure the frame rate")
    p.add_argument("--out", help="write one frame (PNG) with the truth outline")
    a = p.parse_args(argv)
    if a.bench:
        return _bench(a)
    if not a.out:
        p.error("give --out PATH or --bench")
    from .tissue import outline

    slide = SyntheticSlide(a.seed)
    x, y = slide.random_point(np.random.default_rng(a.seed), "tumour")
    cam = CameraConfig(resolution=(a.width, a.height))
    with VirtualMicroscope(
        slide, path=StagePath.still(x, y), camera=cam, objective=a.objective
    ) as scope:
        f = scope.read()
    img = outline(f.image, f.meta["truth_mask"])
    if not cv2.imwrite(a.out, cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {a.out}")
    print(f"{a.out}: {f.objective} at {f.meta['stage_um']} um, {f.meta['um_per_px']} um/px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
