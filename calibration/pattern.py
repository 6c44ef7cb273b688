"""The registration target shown on the micro-display: a ChArUco board.

A ChArUco board is a chessboard whose white squares hold ArUco markers. Every
chessboard corner has an id, so any part of the board that the camera sees
(through a round eyepiece field, over tissue, blurred) gives labelled points;
the chessboard X-corners refine to sub-pixel accuracy.

Coordinates are display pixels with pixel centres at integers (OpenCV's
convention): the edge between pixel columns 99 and 100 is at x = 99.5.
The board is white light on black; black display pixels emit nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .atomic import atomic_write_text
from .errors import CalibrationError, ImageReadError
from .imageio import write_image

SIDECAR_VERSION = 1

# Dictionaries by size; the smallest that has enough markers is chosen.
_DICTIONARIES = [
    ("DICT_4X4_50", 50),
    ("DICT_4X4_100", 100),
    ("DICT_4X4_250", 250),
    ("DICT_4X4_1000", 1000),
    ("DICT_5X5_1000", 1000),
]


class PatternSpec(BaseModel):
    """Geometry of a ChArUco pattern on a display (all lengths in display px).

    display: (width, height) of the display.
    squares: (columns, rows) of chessboard squares.
    square_px / marker_px: side of a square / of the marker inside a white square.
    origin: display px of the board's top-left outer edge (an edge, not a pixel centre).
    dictionary: the ArUco dictionary name in cv2.aruco.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str = "charuco"
    version: int = SIDECAR_VERSION
    display: tuple[int, int]
    squares: tuple[int, int]
    square_px: int = Field(gt=7)
    marker_px: int = Field(gt=5)
    origin: tuple[int, int]
    dictionary: str
    points: list[tuple[int, float, float]] = Field(
        default_factory=list,
        description="(corner id, x, y) in display px, pixel centres at integers",
    )

    def board(self) -> cv2.aruco.CharucoBoard:
        """The cv2.aruco board for this pattern (lengths in display px)."""
        name = getattr(cv2.aruco, self.dictionary, None)
        if name is None:
            raise CalibrationError(f"pattern dictionary {self.dictionary!r} is not in cv2.aruco")
        dictionary = cv2.aruco.getPredefinedDictionary(name)
        return cv2.aruco.CharucoBoard(
            tuple(self.squares), float(self.square_px), float(self.marker_px), dictionary
        )

    def corner_points(self) -> np.ndarray:
        """Nx2 float64 display px of every ChArUco corner, indexed by corner id."""
        cols, rows = self.squares
        ox, oy = self.origin
        i, j = np.meshgrid(np.arange(1, cols), np.arange(1, rows))
        x = ox + i.ravel() * self.square_px - 0.5
        y = oy + j.ravel() * self.square_px - 0.5
        return np.stack([x, y], axis=1).astype(np.float64)


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080)."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise CalibrationError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 1920x1080") from None
    if w < 64 or h < 64 or w > 16384 or h > 16384:
        raise CalibrationError(f"size {text!r} is out of range: each side must be 64..16384 px")
    return w, h


def make_pattern(
    display: tuple[int, int], squares_short: int = 10, margin_px: int | None = None
) -> PatternSpec:
    """A ChArUco pattern filling a display of `display` (width, height) px.

    squares_short: number of squares along the display's short side (more squares:
    more points, but smaller markers, which blur away sooner).
    """
    w, h = display
    if squares_short < 3:
        raise CalibrationError(f"squares along the short side must be >= 3, got {squares_short}")
    margin = int(round(min(w, h) * 0.02)) if margin_px is None else int(margin_px)
    square = (min(w, h) - 2 * margin) // squares_short
    if square < 16:
        raise CalibrationError(
            f"display {w}x{h} with {squares_short} squares gives {square} px squares; need >= 16"
        )
    cols = (w - 2 * margin) // square
    rows = (h - 2 * margin) // square
    origin = ((w - cols * square) // 2, (h - rows * square) // 2)
    n_markers = (cols * rows) // 2
    dictionary = next((name for name, size in _DICTIONARIES if size >= n_markers), None)
    if dictionary is None:
        raise CalibrationError(
            f"{n_markers} markers do not fit one ArUco dictionary; use fewer squares"
        )
    spec = PatternSpec(
        display=(w, h),
        squares=(cols, rows),
        square_px=square,
        marker_px=int(round(square * 0.7)),
        origin=origin,
        dictionary=dictionary,
    )
    pts = spec.corner_points()
    spec.points = [(int(k), float(x), float(y)) for k, (x, y) in enumerate(pts)]
    return spec


def render_pattern(spec: PatternSpec) -> np.ndarray:
    """HxWx3 uint8 RGB display image: the white-on-black board at its origin."""
    w, h = spec.display
    cols, rows = spec.squares
    board_img = spec.board().generateImage(
        (cols * spec.square_px, rows * spec.square_px), marginSize=0, borderBits=1
    )
    out = np.zeros((h, w), np.uint8)
    ox, oy = spec.origin
    out[oy : oy + board_img.shape[0], ox : ox + board_img.shape[1]] = board_img
    return cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)


def sidecar_path(pattern_png: str | os.PathLike) -> Path:
    """pattern.png -> pattern.json (the sidecar with the pattern's geometry and points)."""
    return Path(pattern_png).with_suffix(".json")


def save_pattern(spec: PatternSpec, png_path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the pattern PNG and its JSON sidecar (both atomically)."""
    png = write_image(png_path, render_pattern(spec))
    side = atomic_write_text(sidecar_path(png), spec.model_dump_json(indent=1) + "\n")
    return png, side


def load_pattern(path: str | os.PathLike) -> PatternSpec:
    """Load a pattern from its PNG path (reads the sidecar next to it) or the sidecar itself."""
    p = Path(path)
    side = p if p.suffix.lower() == ".json" else sidecar_path(p)
    if not side.is_file():
        raise ImageReadError(
            f"pattern sidecar {str(side)!r} not found; make the pattern with `lucida calibrate pattern`"
        )
    try:
        return PatternSpec.model_validate(json.loads(side.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise CalibrationError(f"pattern sidecar {str(side)!r} is invalid: {first}") from None
