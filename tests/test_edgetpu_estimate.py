"""The Edge TPU latency estimate: Coral's published figures kept with their sources, the
leave-one-out error per target, what the estimate does with a real model, and `lucida select`
for an Edge TPU the user does not own (predictions marked so, the command that measures them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lucida.tools.cli import main
from lucida.tools.latency import edgetpu
from lucida.tools.latency.db import LatencyDB, Measurement

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_published_figures_carry_their_sources():
    rows = edgetpu.published()
    assert {r["target"] for r in rows} == set(edgetpu.LINK)
    assert {r["source"] for r in rows} == {"coral.ai", "pycoral-rp4b", "pycoral-rp3b"}
    by = {(r["model"], r["target"]): r["ms"] for r in rows}
    assert by[("mobilenet_v1", "coral-usb3/x86_64")] == 2.4  # coral.ai Table 1
    assert by[("inception_v4", "coral-usb2/rpi3")] == pytest.approx(1060.16)  # pycoral rp3b
    for t in edgetpu.LINK:
        assert sum(r["target"] == t for r in rows) >= 5


def test_leave_one_out_error_per_target():
    r = edgetpu.leave_one_out()["targets"]
    for t in ("coral-usb3/x86_64", "coral-pcie/devboard", "coral-usb/rpi4"):
        assert r[t]["median_abs_err_pct"] <= 15, r[t]
        assert r[t]["within_25pct"] >= 0.7, r[t]
    assert r["coral-usb2/rpi3"]["n"] == 5  # reported too (it misses the bar: see README)


def test_streaming_parameters_costs_more_over_usb2_than_pcie():
    c = edgetpu.fit(edgetpu.published())
    small = {"gmacs": 1.0, "params_mb": 3.0, "io_mb": 0.15}
    big = dict(small, params_mb=40.0)
    for t in edgetpu.LINK:
        assert edgetpu.estimate(c, t, big) > edgetpu.estimate(c, t, small)
    extra = {t: edgetpu.estimate(c, t, big) - edgetpu.estimate(c, t, small) for t in edgetpu.LINK}
    assert extra["coral-usb2/rpi3"] > 5 * extra["coral-pcie/devboard"]


def test_cli_evaluate_edgetpu_json(capsys):
    assert main(["predict", "--evaluate-edgetpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["targets"]) == set(edgetpu.LINK)
    row = r["targets"]["coral-usb/rpi4"]["models"][0]
    assert {"published_ms", "predicted_ms", "err_pct", "source"} <= set(row)


def test_predict_a_real_model_on_an_edgetpu_target(tmp_path, capsys):
    db = str(tmp_path / "lat.sqlite")
    model = str(MODELS / "lymph-m" / "cpu.tflite")
    outs = {}
    for t in ("coral-pcie/devboard", "coral-usb2/rpi3"):
        assert main(["predict", model, "--target", t, "--db", db, "--json"]) == 0
        outs[t] = json.loads(capsys.readouterr().out)
    pcie, usb2 = outs["coral-pcie/devboard"], outs["coral-usb2/rpi3"]
    assert pcie["predicted"] and pcie["predictor"] == "edgetpu-analytic"
    assert pcie["cpu_ops"] == 0 and pcie["tpu_ops"] > 10
    assert 0 < pcie["p50_ms"] < usb2["p50_ms"]  # the same model over USB 2 is slower
    rc = main(["predict", model, "--target", "coral-usb9/mars", "--db", db])
    assert rc == 2 or "coral-usb9/mars" in capsys.readouterr().err


def test_ops_check_leaves_on_the_cpu_are_costed_on_the_cpu(monkeypatch):
    from dataclasses import replace

    from lucida.tools.toolchain import edgetpu_rules

    real = edgetpu_rules.op_verdicts

    def tail_on_cpu(model, *a, **k):  # as if op 5 on were unsupported
        return [v if v.index < 5 else replace(v, runs_on="cpu") for v in real(model, *a, **k)]

    model = MODELS / "lymph-m" / "cpu.tflite"
    assert all(edgetpu.tpu_split(model))  # check maps every op of this model
    monkeypatch.setattr(edgetpu_rules, "op_verdicts", tail_on_cpu)
    split = edgetpu.tpu_split(model)
    assert split[:5] == [True] * 5 and not any(split[5:])
    with pytest.raises(edgetpu.EdgeTPUEstimateError, match="lucida predict --fit-kernels"):
        edgetpu.model_row(model, None)


def _select(tmp_path, db, *extra):
    names = [str(MODELS / n) for n in ("lymph-s", "lymph-m", "lymph-l")]
    return main(["select", *names, "--db", str(db), "--no-plot", "--json", *extra])


def test_select_for_a_coral_the_user_does_not_own(tmp_path, capsys):
    db = tmp_path / "lat.sqlite"
    assert _select(tmp_path, db, "--target", "coral-usb/rpi4", "--budget-ms", "100") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["chosen"] and r["chosen_source"] == "predicted"
    assert all(c["source"] == "predicted" for c in r["candidates"])
    assert all(c["predictor"] == "edgetpu-analytic" for c in r["candidates"])
    assert r["fill_in"].startswith("lucida profile --target http://DEVICE:8080")
    assert r["chosen"] in r["why"] and "predicted" in r["why"] and r["margin_ms"] > 0


def test_a_device_measurement_replaces_the_estimate(tmp_path, capsys):
    import hashlib
    import shutil

    from lucida.models import resolve_bundle

    folder = tmp_path / "lymph-s"
    shutil.copytree(MODELS / "lymph-s", folder)
    data = (folder / "cpu.tflite").read_bytes() + b"tpu"  # stands in for a compiled model: only
    (folder / "edgetpu.tflite").write_bytes(data)  # its hash and its place in the manifest matter
    sha = hashlib.sha256(data).hexdigest()
    m = json.loads((folder / "manifest.json").read_text())
    m["files"]["edgetpu.tflite"] = {"sha256": sha, "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(m))
    b = resolve_bundle(str(folder))
    assert b.has_edgetpu
    db = tmp_path / "lat.sqlite"
    with LatencyDB(db) as d:  # `lucida profile --target http://...` on a Coral device wrote this
        d.put(
            Measurement(sha, "http://10.0.0.7:8080", "be/edgetpu", "edgetpu:usb:0", 3, 3.5, 4, 60)
        )
    names = [str(folder), str(MODELS / "lymph-m")]
    args = ["select", *names, "--db", str(db), "--no-plot", "--json", "--target", "coral-usb/rpi4"]
    assert main([*args, "--budget-ms", "100"]) == 0
    by = {c["name"]: c for c in json.loads(capsys.readouterr().out)["candidates"]}
    assert by[b.name]["source"] == "measured" and by[b.name]["invoke_p90_ms"] == 3.5
    assert by["lymph-m"]["source"] == "predicted"
