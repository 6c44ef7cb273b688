"""Errors raised by lucida.calibration, each with the CLI exit code it maps to.

All are ValueError subclasses with one readable message; `lucida calibrate ...`
prints the message on one line and exits with `exit_code`.
"""

from __future__ import annotations


class CalibrationError(ValueError):
    """Bad calibration input (exit code 2 unless a subclass says otherwise)."""

    exit_code = 2


class PatternNotFoundError(CalibrationError):
    """The calibration pattern could not be found in the camera image."""

    exit_code = 3


class TooFewPointsError(CalibrationError):
    """The pattern was seen, but too few of its points to fit a homography."""

    exit_code = 4


class DegenerateHomographyError(CalibrationError):
    """The fitted homography is singular, folds the image, or is too far from affine."""

    exit_code = 5


class ImageReadError(CalibrationError):
    """An image file is missing or cannot be decoded."""

    exit_code = 6


class UnknownObjectiveError(CalibrationError, KeyError):
    """A profile has no section for the requested objective."""

    exit_code = 7

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ProfileError(CalibrationError):
    """A calibration profile file is missing, malformed, or from a newer schema."""

    exit_code = 8


class MeasurementError(CalibrationError):
    """A measurement (pixel size, flat field, colour statistics) could not be made."""

    exit_code = 9


class RefusedInputError(MeasurementError):
    """The input is not what the measurement needs (not a ruling, no tissue, not a blank
    field) or the measurement's own cross-checks disagree: refused rather than guessed."""

    exit_code = 10


EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (
        CalibrationError,
        PatternNotFoundError,
        TooFewPointsError,
        DegenerateHomographyError,
        ImageReadError,
        UnknownObjectiveError,
        ProfileError,
        MeasurementError,
        RefusedInputError,
    )
}
