"""A plain `pip install camera-lucida` (no `[host]` extra), as a new user gets it: the repo
installed non-editable into a fresh venv (conftest.core_install, built once per session). Every
subcommand's --help and one real use of each answer without a traceback; host-only commands
say which extra they need (exit 2); `lucida hil smoke` passes and writes its whole report
(JSON, JUnit, HTML without plots) although matplotlib is missing.

Marked `slow` (pip, then ~40 commands): `pytest -m "not slow"` leaves it out; `make test` runs it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ["runtime", "models", "overlay", "calibration", "tools"]
HOST = ["tensorflow", "keras", "sklearn", "scipy", "matplotlib"]
NEEDS_HOST = "this needs `pip install camera-lucida[host]`"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

COMMANDS = """\
import argparse
from lucida.tools.cli import build_parser

def walk(parser, path):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + [name])

for path in walk(build_parser(), []):
    print(" ".join(path))
"""


def test_the_core_install_is_a_real_install_without_the_host_extra(core_install):
    """Every lucida.* subpackage imports from the venv's site-packages (not the source tree),
    the shipped bundles and scenarios travel as package data, no host module is installed."""
    code = (
        "import importlib, importlib.util, json\n"
        f"mods = {['lucida.' + r for r in ROOMS]}\n"
        "paths = [importlib.import_module(m).__file__ for m in mods]\n"
        "import lucida.tools.cli\n"
        "from importlib.resources import files\n"
        "from lucida.models import Registry\n"
        "print(json.dumps({'paths': paths, 'bundles': sorted(Registry().manifests()),\n"
        "  'smoke': (files('lucida.tools.hil') / 'scenarios' / 'smoke.yaml').is_file(),\n"
        f"  'host': [m for m in {HOST} if importlib.util.find_spec(m)]}}))\n"
    )
    out = json.loads(subprocess.check_output([str(core_install.python), "-c", code], text=True))
    assert all(p.startswith(core_install.site) for p in out["paths"]), out["paths"]
    shipped = sorted(p.name for p in (ROOT / "models").iterdir() if (p / "manifest.json").is_file())
    assert out["bundles"] == shipped and out["smoke"]
    assert out["host"] == []  # a real plain install: no TensorFlow, Keras, SciPy, matplotlib
    print(f"fresh venv + pip install: {core_install.seconds:.0f} s (shared machine: noisy)")


def test_every_subcommand_and_step_answers_help(core_install, tmp_path):
    paths = subprocess.check_output(
        [str(core_install.python), "-c", COMMANDS], text=True, cwd=tmp_path
    ).splitlines()
    assert {"quantize", "select", "train-demo", "hil", "run", "calibrate pattern", "bench"} <= set(
        paths
    )
    for path in paths:
        rc, out, err = core_install.run(*path.split(), "--help", cwd=tmp_path)
        assert rc == 0, f"lucida {path} --help: {err[-1500:]}"
        assert out.startswith("usage: lucida") and "Traceback" not in out + err, path
    assert len(paths) >= 25


@pytest.mark.parametrize(
    "args",
    [
        ["candidates", "--count", "1", "--out", "{tmp}/cand"],
        ["train-demo", "--out", "{tmp}/demo", "--epochs", "1"],
        ["quantize", "{tmp}/model.keras", "--calib", "{tmp}", "--out", "{tmp}/q"],
    ],
    ids=lambda a: a[0],
)
def test_host_only_commands_name_the_extra(core_install, args, tmp_path):
    rc, out, err = core_install.run(*[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)
    assert rc == 2, out + err
    assert err.strip().splitlines() == [
        f"lucida {args[0]}: error: " + err.split(": error: ")[1].strip()
    ]
    assert NEEDS_HOST in err and "Traceback" not in out + err
    assert not list(tmp_path.glob("*/*"))  # stopped before any work


def test_python_dash_m_lucida_is_the_lucida_command(core_install, tmp_path):
    out = subprocess.run(
        [str(core_install.python), "-m", "lucida", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.startswith("lucida "), out.stderr[-1500:]


@pytest.fixture()
def he_png(tmp_path) -> Path:
    import cv2

    path = tmp_path / "field.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 256, (128, 128, 3), np.uint8))
    return path


# (args, exit codes accepted); {tmp}: the test's folder, {lymph}: lymph-s's folder, {repo}: here
USES = [
    (["--version"], {0}),
    (["models"], {0}),
    (["check", "{lymph}/cpu.tflite"], {0}),
    (["bundle", "--verify", "lymph-s"], {0}),
    (["compile", "{lymph}/cpu.tflite"], {0, 3}),  # 3: edgetpu_compiler is not installed
    (["infer", "lymph-s", "{tmp}/field.png", "--json"], {0}),
    (["profile", "lymph-s", "--db", "{tmp}/db.json"], {0}),
    (["bench", "engine", "--bundle", "lymph-s", "--runs", "5"], {0}),
    (["select", "lymph-s", "--budget-ms", "50"], {0, 2}),  # 2: nothing measured here
    (["predict", "lymph-s", "--db", "{tmp}/db.json"], {2}),  # 2: needs the host extra
    (["eval", "lymph-s", "--slides", "1000", "--fovs", "1", "--objectives", "10x"], {0}),
    (["demo", "--bundle", "lymph-s", "--frames", "2", "--out", "{tmp}/demo"], {0}),
    (["demo", "--objective", "40x"], {2}),  # no model for 40x: refused, not 60 s of None
    (["demo", "--frames", "-5"], {2}),
    (["deploy", "lymph-s", "--to", "http://127.0.0.1:9", "--token", "x"], {1}),
    (["calibrate", "pattern", "--display", "320x180", "--out", "{tmp}/pattern.png"], {0}),
    (["calibrate", "show", "{tmp}/none.json"], {2}),
    (["run", "--config", "{repo}/examples/virtual.yaml", "--check"], {0}),
    (["hil", "smoke", "--check"], {0}),
]


@pytest.mark.parametrize(
    "args, rc_ok", USES, ids=lambda a: "-".join(a[:2]) if isinstance(a, list) else None
)
def test_one_real_use_per_command_without_a_traceback(core_install, he_png, args, rc_ok, tmp_path):
    lymph = Path(core_install.site, "lucida", "models", "lymph-s")  # the installed copy
    args = [a.format(tmp=tmp_path, lymph=lymph, repo=ROOT) for a in args]
    rc, out, err = core_install.run(*args, cwd=tmp_path)
    assert rc in rc_ok, out[-1500:] + err[-1500:]
    assert "Traceback" not in err and "Traceback" not in out
    if rc:
        assert err.strip().splitlines()[-1].startswith("lucida "), err  # one readable line
    assert "INFO: Created TensorFlow Lite" not in err  # LiteRT's chatter is off by default
    if args[0] == "infer":
        assert json.loads(out)["bundle"] == "lymph-s"
    if args[0] == "run":
        assert (tmp_path / "lucida-state").is_dir()  # --check created what it may


@pytest.fixture(scope="module")
def smoke(core_install, tmp_path_factory):
    """`lucida hil smoke --dut emulated` in the fresh venv: (returncode, stdout, stderr, report)."""
    folder = tmp_path_factory.mktemp("smoke")
    rc, out, err = core_install.run(
        "hil", "smoke", "--dut", "emulated", "--report", folder / "rep", cwd=folder, timeout=600
    )
    return rc, out, err, folder / "rep"


def test_hil_smoke_passes_and_writes_its_report_without_matplotlib(smoke):
    rc, out, err, rep = smoke
    assert rc == 0, out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err
    report = json.loads((rep / "report.json").read_text())
    assert report["verdict"] == "passed" and report["plots_missing"].startswith("no plots")
    assert len(report["steps"]) == 12 and report["counts"]["passed"] == 12, report["counts"]
    assert (rep / "junit.xml").read_text().count("<testcase") == 12
    html = (rep / "report.html").read_text()
    assert "no plots: matplotlib is missing" in html and "data:image/png" not in html
    assert "no plots: matplotlib is missing" in out


def test_audit_reads_what_the_smoke_device_showed(core_install, smoke, tmp_path):
    *_, rep = smoke
    rc, out, err = core_install.run(
        "audit", "--config", rep / "dut" / "lucida.yaml", "--since", "1h", "--json", cwd=tmp_path
    )
    assert rc == 0 and "Traceback" not in err, err
    shown = {r.get("model") for r in map(json.loads, out.splitlines()) if r["shown"] == "overlay"}
    assert shown == {"lymph-m", "lymph-s"}, out[-1500:]  # the start model, then the deployed one
