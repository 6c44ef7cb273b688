"""The runtime's view of a profile: the ready-to-use calibration of the current
objective, switched when the objective changes.

    store = CalibrationStore.open("/etc/lucida/arm-1")      # validates the profile
    cal = store.get(frame.objective)                          # cached per objective
    image = cal.correct(frame.image)                          # flat-field + white balance
    display_xy = cal.to_display(camera_xy)                    # homography
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .flatfield import FlatField, FrameCorrector
from .homography import apply_homography
from .profile import DisplaySpec, Profile


@dataclass
class ObjectiveCalibration:
    """One objective's calibration, loaded.

    homography: 3x3 camera px -> display px (None: not registered); um_per_px and its
    source ("measured" / "nominal" / None); corrector: flat-field + white balance
    (None: nothing to correct); display: the micro-display's geometry.
    """

    objective: str
    homography: Optional[np.ndarray]
    um_per_px: Optional[float]
    um_per_px_source: Optional[str]
    corrector: Optional[FrameCorrector]
    display: Optional[DisplaySpec]

    def correct(self, image: np.ndarray) -> np.ndarray:
        """Flat-field and white-balance an RGB uint8 frame (unchanged if not calibrated)."""
        return image if self.corrector is None else self.corrector.apply(image)

    def to_display(self, camera_px: np.ndarray) -> np.ndarray:
        """Nx2 camera px -> Nx2 display px (identity when not registered)."""
        pts = np.asarray(camera_px, np.float64).reshape(-1, 2)
        return pts.copy() if self.homography is None else apply_homography(self.homography, pts)


class CalibrationStore:
    """Loads objective sections of one profile on demand and keeps them (thread-safe)."""

    def __init__(self, profile: Profile, path: str | os.PathLike):
        self.profile = profile
        self.path = Profile.resolve(path)
        self._cache: dict[str, ObjectiveCalibration] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike) -> CalibrationStore:
        """Load and validate the profile at `path` (file or folder)."""
        return cls(Profile.load(path), path)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def get(self, objective: str) -> ObjectiveCalibration:
        """The calibration of `objective` (UnknownObjectiveError if the profile lacks it)."""
        with self._lock:
            cal = self._cache.get(objective)
            if cal is None:
                cal = self._load(objective)
                self._cache[objective] = cal
            return cal

    def _load(self, objective: str) -> ObjectiveCalibration:
        sec = self.profile.section(objective)
        flat = self.profile.load_array(self.path, objective, "flat")
        dark = self.profile.load_array(self.path, objective, "dark")
        corrector = None
        if flat is not None:
            corrector = FrameCorrector(FlatField(flat, dark), sec.white_balance)
        elif tuple(sec.white_balance) != (1.0, 1.0, 1.0):
            corrector = FrameCorrector(None, sec.white_balance)
        try:
            um, source = self.profile.um_per_px(objective)
        except ValueError:
            um, source = None, None
        return ObjectiveCalibration(
            objective, sec.homography_array(), um, source, corrector, sec.display
        )
