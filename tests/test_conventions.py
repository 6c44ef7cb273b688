"""What a new user notices first: --version, the LICENSE, README links, quiet logs, no temp
folders left behind, and `lucida deploy` checking the token before it uploads anything."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

from lucida.models import pack_bundle
from lucida.models.registry import shipped_bundle
from lucida.tools.cli import main
from test_daemon import TOKEN, call, daemon  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def lucida(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "lucida.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=cwd,
    )


def test_version_is_the_package_version(capsys):
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"lucida {cfg['metadata']['version']}"


def test_python_dash_m_lucida_runs_the_cli(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lucida", "--version"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("lucida "), out.stderr[-1500:]


def test_license_file_matches_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_readme_links_stay_inside_the_repository_and_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [
        u.split("#")[0] for u in links if not re.match(r"[a-z]+:", u) and not u.startswith("#")
    ]
    assert local, "README links nothing"
    assert not [u for u in local if u.startswith(("..", "/"))], "links outside the repository"
    missing = [u for u in local if u and not (ROOT / u).exists()]
    assert not missing, missing


def test_tar_gz_bundles_leave_no_temp_folder(tmp_path):
    archive = pack_bundle(shipped_bundle("lymph-s").path, tmp_path / "lymph-s.tar.gz")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    before = sorted(p.name for p in tmp.iterdir())
    for args in (
        ["bundle", "--verify", str(archive)],
        ["bench", "engine", "--bundle", str(archive), "--runs", "5"],
        ["eval", str(archive), "--slides", "1000", "--fovs", "1", "--objectives", "10x"],
    ):
        r = lucida(*args, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert sorted(p.name for p in tmp.iterdir()) == before, args  # the listing after
    assert before == []


def test_native_logs_are_quiet_unless_debug(tmp_path):
    quiet = lucida("bench", "engine", "--bundle", "lymph-s", "--runs", "5", cwd=tmp_path)
    loud = lucida(
        "--log-level",
        "DEBUG",
        "bench",
        "engine",
        "--bundle",
        "lymph-s",
        "--runs",
        "5",
        cwd=tmp_path,
    )
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "XNNPACK delegate" not in quiet.stderr
    assert "XNNPACK delegate" in loud.stderr  # nothing is lost: DEBUG shows it


def test_deploy_checks_the_token_before_uploading(daemon, tmp_path, capsys):  # noqa: F811
    incoming = Path(daemon.config.state_dir, "incoming")
    rc = main(["deploy", "lymph-s", "--to", daemon.http.url, "--token", "wrong"])
    err = capsys.readouterr().err
    assert rc == 1 and "refused the token (403" in err and "nothing was uploaded" in err
    assert not incoming.exists() or not any(incoming.iterdir())
    assert call(daemon, "GET", "/status")[1]["model"] == "tiny"


def test_deploy_accepts_a_shipped_name_and_goes_back_to_it(daemon, capsys):  # noqa: F811
    rc = main(["deploy", "lymph-s", "--to", daemon.http.url, "--token", TOKEN, "--json"])
    assert rc == 0, capsys.readouterr().err
    assert '"model": "lymph-s"' in capsys.readouterr().out
    assert call(daemon, "GET", "/status")[1]["model"] == "lymph-s"


def test_models_lists_what_the_device_holds(daemon, capsys):  # noqa: F811
    code, inv = call(daemon, "GET", "/models")
    assert code == 200 and inv["running"]["model"] == "tiny"
    assert inv["objectives"]["10x"] == "tiny" and inv["objectives"]["40x"] is None
    assert any(b["name"] == "tiny" for b in inv["bundles"])
    assert main(["models", "--to", daemon.http.url]) == 0
    out = capsys.readouterr().out
    assert "running: tiny" in out and "40x -> no model" in out
    assert main(["models"]) == 0  # this host: the shipped bundles
    assert "lymph-m" in capsys.readouterr().out
