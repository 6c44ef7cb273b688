"""The motorised stage of the virtual microscope: where the field of view is, over time.

A `StagePath` is a list of waypoints in slide micrometres (um). The stage starts at the first
waypoint, then for each next one either pans there in a straight line at `speed_um_s` or, when
the speed is None, jumps there at once (a new region); then it waits `pause_s`. With
loop=True the path repeats (jumping back to the start). `StagePath.random` makes a seeded
path of pans, pauses and jumps that stays over the tissue of a slide.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class StageError(ValueError):
    """A stage path that cannot be followed."""


@dataclass(frozen=True)
class Waypoint:
    """A stage target: position (um), pan speed to reach it (um/s; None = jump), pause (s)."""

    x_um: float
    y_um: float
    speed_um_s: float | None = None
    pause_s: float = 0.0


@dataclass(frozen=True)
class StageState:
    """Stage at one instant: centre of the field of view (um), velocity (um/s), the time
    since the last jump ended (s; math.inf when there was none) and the focus error (um)."""

    x_um: float
    y_um: float
    vx_um_s: float = 0.0
    vy_um_s: float = 0.0
    since_jump_s: float = math.inf
    defocus_um: float = 0.0  # focus error (um): the camera blurs the image by it

    @property
    def speed_um_s(self) -> float:
        return math.hypot(self.vx_um_s, self.vy_um_s)


class StagePath:
    """Piecewise-linear stage motion through waypoints (see the module docstring)."""

    def __init__(self, waypoints: Sequence[Waypoint], loop: bool = False):
        if not waypoints:
            raise StageError("a stage path needs at least one waypoint")
        for i, w in enumerate(waypoints):
            if not (math.isfinite(w.x_um) and math.isfinite(w.y_um)):
                raise StageError(
                    f"waypoint {i}: position must be finite um, got ({w.x_um}, {w.y_um})"
                )
            if w.speed_um_s is not None and not w.speed_um_s > 0:
                raise StageError(
                    f"waypoint {i}: speed_um_s must be > 0 or None (jump), got {w.speed_um_s}"
                )
            if not w.pause_s >= 0:
                raise StageError(f"waypoint {i}: pause_s must be >= 0, got {w.pause_s}")
        self.waypoints = list(waypoints)
        self.loop = loop and len(self.waypoints) > 1
        # Segments (t_start, t_arrive, t_leave, from, to, jump): seg 0 is the start pause.
        first = self.waypoints[0]
        segs = [(0.0, 0.0, first.pause_s, first, first, False)]
        t = first.pause_s
        legs = list(zip(self.waypoints[:-1], self.waypoints[1:]))
        if self.loop:
            legs.append((self.waypoints[-1], Waypoint(first.x_um, first.y_um, None, 0.0)))
        for a, b in legs:
            jump = b.speed_um_s is None
            move = 0.0 if jump else math.hypot(b.x_um - a.x_um, b.y_um - a.y_um) / b.speed_um_s
            segs.append((t, t + move, t + move + b.pause_s, a, b, jump))
            t += move + b.pause_s
        self._segs = segs
        self._starts = [sg[0] for sg in segs]
        self.duration_s = t
        # Arrival time of the latest jump at or before each segment (None: no jump yet).
        self._jump_at: list[float | None] = []
        last = None
        for sg in segs:
            if sg[5]:
                last = sg[1]
            self._jump_at.append(last)

    def state(self, t_s: float) -> StageState:
        """Where the stage is t_s seconds after the path started."""
        t = max(0.0, float(t_s))
        wrapped = False
        if self.loop and self.duration_s > 0:
            wrapped = t >= self.duration_s
            t = t % self.duration_s
        if t >= self.duration_s:  # past the end of a one-way path
            i = len(self._segs) - 1
            t0, t1, t2, a, b, jump = self._segs[i]
        else:
            i = max(0, bisect_right(self._starts, t) - 1)
            t0, t1, t2, a, b, jump = self._segs[i]
        jump_at = self._jump_at[i]
        if jump_at is None and wrapped:
            jump_at = 0.0  # the loop jumped back to the start
        since = math.inf if jump_at is None else t - jump_at
        if jump or t >= t1 or t1 <= t0:
            return StageState(b.x_um, b.y_um, 0.0, 0.0, since)
        f = (t - t0) / (t1 - t0)
        vx = (b.x_um - a.x_um) / (t1 - t0)
        vy = (b.y_um - a.y_um) / (t1 - t0)
        return StageState(
            a.x_um + f * (b.x_um - a.x_um), a.y_um + f * (b.y_um - a.y_um), vx, vy, since
        )

    @classmethod
    def still(cls, x_um: float, y_um: float) -> StagePath:
        """A stage that stays at (x_um, y_um)."""
        return cls([Waypoint(x_um, y_um)])

    @classmethod
    def random(
        cls,
        slide,
        seed: int,
        n_moves: int = 200,
        speed_um_s: tuple[float, float] = (40.0, 400.0),
        pan_um: tuple[float, float] = (100.0, 1500.0),
        pause_s: tuple[float, float] = (0.5, 4.0),
        jump_prob: float = 0.15,
    ) -> StagePath:
        """A seeded looping path over `slide`'s tissue: pans (random speed and length), pauses,
        and now and then a jump to a new region. `slide` needs random_point and region_at."""
        rng = np.random.default_rng([int(seed), 101])
        x, y = slide.random_point(rng, "tissue")
        pts = [Waypoint(x, y, None, float(rng.uniform(*pause_s)))]
        for _ in range(n_moves):
            pause = float(rng.uniform(*pause_s))
            if rng.random() < jump_prob:
                x, y = slide.random_point(rng, "tissue")
                pts.append(Waypoint(x, y, None, pause))
                continue
            for _try in range(20):
                ang = rng.uniform(0, 2 * np.pi)
                d = rng.uniform(*pan_um)
                nx, ny = x + d * math.cos(ang), y + d * math.sin(ang)
                if slide.region_at(nx, ny)[0] > 0:
                    break
            else:
                nx, ny = slide.random_point(rng, "tissue")
            x, y = nx, ny
            pts.append(Waypoint(x, y, float(rng.uniform(*speed_um_s)), pause))
        return cls(pts, loop=True)


class TourPath:
    """Stage motion as a hand on a real microscope makes it (seeded, sampled every `dt_s`):
    stops, slow drifts, slow pans and fast pans, each speeding up and slowing down at a finite
    acceleration, with small stage vibrations (um, 8..25 Hz) always on and a slow focus drift
    (`defocus_um`, the camera blurs it). Same interface as StagePath (`state(t_s)`).

    slow_um_s: speed range of slow pans; fast_um_s: of fast pans; accel_um_s2: acceleration
    range; vibration_um: vibration amplitude; focus_um: focus drift amplitude.
    `segments` lists (t_start_s, t_end_s, kind) with kind in still/drift/slow/fast.
    """

    KINDS = ("still", "drift", "slow", "fast")

    def __init__(
        self,
        slide,
        seed: int,
        duration_s: float = 120.0,
        slow_um_s: tuple[float, float] = (5.0, 30.0),
        fast_um_s: tuple[float, float] = (300.0, 1500.0),
        accel_um_s2: tuple[float, float] = (300.0, 3000.0),
        weights: tuple[float, float, float, float] = (0.35, 0.15, 0.25, 0.25),
        vibration_um: float = 0.15,
        focus_um: float = 0.8,
        dt_s: float = 0.002,
    ):
        rng = np.random.default_rng([int(seed), 303])
        n = int(duration_s / dt_s) + 1
        v = np.zeros((n, 2))
        self.segments: list[tuple[float, float, str]] = []
        i = 0
        x0, y0 = slide.random_point(rng, "tissue")
        pos = np.array([x0, y0])
        while i < n - 1:
            kind = self.KINDS[rng.choice(4, p=np.asarray(weights) / sum(weights))]
            if kind == "still":
                length = int(rng.uniform(1.0, 4.0) / dt_s)
                prof = np.zeros(length)
            else:
                top = {
                    "drift": rng.uniform(0.5, 3.0),
                    "slow": rng.uniform(*slow_um_s),
                    "fast": rng.uniform(*fast_um_s),
                }[kind]
                acc = rng.uniform(*accel_um_s2) * (0.05 if kind == "drift" else 1.0)
                cruise = rng.uniform(1.0, 3.0) if kind != "fast" else rng.uniform(0.2, 1.0)
                ramp = np.arange(0.0, top / acc, dt_s) * acc
                prof = np.concatenate([ramp, np.full(int(cruise / dt_s), top), ramp[::-1]])
            ang = self._heading(slide, rng, pos)
            j = min(n - 1, i + len(prof))
            v[i:j] = prof[: j - i, None] * (math.cos(ang), math.sin(ang))
            pos = pos + v[i:j].sum(0) * dt_s
            self.segments.append((i * dt_s, j * dt_s, kind))
            i = j
        xy = np.array([x0, y0]) + np.vstack([[0, 0], np.cumsum(v[:-1], 0) * dt_s])
        t = np.arange(n) * dt_s
        self._pan = np.hypot(v[:, 0], v[:, 1])
        # vibrations: two sinusoids per axis (um), added to position and velocity
        for f, a in ((rng.uniform(8, 14), vibration_um), (rng.uniform(15, 25), vibration_um / 2)):
            ph = rng.uniform(0, 2 * np.pi, 2)
            xy += a * np.sin(2 * np.pi * f * t[:, None] + ph)
            v += a * 2 * np.pi * f * np.cos(2 * np.pi * f * t[:, None] + ph)
        ph = rng.uniform(0, 2 * np.pi)
        self.defocus = focus_um * np.sin(2 * np.pi * t / rng.uniform(20, 40) + ph)
        self.dt_s, self.t, self.xy, self.v = dt_s, t, xy, v
        self.duration_s = t[-1]
        self.loop = False

    @staticmethod
    def _heading(slide, rng, pos) -> float:
        """A direction (rad) that leads over tissue for the next ~500 um, when one is found."""
        for _ in range(12):
            ang = rng.uniform(0, 2 * np.pi)
            ahead = pos + 500.0 * np.array([math.cos(ang), math.sin(ang)])
            if slide.region_at(ahead[:1], ahead[1:])[0] > 0:
                return ang
        return ang

    def state(self, t_s: float) -> StageState:
        """Where the stage is t_s seconds after the tour started (it stays at its end)."""
        k = min(max(0.0, float(t_s)) / self.dt_s, len(self.t) - 1.0)
        i = int(k)
        j = min(i + 1, len(self.t) - 1)
        f = k - i
        x, y = self.xy[i] * (1 - f) + self.xy[j] * f
        vx, vy = self.v[i]
        return StageState(
            float(x), float(y), float(vx), float(vy), math.inf, float(self.defocus[i])
        )

    def pan_speed_um_s(self) -> np.ndarray:
        """Speed of the hand's pans only (vibration excluded), um/s, at every sample."""
        return self._pan
