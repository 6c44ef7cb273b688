"""The audit trail: what the eyepiece showed, on disk, rotated and capped, read by `lucida audit`."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from lucida.runtime.audit import AuditTrail, audit_files, read_audit
from lucida.tools.cli import main
from lucida.tools.device.audit import parse_since
from test_daemon import call, daemon, wait_for  # noqa: F401  (fixture)


def result(areas_um2, model="m", objective="10x"):
    regions = SimpleNamespace(areas_um2=areas_um2, areas_px2=[a / 4 for a in areas_um2])
    return SimpleNamespace(model=model, regions=regions, frame=SimpleNamespace(objective=objective))


def ctx():
    return {"model_sha256": "ab" * 32, "threshold": 0.5, "calibration_revision": 3}


def test_records_changes_only_and_never_blocks(tmp_path):
    trail = AuditTrail(tmp_path / "a.jsonl", ctx)
    for _ in range(50):  # the same overlay, frame after frame: one record
        trail("overlay", 1, result=result([1000.0, 500.0]))
    trail("overlay", 2, result=result([1040.0, 500.0]))  # +3 % area: same record
    trail("overlay", 3, result=result([2000.0, 500.0]))  # +60 %: new record
    trail("blank", 4, reason="stage moving", frame=SimpleNamespace(objective="10x"))
    trail("blank", 5, reason="stage moving", frame=SimpleNamespace(objective="10x"))
    trail("clear_request", 6, reason="turret")  # asked, not shown
    trail("overlay", 7, result=result([2000.0, 500.0], objective="20x"))
    trail.close()
    recs = list(read_audit(tmp_path / "a.jsonl"))
    assert [r["shown"] for r in recs] == ["overlay", "overlay", "nothing", "overlay"]
    first = recs[0]
    assert first["areas_um2"] == [1000.0, 500.0] and first["regions"] == 2
    assert first["model_sha256"] == "ab" * 32 and first["threshold"] == 0.5
    assert first["calibration_revision"] == 3 and first["objective"] == "10x"
    assert recs[2]["reason"] == "stage moving" and recs[2]["model_sha256"] is None
    assert recs[3]["objective"] == "20x"


def test_rotates_and_stays_under_its_cap(tmp_path):
    trail = AuditTrail(tmp_path / "a.jsonl", ctx, max_bytes=4000, backups=2)
    for i in range(400):
        trail("overlay", i, result=result([100.0 * (i % 2 + 1)] * 3))
    trail.close()
    files = audit_files(tmp_path / "a.jsonl")
    assert [f.name for f in files] == ["a.jsonl.2", "a.jsonl.1", "a.jsonl"]
    assert sum(f.stat().st_size for f in files) <= 4000 * 3
    t = [r["t_ns"] for r in read_audit(tmp_path / "a.jsonl")]
    assert t == sorted(t) and t[-1] == 399  # oldest removed first, newest kept


def test_writing_is_off_the_render_thread(tmp_path):
    trail = AuditTrail(tmp_path / "a.jsonl", ctx)
    release = threading.Event()
    original = trail._handler.emit

    def stalled_disk(record):  # the disk does not answer until released
        release.wait(30)
        original(record)

    trail._handler.emit = stalled_disk
    for i in range(5):  # would hang here (30 s each) if the caller wrote the file itself
        trail("overlay", i, result=result([100.0 * 2**i]))
    assert trail.written == 5 and not release.is_set()
    assert (tmp_path / "a.jsonl").stat().st_size == 0  # nothing written yet: it is queued
    release.set()
    trail.close()
    assert len(list(read_audit(tmp_path / "a.jsonl"))) == 5


def test_parse_since():
    now = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-11-29T10:00", now) == datetime(2026, 11, 29, 10, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="expected an ISO time"):
        parse_since("yesterday", now)


@pytest.mark.timeout(120)
def test_daemon_keeps_the_trail_and_reports_disk(daemon, tmp_path, capsys):  # noqa: F811
    assert wait_for(lambda: daemon.pipeline.stats.counts["displayed"] > 3)
    code, st = call(daemon, "GET", "/status")
    assert code == 200 and st["disk"]["disk_free_bytes"] > 0
    assert st["disk"]["audit_cap_bytes"] >= st["disk"]["audit_bytes"]
    code, metrics = call(daemon, "GET", "/metrics")
    assert "lucida_disk_free_bytes" in metrics and "lucida_audit_bytes" in metrics
    call(daemon, "POST", "/overlay", {"enabled": False})
    time.sleep(0.5)
    path = Path(daemon.config.state_dir, "audit", "audit.jsonl")
    assert wait_for(lambda: path.exists() and path.stat().st_size > 0)
    rc = main(["audit", "--file", str(path), "--since", "10m"])
    out = capsys.readouterr().out
    assert rc == 0 and "model tiny" in out and "region(s)" in out
    rc = main(["audit", "--file", str(path), "--json"])
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    shown = [r for r in recs if r["shown"] == "overlay"]
    assert shown[0]["model"] == "tiny" and len(shown[0]["model_sha256"]) == 64
    assert np.all([r["objective"] == "10x" for r in recs if r["shown"] == "overlay"])
