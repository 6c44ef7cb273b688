"""Per-class overlays: which classes are drawn, in which colour, and their contours.

A model with several positive classes (e.g. Gleason GP3/GP4/GP5) gives, per cell, each class's
probability. The region shown is ARM's: where the sum over the classes switched on reaches the
threshold. Inside it each cell belongs to the most likely switched-on class, and each class's
part is outlined in its own colour. Switching a class off removes it from the sum as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .contours import ContourExtractor, ContourParams
from .errors import OverlayError
from .regions import Regions

RGB = tuple[int, int, int]
# Colours for classes whose bundle names none: green first (the single-class default), then
# colours that stay apart on a black eyepiece display and on H&E.
PALETTE: tuple[RGB, ...] = (
    (0, 255, 0),
    (255, 255, 0),
    (255, 64, 64),
    (0, 200, 255),
    (255, 0, 255),
    (255, 140, 0),
    (160, 120, 255),
    (255, 255, 255),
)


@dataclass(frozen=True)
class ClassStyle:
    """One drawable class: its index in the model's output, display name, colour, and state."""

    index: int
    name: str
    color: RGB
    on: bool = True


def class_styles(
    positives: Sequence[int],
    names: Sequence[str],
    colors: Sequence[RGB | None] = (),
    off: Iterable[str] = (),
) -> tuple[ClassStyle, ...]:
    """Styles of the positive classes: names[k] / colors[k] indexed by class; classes without a
    colour take the palette in order; a class whose name is in `off` is switched off."""
    off = set(off)
    out, spare = [], iter(PALETTE)
    taken = {tuple(c) for c in colors if c is not None}
    for k in positives:
        c = colors[k] if k < len(colors) else None
        if c is None:
            c = next((p for p in spare if p not in taken), PALETTE[k % len(PALETTE)])
        name = names[k] if k < len(names) else f"class {k}"
        out.append(ClassStyle(int(k), name, tuple(int(v) for v in c), name not in off))
    return tuple(out)


class ClassContours:
    """Heatmap (positive map and per-class stack) -> Regions tagged with their class.

    One ContourExtractor per class keeps each class's anti-flicker state; `reset()` forgets all.
    When every class's extractor returned the very regions it returned last time (a still field),
    so does this: the same Regions object, which the AR composer then need not redraw.
    """

    def __init__(self, params: ContourParams | None = None):
        self.params = params or ContourParams()
        self._one = ContourExtractor(self.params)
        self._per: dict[int, ContourExtractor] = {}
        self._last: tuple[list, Regions] | None = None  # ([(class, its regions)], merged)

    def _tagged(self, parts: list) -> Regions:
        """The regions of `parts` [(class index, Regions)] tagged with their class; the last
        result again when every part is the same object as last time."""
        last = self._last
        if (
            last is not None
            and len(last[0]) == len(parts)
            and all(k == k0 and r is r0 for (k, r), (k0, r0) in zip(parts, last[0]))
        ):
            return last[1]
        if len(parts) == 1:
            k, r = parts[0]
            merged = Regions(r.contours, r.holes, r.areas_px2, r.areas_um2, [k] * len(r))
        else:
            merged = Regions.of_classes(parts)
        self._last = (parts, merged)
        return merged

    def reset(self) -> None:
        self._last = None
        self._one.reset()
        for ex in self._per.values():
            ex.reset()

    def extract(
        self,
        probs: np.ndarray,
        affine: np.ndarray,
        um_per_px: float | None = None,
        *,
        classes: np.ndarray | None = None,
        class_ids: Sequence[int] = (),
        enabled: Iterable[int] | None = None,
    ) -> Regions:
        """probs: HxW positive map; classes: HxWxK per-class probabilities of `class_ids` (None
        for a single positive class); enabled: class indices switched on (None: all)."""
        on = None if enabled is None else set(enabled)
        if classes is None:
            k = class_ids[0] if class_ids else 0
            if on is not None and class_ids and k not in on:
                self._one.reset()
                return Regions(areas_um2=[] if um_per_px is not None else None, class_ids=[])
            return self._tagged([(k, self._one.extract(probs, affine, um_per_px))])
        if classes.ndim != 3 or classes.shape[2] != len(class_ids):
            raise OverlayError(
                f"class stack of shape {classes.shape}: expected HxWx{len(class_ids)} "
                f"for classes {list(class_ids)}"
            )
        cols = [j for j, k in enumerate(class_ids) if on is None or k in on]
        if not cols:
            self.reset()
            return Regions(areas_um2=[] if um_per_px is not None else None, class_ids=[])
        stack = classes[..., cols]
        total = np.minimum(stack.sum(axis=2), 1.0, dtype=np.float32)
        owner = stack.argmax(axis=2)
        parts = []
        for j, col in enumerate(cols):
            k = class_ids[col]
            ex = self._per.get(k)
            if ex is None:
                ex = self._per[k] = ContourExtractor(self.params)
            mine = np.where(owner == j, total, np.float32(0.0)) if len(cols) > 1 else total
            parts.append((k, ex.extract(mine, affine, um_per_px)))
        return self._tagged(parts)
