"""Where the real third-party images are (../shared/realdata next to the repo), and a
skip with the reason when they are not there (a fresh clone has no ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REALDATA = Path(
    os.environ.get(
        "LUCIDA_REALDATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata"
    )
).resolve()


def real(*parts: str) -> Path:
    """Path of a real image, or skip the test saying what is missing."""
    p = REALDATA.joinpath(*parts)
    if not p.is_file():
        pytest.skip(f"real image {p} is absent (../shared/realdata is not in a fresh clone)")
    return p
