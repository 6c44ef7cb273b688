"""The two values that flow through the data path: a camera Frame and a model Heatmap."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One camera image and what was true when it was taken.

    image: HxWx3 uint8, RGB.
    t_capture_ns: time.monotonic_ns() at capture (the device clock).
    seq: the source's sequence number, increasing by one per frame produced.
    objective: the objective in use ("10x"), None when unknown.
    moving: True while the stage or the turret is in motion.
    meta: source-specific extras; the virtual microscope puts its ground truth here
          ("truth_mask": HxW bool, "stage_um": (x, y), "um_per_px": float).
    """

    image: np.ndarray
    t_capture_ns: int
    seq: int
    objective: str | None = None
    moving: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in px."""
        return self.image.shape[1], self.image.shape[0]


@dataclass(frozen=True)
class Heatmap:
    """Tumour probability over a frame.

    probs: HxW float32 in [0, 1], one cell per model output position.
    affine: 2x3 float64 mapping heatmap pixel coordinates (x, y), cell centres at
            integers, to frame pixel coordinates: frame = affine @ [x, y, 1].
    frame_size: (width, height) in px of the frame it was computed on.
    classes: HxWxK float32, the probability of each positive class (summed, they give probs),
             when the model has more than one positive class; None otherwise.
    class_ids: the K class indices of `classes`' last axis (the model's positive classes).
    """

    probs: np.ndarray
    affine: np.ndarray
    frame_size: tuple[int, int]
    classes: np.ndarray | None = None
    class_ids: tuple = ()

    @property
    def px_per_cell(self) -> float:
        """Frame px per heatmap cell along x."""
        return float(self.affine[0, 0])
