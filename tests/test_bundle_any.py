"""`lucida bundle` for anyone's model: --from hygiene, input sanity, goldens that hold without
XNNPACK, small frames, bundle folders where a model path is expected, the real classifier."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
from lucida.models import load_bundle
from lucida.models.bundle import update_manifest
from lucida.runtime.engine import Engine
from lucida.tools.cli import main

pytestmark = pytest.mark.tf


def _run(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """Another int8 model with the tiny bundle's shapes (different weights)."""
    from lucida.tools.demo.tiny_models import tiny_fcn
    from lucida.tools.toolchain.convert import quantize_keras

    rng = np.random.default_rng(1)
    calib = [rng.integers(0, 256, (64, 64, 3)).astype(np.float32) for _ in range(8)]
    path = tmp_path_factory.mktemp("other") / "other.tflite"
    path.write_bytes(quantize_keras(tiny_fcn((64, 64), seed=1), calib))
    return path


@pytest.fixture(scope="module")
def signed_input_model(tmp_path_factory):
    """A model whose input is quantized for -1..1 (no rescaling inside), like MobileNet's."""
    import keras
    from keras import layers
    from lucida.tools.toolchain.convert import quantize_keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = layers.Conv2D(4, 3, strides=4, padding="same", activation="relu")(inp)
    model = keras.Model(inp, layers.Conv2D(1, 1, activation="sigmoid")(x))
    rng = np.random.default_rng(0)
    calib = [rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32) for _ in range(8)]
    path = tmp_path_factory.mktemp("signed") / "signed.tflite"
    path.write_bytes(quantize_keras(model, calib))
    return path


