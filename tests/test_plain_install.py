"""A plain `pip install camera-lucida` (no `[host]` extra): every subcommand answers without a
traceback; host-only commands say which extra they need (exit 2); `lucida hil` still writes its
report (JSON, JUnit, HTML without plots)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SHIM = Path(__file__).with_name("plain_install.py")


def plain(*args, cwd=None, timeout=240):
    """`lucida ARGS` with the host extra missing: (returncode, stdout, stderr)."""
    r = subprocess.run(
        [sys.executable, str(SHIM), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    return r.returncode, r.stdout, r.stderr


def test_every_subcommand_help_works_without_the_host_extra():
    rc, out, err = plain("--all-help")
    assert rc == 0, err[-2000:]
    done = [line.split()[1] for line in out.splitlines() if line.startswith("@@ok ")]
    assert {"quantize", "select", "candidates", "train-demo", "hil", "run", "demo"} <= set(done)
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["candidates", "--count", "1", "--out", "{tmp}/cand"],
        ["train-demo", "--out", "{tmp}/demo", "--epochs", "1"],
        ["quantize", "{tmp}/model.keras", "--calib", "{tmp}", "--out", "{tmp}/q"],
    ],
    ids=lambda a: a[0],
)
def test_host_only_commands_name_the_extra(args, tmp_path):
    rc, out, err = plain(*[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)
    assert rc == 2, out + err
    assert "this needs `pip install camera-lucida[host]`" in err
    assert "Traceback" not in err and not list(tmp_path.glob("*/*"))  # stopped before any work


@pytest.mark.parametrize(
    "args, rc_ok",
    [
        (["--version"], {0}),
        (["check", "{lymph}/cpu.tflite"], {0}),
        (["bundle", "--verify", "lymph-s"], {0}),
        (["compile", "{lymph}/cpu.tflite"], {0, 3}),  # 3: edgetpu_compiler not installed
        (["bench", "engine", "--bundle", "lymph-s", "--runs", "5"], {0}),
        (["select", "lymph-s", "--budget-ms", "50"], {0, 2}),  # 2: nothing measured here
        (["predict", "lymph-s", "--db", "{tmp}/db.json"], {2}),
        (["eval", "lymph-s", "--slides", "1000", "--fovs", "1", "--objectives", "10x"], {0}),
        (["demo", "--bundle", "lymph-s", "--frames", "2", "--out", "{tmp}/demo"], {0}),
        (["demo", "--objective", "40x"], {2}),  # no model for 40x: refused, not 60 s of None
        (["demo", "--frames", "-5"], {2}),
        (["deploy", "lymph-s", "--to", "http://127.0.0.1:9", "--token", "x"], {1}),
        (["calibrate", "show", "{tmp}/none.json"], {2}),
        (["hil", "smoke", "--check"], {0}),
    ],
    ids=lambda a: "-".join(a[:2]) if isinstance(a, list) else None,
)
def test_one_real_use_per_command_without_a_traceback(args, rc_ok, tmp_path):
    from lucida.models.registry import shipped_bundle

    lymph = shipped_bundle("lymph-s").path
    rc, out, err = plain(*[a.format(tmp=tmp_path, lymph=lymph) for a in args], cwd=tmp_path)
    assert rc in rc_ok, out[-1500:] + err[-1500:]
    assert "Traceback" not in err and "Traceback" not in out
    if rc:
        assert err.strip().splitlines()[-1].startswith("lucida "), err  # one readable line
    assert "INFO: Created TensorFlow Lite" not in err  # LiteRT's chatter is off by default


HEALTH_ONLY = """name: health-only
description: the device answers and its golden check passes
dut: {fps: 5, width: 320, height: 180, objective: 10x, models: {task: lymph, num_threads: 1}}
steps:
  - health: {}
"""


@pytest.mark.timeout(300)
def test_hil_writes_its_report_without_matplotlib(tmp_path):
    scenario = tmp_path / "health.yaml"
    scenario.write_text(HEALTH_ONLY)
    rc, out, err = plain("hil", str(scenario), "--report", str(tmp_path / "rep"), cwd=tmp_path)
    assert rc == 0, out[-2000:] + err[-2000:]
    assert "Traceback" not in err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["verdict"] == "passed" and report["plots_missing"].startswith("no plots")
    assert (tmp_path / "rep" / "junit.xml").read_text().count("<testcase") == 1
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "no plots: matplotlib is missing" in html and "data:image/png" not in html
    assert "no plots: matplotlib is missing" in out
