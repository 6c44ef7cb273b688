"""The overlay room's error type."""

from __future__ import annotations


class OverlayError(ValueError):
    """Bad input to the overlay: contour parameters, canvases, sink specs or display files.

    The message is one readable line naming the thing and what was expected.
    """

    exit_code = 2
