"""Packaging: the rooms keep their borders (the non-editable install itself: test_plain_install)."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ["runtime", "models", "overlay", "calibration", "tools"]
FORBIDDEN = {
    "runtime": {"lucida.tools", "tensorflow", "keras"},
    "overlay": {"lucida.runtime", "lucida.tools", "tensorflow", "keras"},
    "calibration": {"lucida.runtime", "lucida.tools", "tensorflow", "keras"},
    "models": {"lucida.runtime", "lucida.tools", "tensorflow", "keras"},
}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.ImportFrom) and node.level >= 2:
            yield "lucida." + (node.module or "").split(".")[0]


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_do_not_import_what_they_must_not(room):
    bad = []
    for path in (ROOT / room).rglob("*.py"):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[room]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad


# tools/ rooms import each other only through these (README's design section says why).
TOOLS_SHARED = {
    "lucida.tools.cli",  # the one entry point (the HIL bench starts `lucida run` through it)
    "lucida.tools.toolchain.convert",  # Keras -> int8 TFLite (demo models, latency candidates)
    "lucida.tools.toolchain.bundle",  # build a bundle from TFLite bytes
    "lucida.tools.toolchain.tflite_reader",  # TF-free flatbuffer reader (op costs, features)
    "lucida.tools.toolchain.compile",  # the compiler-log parser (predictor features)
    "lucida.tools.toolchain.edgetpu_rules",  # per-op Edge TPU verdicts (latency predictor)
    "lucida.tools.toolchain.deploy",  # POST to a device's daemon (remote profiling)
    "lucida.tools.hil.client",  # the HTTP client of a device's daemon (deploy)
    "lucida.tools.demo.tiny_models",  # Keras architectures: the bench builds its bundles on them
}
TOOLS_ROOMS = sorted(p.name for p in (ROOT / "tools").iterdir() if (p / "__init__.py").is_file())


def test_tools_has_rooms_and_nothing_loose():
    loose = sorted(
        p.name for p in (ROOT / "tools").glob("*.py") if p.name not in ("__init__.py", "cli.py")
    )
    assert not loose, f"modules at tools/ level: {loose}"
    assert {"toolchain", "latency", "calibrate", "demo", "bench", "hil"} <= set(TOOLS_ROOMS)


@pytest.mark.parametrize("room", TOOLS_ROOMS)
def test_tools_rooms_import_each_other_only_through_shared_modules(room):
    bad = []
    for path in (ROOT / "tools" / room).rglob("*.py"):
        for name in _imports(path):
            if not name.startswith("lucida.tools.") or name.startswith(f"lucida.tools.{room}"):
                continue
            if name not in TOOLS_SHARED:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad


def test_pycoral_from_pypi_is_never_a_dependency():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    text = cfg["options"]["install_requires"] + "".join(cfg["options.extras_require"].values())
    assert "pycoral" not in text.lower()
