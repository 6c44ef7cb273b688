"""lucida.calibration is device-side: no lucida.runtime, lucida.tools or TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lucida.calibration

ROOT = Path(lucida.calibration.__file__).resolve().parent
FORBIDDEN = ("lucida.runtime", "lucida.tools", "tensorflow", "sklearn", "matplotlib")


def test_calibration_sources_do_not_import_forbidden_rooms():
    bad = []
    for path in sorted(ROOT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert not bad


def test_importing_calibration_loads_no_runtime_or_tools():
    code = (
        "import sys, lucida.calibration; "
        "print([m for m in sys.modules if m.startswith(('lucida.runtime', 'lucida.tools', 'tensorflow'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
