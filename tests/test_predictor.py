"""Latency predictor: features from a real int8 candidate, the kernel-sum fit recovering known
per-kernel costs, JSON round trip, held-out evaluation through `lucida predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lucida.tools.cli import main
from lucida.tools.latency.candidates import (
    CandidateSpec,
    is_held_out,
    quantize_spec,
    spec_for_seed,
    write_candidate,
)
from lucida.tools.latency.db import LatencyDB, Measurement
from lucida.tools.latency.whole_model import (
    PredictorError,
    evaluate,
    fit_kernel_model,
    model_features,
    predict,
)

# made-up per-kernel costs (ms per op, per MMAC, per 100 kB written) for the synthetic family
COST = {
    "CONV_2D_KxK": (0.01, 0.020, 0.01),
    "CONV_2D_1x1": (0.005, 0.015, 0.02),
    "DEPTHWISE_CONV_2D": (0.004, 0.05, 0.03),
    "ADD": (0.002, 0.0, 0.05),
}


def _synthetic(seed: int) -> tuple[dict, float]:
    """Features of a made-up model and its exact latency under COST (+0.05 ms per model)."""
    rng = np.random.default_rng(seed)
    ops, total = [], 0.05
    for _ in range(int(rng.integers(3, 12))):
        t = str(rng.choice(list(COST)))
        macs = 0 if t == "ADD" else int(rng.integers(1e5, 5e7))
        out = int(rng.integers(1e3, 5e5))
        ops.append(
            {
                "type": t,
                "n": 1,
                "macs": macs,
                "macs_pad": macs,
                "in_bytes": out,
                "out_bytes": out,
                "param_bytes": 0,
            }
        )
        a, b, c = COST[t]
        total += a + b * macs / 1e6 + c * out / 1e5
    feats = {
        "ops": ops,
        "input_bytes": 0,
        "output_bytes": 0,
        "edgetpu": None,
        "totals": {
            "macs": sum(o["macs"] for o in ops),
            "param_bytes": 0,
            "activation_bytes": sum(o["out_bytes"] for o in ops),
            "ops": len(ops),
            "input_px": 4096,
        },
    }
    return feats, total


@pytest.fixture(scope="module")
def candidate(tmp_path_factory):
    spec = CandidateSpec.from_dict(
        {
            "seed": 3,
            "size": [64, 64],
            "stem": 8,
            "blocks": [
                {"kind": "conv", "channels": 16, "stride": 2, "kernel": 3},
                {"kind": "mbconv", "channels": 16, "stride": 1, "kernel": 3, "expand": 3},
            ],
        }
    )
    return write_candidate(tmp_path_factory.mktemp("cand"), spec, quantize_spec(spec, n_calib=3))


def test_candidate_space_is_deterministic_and_in_range():
    for seed in range(30):
        s = spec_for_seed(seed)
        assert s == spec_for_seed(seed)
        assert 64 <= max(s.size) <= 256 and min(s.size) >= 32  # long side 64..256 px
        assert 2 <= len(s.blocks) <= 6 and 8 <= s.stem <= 64
        assert s.cell in (4, 8, 16)
        assert CandidateSpec.from_dict(s.to_dict()) == s
    assert [s for s in range(10) if is_held_out(s)] == [4, 9]


def test_features_of_a_real_candidate(candidate):
    from lucida.runtime.engine import Engine

    f = model_features(candidate.file("cpu.tflite"))
    types = [op["type"] for op in f["ops"]]
    assert {"CONV_2D_KxK", "CONV_2D_1x1", "DEPTHWISE_CONV_2D", "ADD"} <= set(types)
    stem = f["ops"][types.index("CONV_2D_KxK")]
    # stem: 64x64x3 -> 32x32x8, 3x3 kernel: 32*32*8*27 MACs; padded: 3 -> 8 in, 8 -> 16 out
    assert stem["macs"] == 32 * 32 * 8 * 27
    assert stem["macs_pad"] == 32 * 32 * 9 * 8 * 16
    assert f["totals"]["macs"] == sum(op["macs"] for op in f["ops"])
    assert f["input_bytes"] == 64 * 64 * 3
    out = Engine(candidate, device="cpu", num_threads=1).infer_tile(np.zeros((64, 64, 3), np.uint8))
    assert out.shape == (16, 16)  # it runs: stem /2, conv /2: one cell per 4x4 px


def test_kernel_sum_recovers_known_costs_and_round_trips_json():
    data = [_synthetic(s) for s in range(60)]
    train, test = data[:45], data[45:]
    model = fit_kernel_model(
        [f for f, _ in train], np.array([y for _, y in train]), np.array([y for _, y in train])
    )
    model = json.loads(json.dumps(model))  # plain JSON, nothing pickled
    for feats, y in test:
        assert predict(model, feats)["p50_ms"] == pytest.approx(y, rel=0.02)


def test_unknown_kernel_types_are_reported():
    data = [_synthetic(s) for s in range(20)]
    model = fit_kernel_model([f for f, _ in data], *(np.array([y for _, y in data]),) * 2)
    feats, _ = _synthetic(99)
    feats["ops"].append(dict(feats["ops"][0], type="MAX_POOL_2D"))
    assert predict(model, feats)["unknown_kernels"] == ["MAX_POOL_2D"]


def test_too_little_data_is_one_clear_error():
    data = [_synthetic(s) for s in range(5)]
    with pytest.raises(PredictorError, match="too few"):
        fit_kernel_model([f for f, _ in data], np.ones(5), np.ones(5))


def test_evaluate_scores_held_out_models_and_sets_a_margin():
    rows = [(f, y, y * 1.1, is_held_out(s)) for s, (f, y) in enumerate(map(_synthetic, range(50)))]
    model, report = evaluate(rows)
    assert report["held_out"] == 10 and report["trained_on"] == 40
    assert report["kernel_sum_p50"]["within_10pct"] == 1.0
    assert report["kernel_sum_p50"]["spearman"] > 0.95
    assert "baseline_macs_linear_p50" in report and 0 <= model["margin"] < 0.05


def test_cli_evaluate_then_predict_a_tflite(candidate, tmp_path, capsys):
    db_path = tmp_path / "lat.sqlite"
    with LatencyDB(db_path) as db:
        for s in range(40):
            feats, y = _synthetic(s)
            sha = f"{s:064x}"
            db.add_model(sha, f"cand-{s:04d}", "", kind="candidate", seed=s, features=feats)
            db.put(Measurement(sha, "t1", "be/cpu", "cpu", y, y * 1.2, y * 1.5, 60))
    assert main(["predict", "--evaluate", "--target", "t1", "--db", str(db_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["held_out"] == 8 and report["kernel_sum_p50"]["within_10pct"] >= 0.9
    model = str(candidate.file("cpu.tflite"))
    assert main(["predict", model, "--target", "t1", "--db", str(db_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predicted"] and out["p50_ms"] > 0 and out["p90_ms"] >= out["p50_ms"]
    assert out["p90_ms_with_margin"] >= out["p90_ms"]
    assert "CONV_2D_KxK" in out["kernels_ms"]


def test_predict_on_an_unprofiled_target_says_what_to_do(tmp_path, capsys):
    rc = main(["predict", "--evaluate", "--target", "nowhere", "--db", str(tmp_path / "x.db")])
    assert rc == 2
    assert "no candidates measured on target nowhere" in capsys.readouterr().err


COMPILER_LOG = """Edge TPU Compiler version 16.0.384591198
Input: model.tflite
Output: model_edgetpu.tflite

