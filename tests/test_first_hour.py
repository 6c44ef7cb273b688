"""A new user's first hour: the README's config checked and started as written (in a temp
folder), the Pi example checked under a temp root, --check naming each missing path."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "lucida.tools.cli"]


def check(config: Path, cwd: Path):
    r = subprocess.run(
        [*CLI, "run", "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    return r.returncode, r.stdout, r.stderr


def test_readme_shows_the_shipped_virtual_example():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The daemon") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert block == (ROOT / "examples" / "virtual.yaml").read_text()


@pytest.mark.timeout(180)
def test_readme_config_checks_then_starts_and_says_where_the_page_is(tmp_path):
    cfg = yaml.safe_load((ROOT / "examples" / "virtual.yaml").read_text())
    cfg["http"]["port"] = 0  # the only change: any free port (8080 may be taken on a test host)
    config = tmp_path / "virtual.yaml"
    config.write_text(yaml.safe_dump(cfg))
    rc, out, err = check(config, tmp_path)
    assert rc == 0, out + err
    assert (
        "ok   state_dir lucida-state: created" in out and (tmp_path / "lucida-state/log").is_dir()
    )
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = re.fullmatch(r"live view: (http://127\.0\.0\.1:\d+)/ \(token in (\S+)\)\n", line)
        assert m, line + proc.stderr.read(2000) if proc.poll() is not None else line
        assert (tmp_path / m.group(2)).read_text().strip()  # the token is where it says
        logs = proc.stdout.readline()
        assert logs.startswith("logs: lucida-state/log/events.jsonl")

        def objective():
            with urllib.request.urlopen(m.group(1) + "/status", timeout=30) as r:
                return json.load(r)["objective"]

        deadline = time.monotonic() + 60  # the first frame of the virtual camera sets it
        while objective() != "10x" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert objective() == "10x"
        with urllib.request.urlopen(m.group(1) + "/", timeout=30) as r:
            assert b"<html" in r.read().lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    events = (tmp_path / "lucida-state/log/events.jsonl").read_text().splitlines()
    assert json.loads(events[-1])["event"] == "daemon_stop"


def test_a_start_without_check_creates_the_log_folder(tmp_path, monkeypatch):
    """`lucida run` straight away (no --check first) must not end in "[Errno 2] ... events.jsonl"."""
    from lucida.runtime.config import load_config
    from lucida.runtime.daemon import Daemon

    monkeypatch.chdir(tmp_path)
    d = Daemon(load_config(ROOT / "examples" / "virtual.yaml"))
    d.events("hello")
    d.events.close()
    lines = (tmp_path / "lucida-state/log/events.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "hello"


def _reroot(text: str, root: Path) -> str:
    """The Pi example with /etc, /var under `root` (devices under /dev are left as they are)."""
    return re.sub(r"(?<=[\s{:\"])/(etc|var)/", lambda m: f"{root}/{m.group(1)}/", text)


def test_pi_example_check_names_what_the_readme_steps_create(tmp_path):
    root = tmp_path / "root"
    config = tmp_path / "config.yaml"
    config.write_text(_reroot((ROOT / "examples" / "pi-coral.yaml").read_text(), root))
    rc, out, err = check(config, tmp_path)
    assert rc == 2 and "problem(s) above" in err
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert any("http.token_file" in f and "token_urlsafe" in f for f in fails), out
    assert any("calibration.profile" in f and "lucida calibrate" in f for f in fails), out
    assert (root / "var/lib/lucida").is_dir() and (root / "var/log/lucida").is_dir()  # created
    # the README's Pi steps: a token file and an empty calibration profile
    (root / "etc/lucida").mkdir(parents=True)
    (root / "etc/lucida/token").write_text("s3cret\n")
    (root / "var/lib/lucida/calibration").mkdir()
    (root / "var/lib/lucida/calibration/profile.yaml").write_text("microscope: arm-1\n")
    rc, out, err = check(config, tmp_path)
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    # what is left is hardware this machine does not have
    assert all(f.startswith(("FAIL source picamera", "FAIL sink fb:/dev/fb0")) for f in fails), out
    assert "ok   http.token_file" in out and "ok   calibration.profile" in out


def test_check_names_a_missing_replay_folder_and_serial_port(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"type": "replay", "path": str(tmp_path / "frames")},
                "serial": {"port": str(tmp_path / "ttyUSB9")},
                "state_dir": str(tmp_path / "state"),
            }
        )
    )
    rc, out, _ = check(config, tmp_path)
    assert rc == 2
    assert f"FAIL source replay {tmp_path / 'frames'}: no such folder of images" in out
    assert f"FAIL serial {tmp_path / 'ttyUSB9'}: no such port" in out
