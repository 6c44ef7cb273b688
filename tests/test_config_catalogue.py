"""The malformed-config catalogue (issue #20, item 8): every case in
tests/data/malformed_configs.yaml is one small mutation of examples/virtual.yaml, and each one

- makes `lucida run --check` exit non-zero with ONE error line naming the key (no traceback);
- makes a start (`lucida run`) refuse with one line naming the same key, before anything runs.

Both run in-process through `lucida.tools.cli.main` (the real CLI path); a start that is not
refused really starts (HTTP on an ephemeral port) and stops at once, so the case fails. A sample
also runs as real `lucida run` processes, where a native crash (SIGABRT) would show.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CASES = yaml.safe_load((REPO / "tests" / "data" / "malformed_configs.yaml").read_text())
BASE = yaml.safe_load((REPO / "examples" / "virtual.yaml").read_text())
SAMPLE = (  # also run as real processes: a schema error, NaN, YAML, preflight kinds
    "fps-nan",
    "duplicate-top-key",
    "sink-window-no-display",
    "profile-garbage",
    "no-model-for-objective",
    "display-100000x100000",
)


def _fill(value, folder: Path):
    if isinstance(value, str):
        return value.replace("{dir}", str(folder))
    if isinstance(value, list):
        return [_fill(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, folder) for k, v in value.items()}
    return value


def write_case(case: dict, folder: Path) -> Path:
    """The case's config file in `folder` (its files made first)."""
    for name, text in (case.get("files") or {}).items():
        p = folder / name
        if name.endswith("/"):
            p.mkdir(parents=True)
        else:
            p.write_text(text)
    path = folder / "lucida.yaml"
    if "text" in case:
        path.write_text(case["text"])
        return path
    cfg = copy.deepcopy(BASE)
    cfg["http"]["port"] = 0  # a start that is wrongly accepted must not collide
    for dotted, value in (case.get("set") or {}).items():
        *parents, last = dotted.split(".")
        node = cfg
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = _fill(value, folder)
    for dotted in case.get("delete") or ():
        *parents, last = dotted.split(".")
        node = cfg
        for k in parents:
            node = node[k]
        del node[last]
    path.write_text(yaml.safe_dump(cfg, allow_unicode=False))
    return path


@pytest.fixture
def case_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths (state_dir) land here
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    return tmp_path


def _one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("lucida run: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def test_the_catalogue_is_large_and_distinct():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 62
    mutations = [yaml.safe_dump({k: c.get(k) for k in ("set", "text", "files")}) for c in CASES]
    assert len(set(mutations)) == len(mutations)  # no two cases are the same mutation


def test_the_base_config_is_valid(case_dir, capsys):
    from lucida.tools.cli import main

    path = write_case({"id": "base"}, case_dir)
    assert main(["run", "--config", str(path), "--check"]) == 0, capsys.readouterr()


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_check_and_start_refuse_with_one_line_naming_the_key(case, case_dir, capsys, monkeypatch):
    from lucida.runtime.daemon import Daemon
    from lucida.tools.cli import main

    path = write_case(case, case_dir)
    rc = main(["run", "--config", str(path), "--check"])
    out, err = capsys.readouterr()
    assert rc != 0, f"--check accepted it:\n{out}"
    line = _one_error_line(err)
    assert case["key"] in line, line
    if "problem(s) above" in line:  # preflight: the FAIL lines above name the same key
        assert case["key"] in "\n".join(x for x in out.splitlines() if x.startswith("FAIL"))

    started = []

    def start_and_stop(self):  # a start that gets this far was not refused
        started.append(True)
        self.start()
        self.stop()
        return 0

    monkeypatch.setattr(Daemon, "run_forever", start_and_stop)
    rc = main(["run", "--config", str(path)])
    out, err = capsys.readouterr()
    assert not started and rc != 0, f"a start was not refused:\n{out}{err}"
    start_line = _one_error_line(err)
    assert case["key"] in start_line, start_line


@pytest.mark.parametrize("name", SAMPLE)
def test_real_processes_refuse_the_same_way(name, case_dir):
    """`lucida run --check` and `lucida run` as processes: same line as in-process, exit 2."""
    case = next(c for c in CASES if c["id"] == name)
    path = write_case(case, case_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    lines = []
    for extra in (["--check"], []):
        r = subprocess.run(
            [sys.executable, "-m", "lucida.tools.cli", "run", "--config", str(path), *extra],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=case_dir,
        )
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        lines.append(_one_error_line(r.stderr))
        assert case["key"] in lines[-1]
    if "problem(s) above" not in lines[0]:  # a schema error: the very same line
        assert lines[0] == lines[1]
