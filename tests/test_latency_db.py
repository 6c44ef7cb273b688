"""Latency database and `lucida profile`: nothing measured twice, targets keyed apart, the remote
path through a real daemon on loopback, the measurement protocol's counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import daemon_config, replay_frames
from lucida.runtime.config import parse_config
from lucida.runtime.daemon import Daemon
from lucida.tools.cli import main
from lucida.tools.latency import profile as profile_cmd
from lucida.tools.latency.db import LatencyDB, LatencyDBError, Measurement, local_target
from lucida.tools.latency.profile import HostDrift, measure, profile_local, profile_remote

TOKEN = "bench-token"
FAST = dict(runs=5, seconds=0.05, window_s=0.01)


@pytest.fixture()
def db(tmp_path):
    with LatencyDB(tmp_path / "lat.sqlite") as d:
        yield d


@pytest.fixture()
def counted(monkeypatch):
    """Wrap the protocol so a test sees which models were actually timed."""
    timed: list[str] = []
    real = profile_cmd.measure

    def spy(fns, *a, **kw):
        timed.extend(fns)
        kw["warmup_s"] = 0.01
        return real(fns, *a, **kw)

    monkeypatch.setattr(profile_cmd, "measure", spy)
    return timed


def test_second_profile_of_a_known_model_is_served_from_the_db(tiny_bundle, db, counted):
    first = profile_local([str(tiny_bundle.path)], db, **FAST)
    again = profile_local([str(tiny_bundle.path)], db, **FAST)
    assert [r["cached"] for r in first] == [False]
    assert [r["cached"] for r in again] == [True]
    assert counted == [tiny_bundle.sha256()]  # timed once, not twice
    assert again[0]["p50_ms"] == first[0]["p50_ms"]
    m = db.model(tiny_bundle.sha256())
    assert m["kind"] == "bundle" and m["features"]["totals"]["macs"] > 0


def test_the_same_model_named_twice_is_timed_once(tiny_bundle, db, counted):
    rows = profile_local([str(tiny_bundle.path), str(tiny_bundle.path)], db, **FAST)
    assert len(rows) == 1 and counted == [tiny_bundle.sha256()]


def test_another_target_or_force_measures_again(tiny_bundle, db, counted):
    profile_local([str(tiny_bundle.path)], db, threads=1, **FAST)
    rows = profile_local([str(tiny_bundle.path)], db, threads=2, **FAST)
    assert not rows[0]["cached"] and rows[0]["target"].endswith("/t2/wall")
    forced = profile_local([str(tiny_bundle.path)], db, threads=1, force=True, **FAST)
    assert not forced[0]["cached"]
    assert len(counted) == 3
    assert {t for t, _ in db.targets()} == {local_target(1), local_target(2)}


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory):
    """A second, different int8 model (width 4) as a bundle."""
    from lucida.tools.demo.tiny_models import tiny_fcn
    from lucida.tools.toolchain.bundle import build_bundle
    from lucida.tools.toolchain.convert import quantize_keras

    rng = np.random.default_rng(1)
    samples = [rng.integers(0, 256, (64, 64, 3)).astype(np.float32) for _ in range(3)]
    return build_bundle(
        tmp_path_factory.mktemp("other") / "other",
        name="other",
        task="test",
        objectives=["10x"],
        cpu_tflite=quantize_keras(tiny_fcn((64, 64), width=4), samples),
        golden_input=samples[0].astype(np.uint8),
    )


def test_a_later_session_is_put_on_the_targets_scale_by_anchors(
    tiny_bundle, other_bundle, db, monkeypatch
):
    """The host runs 2x slower in the second session: the anchor (tiny, known from the first
    session) shows it, and the new model's figures are halved onto the first session's scale."""
    p50 = {tiny_bundle.sha256(): 1.0}

    def fake_measure(fns, *a, **kw):
        out = {}
        for k in fns:
            slow = 2.0 if k.startswith("anchor:") else 1.0
            v = p50.get(k.removeprefix("anchor:"), 3.0) * slow
            out[k] = {
                "p50_ms": v,
                "p90_ms": v * 1.2,
                "p99_ms": v * 1.5,
                "runs": 50,
                "windows": 40,
                "seconds": 1.0,
                "clock": "cpu",
            }
        return out

    monkeypatch.setattr(profile_cmd, "measure", fake_measure)
    first = profile_local([str(tiny_bundle.path)], db)[0]
    assert first["p50_ms"] == 1.0 and first["scale"] == 1.0 and first["anchors"] == 0
    second = profile_local([str(other_bundle.path)], db)[0]
    assert second["anchors"] == 1 and second["scale"] == 2.0
    assert second["p50_ms"] == 1.5 and second["p90_ms"] == pytest.approx(1.8)
    assert db.get(tiny_bundle.sha256(), first["target"]).p50_ms == 1.0  # anchors stay as they were
    none = profile_local([str(other_bundle.path)], db, force=True, anchors=0)[0]
    assert none["scale"] == 1.0 and none["p50_ms"] == 3.0


def test_host_drift_interpolates_over_latency_and_clamps():
    # anchors: 0.1 ms then -> 0.06 now (0.6x), 1 -> 0.7, 10 -> 8 (0.8x)
    d = HostDrift([(0.1, 0.06), (1.0, 0.7), (10.0, 8.0)])
    assert d.scale(0.06) == pytest.approx(0.6, rel=0.05)
    assert d.scale(8.0) == pytest.approx(0.8, rel=0.05)
    assert d.scale(0.7) == pytest.approx(0.7, rel=0.05)
    assert d.scale(1e-4) == pytest.approx(d.scale(0.05), rel=0.01)  # clamped below the anchors
    assert d.scale(1e4) == pytest.approx(d.scale(20.0), rel=0.01)  # and above
    assert HostDrift([(1.0, 2.0)]).scale(5.0) == 2.0  # one anchor: its ratio
    assert HostDrift([]).scale(5.0) == 1.0  # none: the target's first session


def test_cli_profile_json_then_cached(tiny_bundle, tmp_path, capsys):
    args = ["profile", str(tiny_bundle.path), "--db", str(tmp_path / "l.sqlite"), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["cached"] is False and second["cached"] is True
    assert first["runs"] >= 50 and first["seconds"] >= 1.0
    assert first["p50_ms"] <= first["p90_ms"] <= first["p99_ms"]
    assert first["clock"] == "cpu" and first["threads"] == 1
    assert first["backend"].endswith("/cpu") and first["versions"]


def test_cli_refuses_a_shorter_protocol(tiny_bundle, tmp_path, capsys):
    assert main(["profile", str(tiny_bundle.path), "--runs", "10"]) == 2
    assert "--runs must be >= 50" in capsys.readouterr().err


def test_protocol_discards_first_call_and_meets_minimums():
    calls = {"a": 0, "b": 0}

    def fn(k):
        def f():
            calls[k] += 1

        return f

    out = measure(
        {"a": fn("a"), "b": fn("b")}, min_runs=50, min_seconds=0.02, warmup_s=0.01, window_s=0.004
    )
    for k in "ab":
        assert out[k]["runs"] >= 50 and out[k]["windows"] == 5
        assert calls[k] > out[k]["runs"]  # the first call and the warm-up are not timed
        assert out[k]["seconds"] >= 0.02


def test_not_a_database_is_one_clear_error(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LatencyDBError, match="not a latency database"):
        LatencyDB(bad)


def test_measurement_round_trip(db):
    m = Measurement("ab" * 32, "t", "be/cpu", "cpu", 1.0, 2.0, 3.0, 60, versions={"x": "1"})
    db.put(m)
    got = db.get("ab" * 32, "t")
    assert got.p90_ms == 2.0 and got.versions == {"x": "1"}
    assert db.get("ab" * 32, "t", backend="other/cpu") is None
    assert db.get("ab" * 32, "other-target") is None


# -- remote: the daemon's /benchmark on loopback ------------------------------------------------
@pytest.fixture()
def daemon(tiny_bundle, tmp_path):
    frames = replay_frames(tmp_path / "frames", 2)
    source = {"type": "replay", "path": str(frames), "fps": 5, "width": 128, "height": 96}
    cfg = parse_config(daemon_config(tmp_path, tiny_bundle, source, TOKEN))
    d = Daemon(cfg)
    d.start()
    yield d
    d.stop()


def test_remote_profile_through_the_daemon_then_cached(daemon, tiny_bundle, db):
    url = daemon.http.url
    rows = profile_remote(["tiny"], db, url, TOKEN, runs=50)
    r = rows[0]
    assert not r["cached"] and r["target"] == url.rstrip("/")
    assert r["sha256"] == tiny_bundle.sha256() and r["runs"] >= 50
    assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    # a local copy of the same bundle: its hash is known for that target, nothing is re-measured
    again = profile_remote([str(tiny_bundle.path)], db, url, TOKEN, runs=50)
    assert again[0]["cached"] and again[0]["p50_ms"] == r["p50_ms"]


def test_remote_profile_with_a_wrong_token_says_so(daemon, tmp_path, capsys):
    rc = main(
        [
            "profile",
            "tiny",
            "--target",
            daemon.http.url,
            "--token",
            "nope",
            "--db",
            str(tmp_path / "l.sqlite"),
        ]
    )
    assert rc == 1
    assert "device refused (403): wrong token" in capsys.readouterr().err
