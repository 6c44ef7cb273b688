"""lucida.calibration: camera -> display registration, pixel size, flat-field and
white balance, colour normalization, and calibration profiles on disk.

Device-side: imports numpy, OpenCV, pydantic and PyYAML only (never lucida.runtime
or lucida.tools).
"""

from .color_norm import (
    LabStats,
    MacenkoNormalizer,
    ReinhardNormalizer,
    StainTarget,
    fit_stain_target,
    fit_target,
    lab_stats,
    normalizer_from_manifest,
)
from .detect import Detection, detect_pattern
from .errors import (
    CalibrationError,
    DegenerateHomographyError,
    ImageReadError,
    MeasurementError,
    PatternNotFoundError,
    ProfileError,
    RefusedInputError,
    TooFewPointsError,
    UnknownObjectiveError,
)
from .flatfield import FlatField, FrameCorrector, nonuniformity
from .homography import apply_homography, check_homography, corner_error
from .manual import Adjustment, ManualRegistration, nominal_homography
from .pattern import PatternSpec, load_pattern, make_pattern, render_pattern, save_pattern
from .pixel_size import PixelSize, measure_pixel_size
from .profile import DisplaySpec, ObjectiveSection, Profile, RegistrationInfo
from .registration import RegistrationResult, register_display
from .store import CalibrationStore, ObjectiveCalibration
from .white_balance import from_patch, grey_world

__all__ = [
    "Adjustment",
    "CalibrationError",
    "CalibrationStore",
    "DegenerateHomographyError",
    "Detection",
    "DisplaySpec",
    "FlatField",
    "FrameCorrector",
    "ImageReadError",
    "LabStats",
    "MacenkoNormalizer",
    "ManualRegistration",
    "MeasurementError",
    "ObjectiveCalibration",
    "ObjectiveSection",
    "PatternNotFoundError",
    "PatternSpec",
    "PixelSize",
    "Profile",
    "ProfileError",
    "RegistrationInfo",
    "RefusedInputError",
    "RegistrationResult",
    "ReinhardNormalizer",
    "StainTarget",
    "TooFewPointsError",
    "UnknownObjectiveError",
    "apply_homography",
    "check_homography",
    "corner_error",
    "detect_pattern",
    "fit_stain_target",
    "fit_target",
    "from_patch",
    "grey_world",
    "lab_stats",
    "load_pattern",
    "make_pattern",
    "measure_pixel_size",
    "nominal_homography",
    "nonuniformity",
    "normalizer_from_manifest",
    "register_display",
    "render_pattern",
    "save_pattern",
]
