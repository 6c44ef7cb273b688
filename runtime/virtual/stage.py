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
    """Stage at one instant: centre of the field of view (um), velocity (um/s) and the time
    since the last jump ended (s; math.inf when there was none)."""

    x_um: float
    y_um: float
    vx_um_s: float = 0.0
    vy_um_s: float = 0.0
    since_jump_s: float = math.inf

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
