"""Shared fixtures: real int8 TFLite bundles built with TensorFlow, and the fake Edge TPU library."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TESTS = Path(__file__).resolve().parent


def _calib(n=24, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """An int8 (uint8 I/O) 64x64 fully-convolutional bundle with golden I/O, objectives 10x/20x."""
    from lucida.tools.demo.tiny_models import tiny_fcn
    from lucida.tools.toolchain.bundle import build_bundle
    from lucida.tools.toolchain.convert import quantize_keras

    samples = _calib()
    tfl = quantize_keras(tiny_fcn((64, 64)), samples)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return build_bundle(
        out,
        name="tiny",
        task="test",
        objectives=["10x", "20x"],
        cpu_tflite=tfl,
        golden_input=samples[0].astype(np.uint8),
        um_per_px=1.0,
        stride=(48, 48),
    )


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    """A writable copy of the tiny bundle folder (for tests that break it)."""
    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle.path, dst)
    return dst


def rewrite_manifest(folder: Path, **changes) -> None:
    """Edit manifest.json in place (tests only: no re-hash)."""
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    for dotted, value in changes.items():
        node = m
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    p.write_text(json.dumps(m))


@pytest.fixture(scope="session")
def fake_edgetpu_lib(tmp_path_factory):
    """tests/fake_edgetpu.c compiled to a shared library with gcc."""
    out = tmp_path_factory.mktemp("fake_edgetpu") / "libfake_edgetpu.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-o", str(out), str(TESTS / "fake_edgetpu.c")],
        check=True,
    )
    return out


@pytest.fixture()
def fake_tpu_env(fake_edgetpu_lib, tmp_path, monkeypatch):
    """A function (devices "usb:0,usb:1") -> the delegate's create log: the fake Edge TPU library
    in place of libedgetpu with those devices present, in pass-through mode, no failures."""

    def use(devices: str) -> Path:
        log = tmp_path / "delegate.log"
        monkeypatch.setenv("LUCIDA_EDGETPU_LIB", str(fake_edgetpu_lib))
        monkeypatch.setenv("FAKE_EDGETPU_LOG", str(log))
        monkeypatch.setenv("FAKE_EDGETPU_DEVICES", devices)
        for k in ("FAIL_FIRST", "INVOKE_MS", "FAIL_AFTER", "FAIL_DEVICE"):
            monkeypatch.delenv(f"FAKE_EDGETPU_{k}", raising=False)
        return log

    return use


def replay_frames(folder: Path, n: int = 4, size: tuple[int, int] = (128, 96)) -> Path:
    """A folder of n random RGB PNG frames (width x height) for a replay source."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
    return folder


def daemon_config(tmp_path: Path, bundle, source: dict, token: str, **extra) -> dict:
    """A daemon config running `bundle` (task "test") on `source`, HTTP on any loopback port,
    state and the event log under tmp_path; the display matches the source's size."""
    return {
        "source": source,
        "models": {
            "task": "test",
            "dirs": [str(bundle.path.parent)],
            "num_threads": 1,
            "overrides": {"test": {"default": {"bundle": bundle.name}}},
        },
        "display": {"width": source.get("width", 1920), "height": source.get("height", 1080)},
        "http": {"port": 0, "token": token},
        "state_dir": str(tmp_path / "state"),
        "log": {"events": str(tmp_path / "events.jsonl")},
        **extra,
    }


@pytest.fixture()
def tpu_bundle(tiny_bundle, tmp_path):
    """The tiny bundle plus an edgetpu.tflite (the same graph: a fake delegate claims no ops
    unless it runs in its timed mode)."""
    from lucida.models import write_bundle

    m = tiny_bundle.manifest.model_dump(mode="json")
    files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
    files["edgetpu.tflite"] = files["cpu.tflite"]
    return write_bundle(tmp_path / "tpu", m, files)


@dataclass(frozen=True)
class CoreInstall:
    """`pip install camera-lucida` (no extras) in a fresh venv: its python, lucida, site-packages."""

    python: Path
    lucida: Path
    site: str
    seconds: float  # how long venv + pip took (noisy: shared CI machine)

    def run(self, *args, cwd=None, timeout=300):
        """`lucida ARGS` in the fresh venv: (returncode, stdout, stderr)."""
        r = subprocess.run(
            [str(self.lucida), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        )
        return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="session")
def core_install(tmp_path_factory) -> CoreInstall:
    """The repo installed non-editable, core install only, into a new venv: once per test session
    (pytest-xdist workers share it through a lock file in the session's temp folder)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    venv, done = root / "core-venv", root / "core-venv.json"
    with open(root / "core-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(venv, ignore_errors=True)
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
            env.pop("PYTHONPATH", None)
            r = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(TESTS.parent)],
                capture_output=True,
                text=True,
                env=env,
            )
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
            site = subprocess.check_output(
                [
                    str(venv / "bin" / "python"),
                    "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                ],
                text=True,
            ).strip()
            done.write_text(json.dumps({"site": site, "seconds": time.monotonic() - t0}))
    info = json.loads(done.read_text())
    return CoreInstall(
        venv / "bin" / "python", venv / "bin" / "lucida", info["site"], info["seconds"]
    )


def run_cli(*args, timeout: float = 400) -> subprocess.CompletedProcess:
    """`python -m lucida.tools.cli ARGS` in a subprocess, stopped cleanly on any way out.

    On a timeout, a failed test (pytest-timeout) or Ctrl-C, the command gets SIGTERM first, so
    `lucida hil` stops its emulated daemon and nosepiece (its SIGTERM handler), then SIGKILL
    after 30 s; the emulated daemon also dies with the bench (tools/hil/dut.py)."""
    import signal
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "lucida.tools.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
