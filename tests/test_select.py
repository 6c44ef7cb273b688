"""`lucida select`: budget arithmetic, tiles per frame, the pick, measured vs predicted latency,
nothing fits (clear answer, exit 1), the Pareto plot, MNAS soft objective, regret evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lucida.models.bundle import update_manifest
from lucida.tools.cli import main
from lucida.tools.latency.db import LatencyDB, Measurement
from lucida.tools.latency.pareto import regret
from lucida.tools.latency.select import (
    DEFAULT_OVERHEAD_MS,
    Choice,
    NothingFits,
    SelectError,
    frame_budget_ms,
    pick,
    tiles_per_frame,
)

TARGET = "test-target"
# (name, width, fov_auc at 20x, measured p90 ms per invoke or None)
FAMILY = (
    ("fam-s", 4, 0.80, 0.5),
    ("fam-m", 8, 0.85, 1.0),
    ("fam-l", 16, 0.90, 2.0),
    ("fam-xl", 24, 0.95, None),  # never measured: select must predict it
)
MEASURED = ("fam-s", "fam-m", "fam-l")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """Three different int8 models as bundles with fov_auc metrics written into the manifests."""
    from lucida.tools.demo.tiny_models import tiny_fcn
    from lucida.tools.toolchain.bundle import build_bundle
    from lucida.tools.toolchain.convert import quantize_keras

    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 256, (64, 64, 3)).astype(np.float32) for _ in range(4)]
    root = tmp_path_factory.mktemp("family")
    out = {}
    for name, width, auc, _ in FAMILY:
        b = build_bundle(
            root / name,
            name=name,
            task="test",
            objectives=["10x", "20x"],
            cpu_tflite=quantize_keras(tiny_fcn((64, 64), width=width), samples),
            golden_input=samples[0].astype(np.uint8),
            um_per_px=4.0,
            stride=(48, 48),
        )
        update_manifest(b.path, metrics={"fov_auc": {"10x": auc - 0.05, "20x": auc}})
        out[name] = b
    return out


@pytest.fixture()
def db_path(family, tmp_path):
    """A DB where the family is measured on TARGET (figures written, not timed)."""
    path = tmp_path / "lat.sqlite"
    with LatencyDB(path) as db:
        for name, _, _, p90 in FAMILY[:3]:
            db.put(
                Measurement(
                    family[name].sha256(), TARGET, "be/cpu", "cpu", p90 * 0.8, p90, p90 * 1.2, 60
                )
            )
    return path


def _select(family, db_path, tmp_path, *extra, names=None):
    paths = [str(family[n].path) for n in (names or MEASURED)]
    return main(
        [
            "select",
            *paths,
            "--target",
            TARGET,
            "--db",
            str(db_path),
            "--plot",
            str(tmp_path / "p.png"),
            "--json",
            *extra,
        ]
    )


def test_budget_arithmetic():
    assert frame_budget_ms(50.0, None, 8.0) == 50.0  # --budget-ms is inference time per frame
    assert frame_budget_ms(None, 10.0, 8.0) == pytest.approx(92.0)  # 100 ms frame - overhead
    assert frame_budget_ms(None, 25.0, 0.0) == pytest.approx(40.0)
    with pytest.raises(SelectError, match="exactly one"):
        frame_budget_ms(None, None, 0.0)
    with pytest.raises(SelectError, match="exactly one"):
        frame_budget_ms(10.0, 10.0, 0.0)
    with pytest.raises(NothingFits, match="leaves no time") as e:
        frame_budget_ms(None, 200.0, 8.0)  # 5 ms frames, 8 ms capture + render
    assert e.value.exit_code == 1


def test_tiles_per_frame_follow_the_objective(tiny_bundle):
    # tiny: 64x64 px tiles at 1 um/px, stride 48 px. 20x (0.5 um/px): the 1920x1080 frame
    # becomes 960x540 model px: 1 + ceil(896/48) = 20 columns, 1 + ceil(476/48) = 11 rows.
    assert tiles_per_frame(tiny_bundle, "20x") == 20 * 11
    # 10x (1 um/px): 1920x1080: 1 + ceil(1856/48) = 40 columns, 1 + ceil(1016/48) = 23 rows
    assert tiles_per_frame(tiny_bundle, "10x") == 40 * 23
    assert tiles_per_frame(tiny_bundle, "20x", um_per_px=1.0) == 40 * 23


def test_picks_the_most_accurate_bundle_that_fits(family, db_path, tmp_path, capsys):
    # fam-*: 64 px tiles at 4 um/px, stride 48; at 20x (0.5 um/px) the frame is 240x135 model
    # px: 1 + ceil(176/48) = 5 columns, 1 + ceil(71/48) = 3 rows: 15 tiles
    assert _select(family, db_path, tmp_path, "--budget-ms", "20") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chosen"] == "fam-m"  # fam-l needs 15 x 2.0 = 30 ms/frame
    by = {c["name"]: c for c in out["candidates"]}
    assert by["fam-m"]["tiles"] == 15 and by["fam-m"]["frame_p90_ms"] == pytest.approx(15.0)
    assert all(c["source"] == "measured" for c in out["candidates"])
    assert by["fam-l"]["fits"] is False
    png = tmp_path / "p.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_fps_budget_subtracts_the_overhead(family, db_path, tmp_path, capsys):
    # 25 fps = 40 ms per frame, minus 5 ms capture + render: 35 ms: fam-l (30 ms) fits
    assert _select(family, db_path, tmp_path, "--fps", "25", "--overhead-ms", "5") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget_ms"] == pytest.approx(35.0) and out["chosen"] == "fam-l"
    # with 15 ms of overhead only 25 ms are left: fam-m
    assert _select(family, db_path, tmp_path, "--fps", "25", "--overhead-ms", "15") == 0
    assert json.loads(capsys.readouterr().out)["chosen"] == "fam-m"


def test_fps_overhead_from_the_db_else_the_default(family, db_path, tmp_path, capsys):
    # nothing recorded: DEFAULT_OVERHEAD_MS (8 ms): 40 - 8 = 32 ms: fam-l (30 ms) fits
    assert _select(family, db_path, tmp_path, "--fps", "25") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["overhead_ms"] == DEFAULT_OVERHEAD_MS and out["chosen"] == "fam-l"
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"bench": "pipeline", "bundle": "x", "render_ms_p50": 12.0}))
    args = ["profile", "--record-overhead", str(bench), "--target", TARGET, "--db", str(db_path)]
    assert main(args) == 0
    capsys.readouterr()
    assert _select(family, db_path, tmp_path, "--fps", "25") == 0  # 40 - 12 = 28 ms: fam-m
    out = json.loads(capsys.readouterr().out)
    assert out["budget_ms"] == pytest.approx(28.0) and out["chosen"] == "fam-m"
    assert out["overhead_source"].startswith("latency DB (bench pipeline x")
    bench.write_text("{}")
    assert main(args) == 2
    assert "needs render_ms_p50" in capsys.readouterr().err


def test_no_bundle_fits_is_a_clear_answer_and_exit_1(family, db_path, tmp_path, capsys):
    assert _select(family, db_path, tmp_path, "--budget-ms", "5") == 1
    out = json.loads(capsys.readouterr().out)
    assert out["chosen"] is None and out["closest"] == "fam-s"
    paths = [str(family[n].path) for n in MEASURED]
    rc = main(
        [
            "select",
            *paths,
            "--target",
            TARGET,
            "--db",
            str(db_path),
            "--budget-ms",
            "5",
            "--no-plot",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 1
    assert "no bundle fits 5.00 ms/frame; closest: fam-s at 7.50 ms/frame" in text


def test_unmeasured_bundle_is_predicted_with_the_margin(family, db_path, tmp_path, capsys):
    predictor = {
        "version": 1,
        "kind": "kernel-sum-nnls",
        "columns": ["one"],
        "scale": {"one": 1.0},
        "coef_p50": [1.5],
        "coef_p90": [1.6],
        "margin": 0.25,
        "backend": "be/cpu",
    }
    with LatencyDB(db_path) as db:
        db.put_predictor(TARGET, "be/cpu", predictor)
    paths = [str(family["fam-s"].path), str(family["fam-xl"].path)]
    assert (
        main(
            [
                "select",
                *paths,
                "--target",
                TARGET,
                "--db",
                str(db_path),
                "--budget-ms",
                "1000",
                "--no-plot",
                "--json",
            ]
        )
        == 0
    )
    by = {c["name"]: c for c in json.loads(capsys.readouterr().out)["candidates"]}
    assert by["fam-xl"]["source"] == "predicted"
    assert by["fam-xl"]["invoke_p90_ms"] == pytest.approx(1.6 * 1.25)  # p90 x (1 + margin)
    assert by["fam-s"]["source"] == "measured"


def test_bundle_without_the_metric_is_left_out_with_a_note(family, db_path, tmp_path, capsys):
    rc = _select(family, db_path, tmp_path, "--budget-ms", "20", "--metric", "dice")
    assert rc == 2
    assert "no 'dice' figure for 20x" in capsys.readouterr().err
    # fam-xl: never measured on the target, and the target has no predictor
    rc = _select(family, db_path, tmp_path, "--budget-ms", "20", names=["fam-s", "fam-xl"])
    assert rc == 0
    assert "fam-xl: not measured on test-target and no predictor" in capsys.readouterr().err


def _c(name, acc, lat, measured=None, predicted=None):
    return Choice(
        name,
        "",
        acc,
        1,
        lat,
        lat,
        lat,
        lat,
        "measured",
        measured_frame_p90_ms=measured,
        predicted_frame_p90_ms=predicted,
    )


def test_mnas_soft_objective_prefers_a_much_faster_near_equal_model():
    choices = [_c("fast", 0.89, 10.0), _c("slow", 0.90, 95.0)]
    assert pick(choices, 100.0).name == "slow"
    assert pick(choices, 100.0, mnas_w=-0.07).name == "fast"  # 0.89*0.1^-0.07 > 0.90*0.95^-0.07
    assert pick(choices, 5.0) is None


def test_regret_counts_agreement_and_budget_misses():
    exact = [_c(n, a, lt, lt, lt) for n, a, lt in (("a", 0.8, 10), ("b", 0.85, 20), ("c", 0.9, 40))]
    r = regret(exact, 20)
    assert r["same_pick"] == 20 and r["misses"] == 0
    # a predictor that is 40% optimistic about "c": it picks c where c does not fit
    optimistic = exact[:2] + [_c("c", 0.9, 40, 40, 24)]
    r = regret(optimistic, 20)
    assert r["misses"] > 0 and r["same_pick"] < 20


def test_nothing_measured_names_the_one_command_that_measures_them(tmp_path, capsys):
    from pathlib import Path

    models = Path(__file__).resolve().parents[1] / "models"
    paths = [str(models / "lymph-s"), str(models / "lymph-m")]
    db = str(tmp_path / "empty.sqlite")
    url = "http://10.1.1.1:8080"
    rc = main(["select", *paths, "--target", url, "--db", db, "--budget-ms", "50", "--no-plot"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"Measure them (a few seconds per bundle): lucida profile --target {url}" in err
    assert all(p in err.splitlines()[-1] for p in paths)
    assert "lucida candidates" not in err.splitlines()[-1]  # not the 10-minute candidate run