def test_from_another_model_drops_its_figures_and_says_so(
    bundle_copy, other_model, tmp_path, capsys
):
    update_manifest(
        bundle_copy,
        description="lymph heatmap, AUC 0.99 on held-out slides",
        metrics={"auc": 0.99},
        latency={"cpu": {"p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 1.5}},
    )
    code, out = _run(
        capsys, "bundle", "--from", bundle_copy, "--cpu", other_model, "--out", tmp_path / "x"
    )
    assert code != 0 and "--objectives" in out and "another model" in out
    assert not (tmp_path / "x").exists()
    code, out = _run(
        capsys,
        "bundle",
        "--from",
        bundle_copy,
        "--cpu",
        other_model,
        "--objectives",
        "20x",
        "--out",
        tmp_path / "new",
    )
    assert code == 0, out
    assert "another model" in out and "metrics" in out and "latency" in out
    m = load_bundle(tmp_path / "new").manifest
    assert m.metrics == {} and m.latency == {} and m.description == ""
    assert m.objectives == ["20x"] and m.input.um_per_px is None and m.name == "tiny"
    # the same model (given as the bundle folder itself) keeps what describes it
    code, out = _run(
        capsys, "bundle", "--from", bundle_copy, "--cpu", bundle_copy, "--out", tmp_path / "same"
    )
    assert code == 0, out
    m = load_bundle(tmp_path / "same").manifest
    assert m.metrics == {"auc": 0.99} and "cpu" in m.latency and m.objectives == ["10x", "20x"]


def test_saturating_normalization_is_refused_and_nothing_is_written(
    signed_input_model, tmp_path, capsys
):
    out_dir = tmp_path / "b"
    args = [
        "bundle",
        "--cpu",
        signed_input_model,
        "--name",
        "s",
        "--task",
        "t",
        "--objectives",
        "10x",
    ]
    code, out = _run(capsys, *args, "--out", out_dir)
    assert code != 0 and "saturate" in out and "--normalization" in out and "Traceback" not in out
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []  # no staging left behind
    code, out = _run(capsys, *args, "--normalization", "inception", "--out", out_dir)
    assert code == 0, out
    bundle = load_bundle(out_dir)
    assert Engine(bundle, device="cpu", num_threads=1).health_check()["ok"]
    # a golden pair read through a saturating normalization proves nothing: the check fails
    rewrite = json.loads((out_dir / "manifest.json").read_text())
    rewrite["normalization"] = {"mean": [0, 0, 0], "std": [1, 1, 1]}
    (out_dir / "manifest.json").write_text(json.dumps(rewrite))
    result = Engine(load_bundle(out_dir), device="cpu", num_threads=1).health_check(False)
    assert not result["ok"] and "saturated" in result["error"]


def test_a_failed_bundle_leaves_the_previous_one_untouched(
    tiny_bundle, signed_input_model, tmp_path, capsys
):
    import shutil

    out_dir = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, out_dir)
    before = (out_dir / "manifest.json").read_bytes()
    code, _ = _run(
        capsys,
        "bundle",
        "--cpu",
        signed_input_model,
        "--name",
        "s",
        "--task",
        "t",
        "--objectives",
        "10x",
        "--out",
        out_dir,
    )
    assert code != 0 and (out_dir / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("kernels", ["default", "builtin", "reference"])
def test_golden_check_holds_with_and_without_xnnpack(tiny_bundle, kernels):
    g = tiny_bundle.manifest.golden
    assert g.atol >= 3 * tiny_bundle.manifest.quantization.output.scale / 4  # 3 quanta (sigmoid)
    engine = Engine(tiny_bundle, device="cpu", num_threads=1, kernels=kernels)
    result = engine.health_check()
    assert result["ok"] and result["max_abs_error"] <= g.atol


def test_golden_per_model_file_is_recorded_on_its_device_and_checked(tpu_bundle, capsys):
    """Each model file keeps its own golden output: `lucida golden` records the loaded file's
    on its device, refuses when no Edge TPU ran edgetpu.tflite (here: none), and the health
    check compares with the golden of the file that is loaded."""
    import dataclasses

    from lucida.tools.toolchain.golden import add_model_golden

    before = (tpu_bundle.path / "manifest.json").read_bytes()
    code, out = _run(capsys, "golden", tpu_bundle.path, "--device", "edgetpu")
    assert code != 0 and "cpu.tflite ran" in out and "Traceback" not in out
    assert (tpu_bundle.path / "manifest.json").read_bytes() == before  # nothing recorded
    x, cpu_want = tpu_bundle.golden("cpu.tflite")
    np.testing.assert_array_equal(tpu_bundle.golden("edgetpu.tflite")[1], cpu_want)  # fallback
    # what a device's run records (here: its output moved by 0.3, as another rounding might)
    tpu_want = np.clip(cpu_want + 0.3, 0, 1).astype(np.float32)
    b = add_model_golden(tpu_bundle, "edgetpu.tflite", tpu_want)
    b = load_bundle(b.path)  # hashes verified
    assert b.manifest.golden.outputs == {"edgetpu.tflite": "golden_output.edgetpu.npy"}
    np.testing.assert_array_equal(b.golden("edgetpu.tflite")[1], tpu_want)
    np.testing.assert_array_equal(b.golden("cpu.tflite")[1], cpu_want)
    cpu = Engine(b, device="cpu", num_threads=1)
    assert cpu.health_check()["ok"]  # cpu.tflite: its own golden
    as_tpu = Engine(b, device="cpu", num_threads=1)
    as_tpu.info = dataclasses.replace(as_tpu.info, model_file="edgetpu.tflite")
    r = as_tpu.health_check(raise_on_fail=False)  # the CPU's output against the TPU's golden
    assert not r["ok"] and r["model_file"] == "edgetpu.tflite" and r["max_abs_error"] > 0.2


def test_frame_smaller_than_a_tile_is_padded_not_mirrored(tiny_bundle, caplog):
    engine = Engine(tiny_bundle, device="cpu", num_threads=1)
    small = np.random.default_rng(3).integers(0, 256, (30, 40, 3), np.uint8)
    with caplog.at_level(logging.INFO, logger="lucida.runtime.engine"):
        x = engine.resample(small, um_per_px=1.0)
        engine.resample(small, um_per_px=1.0)
    assert x.image.shape == (64, 64, 3)
    assert (x.image[30:] == 0).all() and (x.image[:, 40:] == 0).all()  # black, not a mirror
    assert sum("smaller than one" in r.message for r in caplog.records) == 1  # said once
    hm = engine.infer(small, um_per_px=1.0)
    assert hm.probs.shape == (8, 10)  # cropped back to the frame's cells
    padded = np.zeros((64, 64, 3), np.uint8)
    padded[:30, :40] = small
    np.testing.assert_array_equal(hm.probs, engine.infer_tile(padded)[:8, :10])


def test_patch_classifier_scales_a_small_frame_up(tmp_path):
    from lucida.tools.demo.tiny_models import tiny_classifier
    from lucida.tools.toolchain.bundle import build_bundle
    from lucida.tools.toolchain.convert import quantize_keras

    rng = np.random.default_rng(0)
    calib = [rng.integers(0, 256, (32, 32, 3)).astype(np.float32) for _ in range(4)]
    tfl = quantize_keras(tiny_classifier(32, 10), calib)
    bundle = build_bundle(
        tmp_path / "c",
        name="c",
        task="t",
        objectives=["10x"],
        cpu_tflite=tfl,
        golden_input=calib[0].astype(np.uint8),
        output={"kind": "class_scores", "channels": 10, "positive_classes": [2]},
    )
    engine = Engine(bundle, device="cpu", num_threads=1)
    small = rng.integers(0, 256, (20, 20, 3), np.uint8)
    hm = engine.infer(small)
    assert hm.probs.shape == (1, 1)
    up = cv2.resize(small, (32, 32), interpolation=cv2.INTER_LINEAR)
    assert hm.probs[0, 0] == pytest.approx(float(engine.infer_tile(up)), abs=1e-6)


def test_check_and_bundle_take_a_bundle_folder(tiny_bundle, capsys):
    code, out = _run(capsys, "check", tiny_bundle.path)
    assert "cpu.tflite" in out and "Traceback" not in out


def test_real_classifier_with_flags_only_matches_plain_litert(tmp_path, capsys):
    from ai_edge_litert.interpreter import Interpreter
    from realdata import real

    birds = real("models", "mobilenet_v2_1.0_224_inat_bird_quant.tflite")
    labels, photo = real("models", "inat_bird_labels.txt"), real("models", "parrot.jpg")

    code, out = _run(
        capsys,
        "bundle",
        "--cpu",
        birds,
        "--labels",
        labels,
        "--normalization",
        "raw",
        "--golden-input",
        photo,
        "--name",
        "birds",
        "--task",
        "birds",
        "--objectives",
        "10x",
        "--out",
        tmp_path / "birds",
    )
    assert code == 0, out
    code, out = _run(capsys, "infer", tmp_path / "birds", photo, "--json")
    top = json.loads(out[out.index("{") :])["top"][0]
    it = Interpreter(str(birds))  # plain LiteRT, as pycoral's classify_image does
    it.allocate_tensors()
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    x = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA)
    it.set_tensor(it.get_input_details()[0]["index"], x[None])
    it.invoke()
    scores = it.get_tensor(it.get_output_details()[0]["index"])[0]
    assert top["index"] == int(np.argmax(scores))
    assert top["label"] == "Ara macao (Scarlet Macaw)"
    # with the bundle's default normalization the input saturates: refused, with the fix
    code, out = _run(
        capsys,
        "bundle",
        "--cpu",
        birds,
        "--name",
        "b",
        "--task",
        "t",
        "--objectives",
        "10x",
        "--out",
        tmp_path / "bad",
    )
    assert code != 0 and "--normalization raw" in out and not (tmp_path / "bad").exists()
