"""`lucida bundle`: assemble a bundle from its files, pack it, and verify one."""

from __future__ import annotations

import json
import tarfile

import cv2
import numpy as np
import pytest
import tflite_fakes as fakes
from lucida.models import load_bundle, write_bundle
from lucida.runtime.engine import Engine
from lucida.tools.cli import main

pytestmark = pytest.mark.tf


@pytest.fixture()
def parts(tiny_bundle, tmp_path):
    """cpu.tflite, its fake-compiled twin, a report, and a golden tile image, as loose files."""
    cpu = tmp_path / "model.tflite"
    cpu.write_bytes(tiny_bundle.file("cpu.tflite").read_bytes())
    tpu = tmp_path / "model_edgetpu.tflite"
    tpu.write_bytes(fakes.fake_compiled(cpu.read_bytes()))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"verdict": {"ok": True, "message": "fine"}}))
    img = tmp_path / "tile.png"
    rgb = np.random.default_rng(4).integers(0, 256, (80, 90, 3), dtype=np.uint8)
    cv2.imwrite(str(img), rgb)
    return {"cpu": cpu, "edgetpu": tpu, "report": report, "image": img}


def _bundle(capsys, *argv):
    code = main(["bundle", *[str(a) for a in argv]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_assemble_from_files(parts, tmp_path, capsys):
    out = tmp_path / "lymph-s"
    code, text, err = _bundle(
        capsys, "--cpu", parts["cpu"], "--edgetpu", parts["edgetpu"], "--report", parts["report"],
        "--golden-input", parts["image"], "--name", "lymph-s", "--task", "lymph",
        "--objectives", "10x,20x", "--um-per-px", "0.5", "--version", "1.2.0", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "bundle lymph-s 1.2.0" in text and "edgetpu.tflite" in text
    b = load_bundle(out)
    assert b.has_edgetpu and b.manifest.objectives == ["10x", "20x"]
    assert b.manifest.input.um_per_px == 0.5 and b.manifest.version == "1.2.0"
    tpu = b.manifest.edgetpu  # read back from the compiled model's Edge TPU package
    assert tpu.subgraphs == 1 and tpu.min_runtime_version == 14 and tpu.cpu_ops == []
    assert tpu.on_chip_bytes > 0 and tpu.off_chip_bytes == 0
    assert set(b.manifest.files) == {
        "cpu.tflite",
        "edgetpu.tflite",
        "quant_report.json",
        "golden_input.npy",
        "golden_output.npy",
    }
    gin, gout = b.golden()
    assert gin.shape == (64, 64, 3)
    assert Engine(b, device="cpu", num_threads=1).health_check()["ok"]


def test_from_bundle_adds_the_compiled_model_and_packs(tiny_bundle, parts, tmp_path, capsys):
    out, packed = tmp_path / "tiny2", tmp_path / "tiny2.tar.gz"
    code, text, err = _bundle(
        capsys, "--from", tiny_bundle.path, "--edgetpu", parts["edgetpu"], "--out", out,
        "--pack", packed, "--json",
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(text)
    assert r["packed"] == str(packed) and "edgetpu.tflite" in r["files"]
    b = load_bundle(out)
    m0 = tiny_bundle.manifest
    assert (b.manifest.name, b.manifest.task, b.manifest.objectives) == (
        m0.name,
        m0.task,
        m0.objectives,
    )
    assert b.manifest.tiling == m0.tiling and b.sha256() == tiny_bundle.sha256()
    with tarfile.open(packed) as tar:
        assert f"{m0.name}/edgetpu.tflite" in tar.getnames()
    code, text, _ = _bundle(capsys, "--verify", packed)
    assert code == 0
    assert text.startswith(f"verified: bundle {m0.name}") and "edgetpu.tflite yes" in text


def test_edgetpu_model_must_be_compiled(parts, tiny_bundle, tmp_path, capsys):
    code, _, err = _bundle(
        capsys, "--from", tiny_bundle.path, "--edgetpu", parts["cpu"], "--out", tmp_path / "x"
    )
    assert code == 2
    assert "not compiled for the Edge TPU" in err and "lucida compile" in err
    assert not (tmp_path / "x").exists()


def test_edgetpu_model_of_another_model_is_refused(tiny_bundle, tmp_path, capsys):
    other = fakes.load(tiny_bundle.file("cpu.tflite").read_bytes())
    sg = other.subgraphs[0]
    sg.tensors[sg.inputs[0]].quantization.scale = [0.5]  # compiled from another calibration
    compiled = tmp_path / "other_edgetpu.tflite"
    compiled.write_bytes(fakes.fake_compiled(fakes.save(other)))
    code, _, err = _bundle(
        capsys, "--from", tiny_bundle.path, "--edgetpu", compiled, "--out", tmp_path / "x"
    )
    assert code == 2 and "differs from cpu.tflite" in err


def test_new_bundle_needs_a_name(parts, tmp_path, capsys):
    code, _, err = _bundle(capsys, "--cpu", parts["cpu"], "--out", tmp_path / "x")
    assert code == 2 and "--name, --task and --objectives" in err


def test_verify_catches_a_tampered_model(bundle_copy, capsys):
    model = bundle_copy / "cpu.tflite"
    data = bytearray(model.read_bytes())
    data[-20] ^= 0xFF
    model.write_bytes(bytes(data))
    code, text, _ = _bundle(capsys, "--verify", bundle_copy)
    assert code == 1
    assert text.startswith("FAILED:") and "cpu.tflite sha256" in text


def test_verify_catches_a_wrong_golden_output(bundle_copy, capsys):
    """Hashes all match (re-hashed), but the model does not give the golden output."""
    m = load_bundle(bundle_copy).manifest.model_dump(mode="json")
    files = {n: (bundle_copy / n).read_bytes() for n in m["files"]}
    files["golden_output.npy"] = np.load(bundle_copy / "golden_output.npy") + 0.5
    write_bundle(bundle_copy, m, files)
    code, text, _ = _bundle(capsys, "--verify", bundle_copy, "--json")
    assert code == 1
    r = json.loads(text)
    assert r["ok"] is False and "golden check failed" in r["error"]


def test_verify_missing_bundle(tmp_path, capsys):
    code, text, _ = _bundle(capsys, "--verify", tmp_path / "nope")
    assert code == 1 and "no such bundle" in text
