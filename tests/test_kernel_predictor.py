"""The kernel-level latency predictor: op kinds and shapes from a real .tflite, per-kind fits on
sampled kernels, sums over a model's kernels, and (with TensorFlow) a tiny end-to-end fit:
sampled kernels built as one-op .tflite files, measured on this CPU, cached in the latency DB."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lucida.tools.latency.kernel_model import (
    KernelModelError,
    cross_validate,
    fit,
    predict_model,
)
from lucida.tools.latency.kernel_space import KINDS, KernelSpec, neighbours, sample
from lucida.tools.latency.opkinds import model_kernels

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "lymph-m" / "cpu.tflite"


def _shape(h, cin, cout, k=1, stride=1, kind="conv1x1"):
    ho = -(-h // stride)
    macs = ho * ho * k * k * cin * cout if kind != "add" else 0
    return {
        "hout": ho,
        "wout": ho,
        "hin": h,
        "win": h,
        "cin": cin,
        "cout": cout,
        "k": k,
        "stride": stride,
        "macs": macs,
        "macs_pad": macs,
        "in_bytes": h * h * cin * (2 if kind == "add" else 1),
        "out_bytes": ho * ho * cout,
        "param_bytes": k * k * cin * cout if kind != "add" else 0,
        "inputs": 2 if kind == "add" else 1,
        "elements": ho * ho * cout,
    }


def _rows(seed=0, c0=0.002):
    """Synthetic measured kernel files: conv1x1 costs 0.004 ms + 0.005 ms/MMAC, add 0.001 ms +
    0.02 ms per 100 kB read; quantize files hold two quantizes (0.01 ms/100 kB each) and a relu."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(30):
        s = _shape(int(rng.choice([7, 14, 28, 56])), int(rng.choice([16, 64, 256])), 64)
        rows.append(
            {
                "kind": "conv1x1",
                "kernels": [("conv1x1", s)],
                "p50_ms": c0 + 0.004 + 0.005 * s["macs"] / 1e6,
            }
        )
    for _ in range(12):
        s = _shape(int(rng.choice([7, 14, 28, 56])), int(rng.choice([16, 64])), 0, kind="add")
        s["cout"] = s["cin"]
        rows.append(
            {
                "kind": "add",
                "kernels": [("add", s)],
                "p50_ms": c0 + 0.001 + 0.02 * s["in_bytes"] / 1e5,
            }
        )
    for _ in range(8):
        s = _shape(int(rng.choice([14, 28, 56])), 16, 16, kind="add")
        q = dict(s, in_bytes=s["out_bytes"])
        rows.append(
            {
                "kind": "quantize",
                "kernels": [("quantize", q), ("relu", q), ("quantize", q)],
                "p50_ms": c0 + 2 * 0.01 * q["in_bytes"] / 1e5,
            }
        )
    tiny = _shape(1, 8, 0, kind="add")
    for _ in range(5):
        rows.append(
            {
                "kind": "add",
                "kernels": [("add", tiny)],
                "p50_ms": c0 + 0.001 + 0.02 * tiny["in_bytes"] / 1e5,
            }
        )
    for r in rows:
        r["p90_ms"] = r["p50_ms"] * 1.1
    return rows


def test_fit_recovers_kernel_costs_and_sums_a_model():
    pred = fit(_rows())
    json.loads(json.dumps(pred))  # plain JSON: stored in the latency DB
    conv = _shape(28, 128, 64)
    add = dict(_shape(28, 64, 0, kind="add"), cout=64)
    model = [("conv1x1", conv), ("add", add), ("conv1x1", conv)]
    expect = 2 * (0.004 + 0.005 * conv["macs"] / 1e6) + 0.001 + 0.02 * add["in_bytes"] / 1e5
    got = predict_model(pred, model)
    assert got["ms"] - pred["c0_ms"] == pytest.approx(expect, rel=0.05)
    assert set(got["kernels_ms"]) == {"conv1x1", "add"} and not got["unknown_kernels"]


def test_a_file_with_two_quantizes_is_split_between_them():
    pred = fit(_rows())
    q = dict(_shape(56, 16, 16, kind="add"))
    q["in_bytes"] = q["out_bytes"]
    one = predict_model(pred, [("quantize", q)])["ms"] - pred["c0_ms"]
    assert one == pytest.approx(0.01 * q["in_bytes"] / 1e5, rel=0.15)


def test_unknown_kernels_are_named_and_costed_as_element_wise():
    rows = (
        _rows()
        + [
            {
                "kind": "add_c",
                "kernels": [("add_c", _shape(14, 8, 8, kind="add"))],
                "p50_ms": 0.01,
                "p90_ms": 0.011,
            }
        ]
        * 3
    )
    got = predict_model(fit(rows), [("other:GATHER", _shape(14, 8, 8, kind="add"))])
    assert got["unknown_kernels"] == ["other:GATHER"] and got["ms"] > 0


def test_too_few_kernels_is_one_clear_error():
    with pytest.raises(KernelModelError, match="lucida predict --fit-kernels"):
        fit(_rows()[:5])


