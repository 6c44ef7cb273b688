"""The shipped demo bundles (lymph-s/-m/-l): they load, pass their golden check, carry measured
figures, and lymph-m finds tumour on a held-out synthetic slide it has never seen."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lucida.models import shipped_bundle
from lucida.runtime.engine import Engine

SHIPPED = ("lymph-s", "lymph-m", "lymph-l")
# lymph-m on 8 fields of view of a small held-out slide at 20x (measured 1.0; chance is 0.5).
MIN_FOV_AUC_SMALL_SLIDE = 0.85
MIN_PIXEL_AUC_SMALL_SLIDE = 0.95


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundle_is_a_small_int8_model_that_passes_its_golden_check(name):
    bundle = shipped_bundle(name)
    m = bundle.manifest
    assert m.task == "lymph" and {"10x", "20x"} <= set(m.objectives)
    assert m.files["cpu.tflite"].bytes < 5 * 1024 * 1024
    # Raw RGB pixels go in as they are: the uint8 input quantization is the identity.
    assert (m.quantization.input.dtype, m.quantization.input.scale) == ("uint8", 1.0)
    assert m.quantization.input.zero_point == 0 and m.quantization.output.dtype == "uint8"
    engine = Engine(bundle, device="cpu", num_threads=1)
    assert engine.health_check()["ok"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundle_manifest_holds_measured_accuracy_and_latency(name):
    m = shipped_bundle(name).manifest
    for key in ("fov_auc", "float_fov_auc", "int8_minus_float_fov_auc", "pixel_auc", "contour_iou"):
        assert set(m.metrics[key]) == {"10x", "20x"}, key
    assert min(m.metrics["eval"]["slides"]) >= 1000  # held out: training used seeds < 1000
    assert set(m.latency) == {"10x", "20x"}
    assert all(f.p50_ms <= f.p99_ms for f in m.latency.values())
    if name != "lymph-s":  # the acceptance bar for M and L
        for obj in ("10x", "20x"):
            assert m.metrics["fov_auc"][obj] >= 0.95
            assert m.metrics["int8_minus_float_fov_auc"][obj] >= -0.01


def test_lymph_m_finds_tumour_on_a_small_held_out_slide():
    from lucida.runtime.virtual.tissue import SyntheticSlide
    from lucida.tools.demo.evaluate import evaluate

    slide = SyntheticSlide(1010, size_um=(3000.0, 2400.0), tumour_fraction=0.25)
    res = evaluate({"m": shipped_bundle("lymph-m")}, ["20x"], [slide], per_slide=8)["m"]["20x"]
    assert res["fovs"] == 8 and 0 < res["fovs_with_tumour"] < 8
    assert res["fov_auc"] >= MIN_FOV_AUC_SMALL_SLIDE
    assert res["pixel_auc"] >= MIN_PIXEL_AUC_SMALL_SLIDE
    assert res["contour_iou"] > 0.5


def test_eval_refuses_training_slides_with_one_line(capsys):
    from lucida.tools.cli import main

    code = main(["eval", "lymph-s", "--slides", "3", "--fovs", "1", "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "seeds >= 1000" in err[0]


def test_eval_cli_prints_json_metrics(capsys, tmp_path):
    from lucida.tools.cli import main

    code = main(
        ["eval", "lymph-s", "--slides", "1001", "--fovs", "2", "--objectives", "20x", "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["bundle"] == "lymph-s"
    assert out["metrics"]["eval"]["fovs_per_objective"] == {"20x": 2}
    assert np.isfinite(out["metrics"]["pixel_auc"]["20x"])