Operator                       Count      Status

CONV_2D                        5          Mapped to Edge TPU
QUANTIZE                       1          Operation is otherwise supported, but not mapped

On-chip memory used for caching model parameters: 1.25MiB
On-chip memory remaining for caching model parameters: 6.50MiB
Off-chip memory used for streaming uncached model parameters: 512.00KiB
Number of Edge TPU subgraphs: 1
Total number of operations: 6
Number of operations that will run on Edge TPU: 5
Number of operations that will run on CPU: 1
"""


def test_edgetpu_compiler_log_features(candidate, tmp_path):
    log = tmp_path / "model_edgetpu.log"
    log.write_text(COMPILER_LOG)
    f = model_features(candidate.file("cpu.tflite"), compiler_log=log)
    assert f["edgetpu"] == {"tpu_on_chip_mib": 1.25, "tpu_off_chip_mib": 0.5, "tpu_cpu_ops": 1.0}
    # they become model-level terms when every training model has them
    data = [_synthetic(s) for s in range(12)]
    for i, (feats, _) in enumerate(data):
        feats["edgetpu"] = {"tpu_on_chip_mib": 1.0, "tpu_off_chip_mib": i / 4, "tpu_cpu_ops": 0}
    y = np.array([y + f["edgetpu"]["tpu_off_chip_mib"] for f, y in data])
    model = fit_kernel_model([f for f, _ in data], y, y)
    assert "tpu_off_chip_mib" in model["columns"]