def test_cross_validation_flags_the_kernel_that_does_not_fit():
    rows = _rows()
    rows[3] = dict(rows[3], p50_ms=rows[3]["p50_ms"] * 3)
    worst = max(cross_validate(rows), key=lambda re: abs(re[1]))
    assert worst[0] is rows[3]


def test_kinds_and_shapes_of_a_real_int8_model():
    kernels = model_kernels(SHIPPED)
    kinds = [k for k, _ in kernels]
    assert kinds[0] == "quantize" and kinds[-1] == "quantize"
    assert {"convKxK", "conv1x1", "dwconv"} <= set(kinds)
    assert all(not k.startswith("other:") for k in kinds)
    for k, s in kernels:
        if k in ("conv1x1", "convKxK", "dwconv"):
            assert s["macs_pad"] >= s["macs"] > 0 and s["hout"] * s["stride"] >= s["hin"]


def test_sampled_shapes_cover_real_networks_and_stay_timeable():
    rng = np.random.default_rng(0)
    convs = sample("convKxK", 200, rng)
    assert max(s.h for s in convs) >= 129 and max(s.co for s in convs) >= 1024
    assert {3, 5, 7} <= {s.k for s in convs} and {1, 2} == {s.s for s in convs}
    assert all(s.ok() for s in convs)
    near = neighbours(KernelSpec("conv1x1", 28, 28, 64, 64), 6, rng)
    assert near and all(
        s.kind == "conv1x1" and s != KernelSpec("conv1x1", 28, 28, 64, 64) for s in near
    )
    with pytest.raises(ValueError, match="unknown kernel kind"):
        sample("winograd", 1, rng)


@pytest.mark.tf
@pytest.mark.parametrize(
    "spec, kinds",
    [
        (KernelSpec("conv1x1", 14, 14, 32, 48, act="relu6"), ["conv1x1"]),
        (KernelSpec("resize_nearest", 8, 8, 16, up=2), ["resize_nearest"]),
        (KernelSpec("argmax", 16, 16, 21), ["argmax"]),
        (KernelSpec("quantize", 16, 16, 8), ["quantize", "relu", "quantize"]),
    ],
)
def test_a_sampled_kernel_file_holds_just_that_kernel(spec, kinds):
    from lucida.tools.latency.kernel_space import build

    assert [k for k, _ in model_kernels(build(spec))] == kinds


@pytest.mark.tf
def test_tiny_fit_is_cached_and_predicts_a_bundle(tmp_path, capsys):
    from lucida.tools.cli import main
    from lucida.tools.latency.db import LatencyDB
    from lucida.tools.latency.kernel_fit import fit_kernels

    plan = {"conv1x1": 4, "convKxK": 3, "dwconv": 3, "add": 3, "quantize": 3, "relu": 3}
    db_path = tmp_path / "lat.sqlite"
    with LatencyDB(db_path) as db:
        pred, rep = fit_kernels(db, plan, rounds=0, out_dir=tmp_path / "k")
        assert rep["kernels_measured"] >= 15 and {"conv1x1", "quantize"} <= set(pred["kinds"])
        stamps = {m["sha256"]: x.measured_at for m, x in db.measurements(pred["target"])}
        fit_kernels(db, plan, rounds=0, out_dir=tmp_path / "k")  # all cached: nothing re-timed
        again = {m["sha256"]: x.measured_at for m, x in db.measurements(pred["target"])}
        assert again == stamps
    assert main(["predict", str(SHIPPED), "--db", str(db_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predictor"] == "kernel-level" and out["predicted"]
    assert out["p90_ms"] >= out["p50_ms"] > 0 and "convKxK" in out["kernels_ms"]


def test_every_sampled_kind_has_a_builder():
    from lucida.tools.latency.kernel_fit import DEFAULT_PLAN

    assert set(DEFAULT_PLAN) == set(KINDS)


def test_held_out_zoo_covers_the_real_families():
    from lucida.tools.latency.zoo import ZOO, ZooError, build_keras

    assert len(ZOO) >= 15
    kinds = {kind for kind, _, _ in ZOO.values()}
    for family in ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_lite"):
        assert family in kinds
    assert {"resnet50", "densenet121", "inception_v3", "unet", "deeplab_v3"} <= kinds
    assert len({px for _, px, _ in ZOO.values()}) >= 5  # several input sizes
    with pytest.raises(ZooError, match="unknown zoo architecture"):
        build_keras("alexnet")


def test_profile_anchors_are_bundles_never_sampled_kernels(tmp_path):
    import hashlib

    from lucida.tools.latency.db import LatencyDB, Measurement
    from lucida.tools.latency.timing import pick_anchors

    real = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    with LatencyDB(tmp_path / "lat.sqlite") as db:
        for i, kind in enumerate(("kernel", "zoo", "bundle")):
            sha = real if kind == "bundle" else f"{i:064x}"
            db.add_model(sha, f"m{i}", str(SHIPPED), kind=kind)
            db.put(Measurement(sha, "t", "be/cpu", "cpu", 1.0 + i, 1.1, 1.2, 60))
        picked = pick_anchors(db, "t", {"be/cpu"}, set(), 4)
    assert [m["kind"] for m, *_ in picked] == ["bundle"]
