"""`lucida quantize`: a float model and your tiles -> an int8 bundle the runtime runs, with a report.

The task: synthetic H&E-like 64x64 tiles with purple "tumour" ellipses (masks beside the
validation tiles), a tiny fully-convolutional Keras model trained on it for a few seconds.
"""

from __future__ import annotations

import json
import stat

import cv2
import numpy as np
import pytest
import tflite_fakes as fakes
from lucida.models import load_bundle
from lucida.runtime.engine import Engine
from lucida.tools.cli import main

SIZE = 64
pytestmark = pytest.mark.tf


def _tile(rng):
    """RGB uint8 tile and its tumour mask (uint8 0/1)."""
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = (232, 190, 214)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(rng.integers(0, 3)):
        c, ax = rng.integers(0, SIZE, 2), rng.integers(8, 24, 2)
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(mask, (int(c[0]), int(c[1])), (int(ax[0]), int(ax[1])), angle, 0, 360, 1, -1)
    img[mask > 0] = (160, 95, 175)
    for _ in range(40):  # nuclei
        p = rng.integers(0, SIZE, 2)
        col = (90, 40, 130) if mask[p[1], p[0]] else (170, 110, 180)
        cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(1, 3)), col, -1)
    img += rng.normal(0, 25, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _write_tiles(folder, n, seed, masks):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, mask = _tile(rng)
        cv2.imwrite(str(folder / f"t{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if masks:
            cv2.imwrite(str(folder / f"t{i:03d}.mask.png"), mask * 255)


@pytest.fixture(scope="session")
def tiles(tmp_path_factory):
    """Folders calib/ (110 tiles) and val/ (30 tiles, each with a .mask.png)."""
    root = tmp_path_factory.mktemp("quant_task")
    _write_tiles(root / "calib", 110, 1, masks=False)
    _write_tiles(root / "val", 30, 2, masks=True)
    return root


@pytest.fixture(scope="session")
def task(tiles):
    """The tile folders plus model.keras: the tiny float model trained on the task (~5 s)."""
    import keras
    from lucida.tools.demo.tiny_models import tiny_fcn

    rng = np.random.default_rng(3)
    xs, ys = [], []
    for _ in range(384):
        img, mask = _tile(rng)
        cells = cv2.resize(mask.astype(np.float32), (SIZE // 4, SIZE // 4), cv2.INTER_AREA)
        xs.append(img)
        ys.append((cells >= 0.5)[..., None])
    model = tiny_fcn((SIZE, SIZE))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy")
    x, y = np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    model.save(tiles / "model.keras")
    return tiles


def _quantize(capsys, *argv):
    code = main(["quantize", *[str(a) for a in argv]])
    out = capsys.readouterr()
    return code, out.out, out.err


def _fake_compiler(folder, compiled: bytes):
    """A stand-in edgetpu_compiler: writes `compiled` as MODEL_edgetpu.tflite, prints a log."""
    (folder / "compiled.bin").write_bytes(compiled)
    script = folder / "edgetpu_compiler"
    script.write_text(
        f"""#!/bin/sh
out=.
while [ $# -gt 1 ]; do case "$1" in -o) out="$2"; shift 2 ;; -m) shift 2 ;; *) shift ;; esac; done
cp "{folder}/compiled.bin" "$out/$(basename "$1" .tflite)_edgetpu.tflite"
echo "Edge TPU Compiler version 16.0.384591198"
echo "Model compiled successfully in 52 ms."
echo "On-chip memory used for caching model parameters: 12.25KiB"
echo "Off-chip memory used for streaming uncached model parameters: 0.00B"
echo "Number of Edge TPU subgraphs: 1"
echo "Total number of operations: 10"
echo "Compilation succeeded!"
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_quantize_check_compile_bundle_engine(task, tmp_path, capsys):
    """The whole path a user takes: quantize -> check -> compile -> bundle -> verify -> engine."""
    out = tmp_path / "tumor-s"
    code, stdout, _ = _quantize(
        capsys, task / "model.keras", "--calib", task / "calib", "--samples", 100,
        "--val", task / "val", "--out", out, "--task", "tumor", "--objectives", "10x,20x",
        "--um-per-px", 1.0, "--json",
    )  # fmt: skip
    assert code == 0
    report = json.loads(stdout)
    metric = report["output"]["metric"]
    assert metric["name"] == "pixel AUC" and metric["labelled"] == 30
    assert metric["float"] > 0.9, "the float model learned the task"
    assert metric["delta"] >= -0.01, f"int8 AUC {metric['int8']} vs float {metric['float']}"
    assert report["verdict"]["ok"] is True
    assert report["calibration"]["samples"] == 100 and report["calibration"]["seed"] == 0
    assert report["output"]["threshold_agreement"] > 0.98
    assert report["layers"] and not any(r["flagged"] for r in report["layers"])

    bundle = load_bundle(out)
    m = bundle.manifest
    assert (m.input.width, m.input.height, m.input.dtype) == (SIZE, SIZE, "uint8")
    assert m.metrics["int8_auc"] == pytest.approx(metric["int8"])
    assert json.loads(bundle.file("quant_report.json").read_text())["verdict"]["ok"] is True

    cpu = bundle.file("cpu.tflite")
    assert main(["check", str(cpu)]) == 0
    assert "compatible with the Edge TPU" in capsys.readouterr().out

    compiler = _fake_compiler(tmp_path, fakes.fake_compiled(cpu.read_bytes()))
    assert main(["compile", str(cpu), "--out-dir", str(tmp_path), "--compiler", str(compiler)]) == 0
    capsys.readouterr()
    compiled = tmp_path / "cpu_edgetpu.tflite"

    packed = tmp_path / "tumor-s.tar.gz"
    code = main(["bundle", "--from", str(out), "--edgetpu", str(compiled),
                 "--out", str(tmp_path / "tumor-s-tpu"), "--pack", str(packed)])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    assert main(["bundle", "--verify", str(packed)]) == 0
    assert capsys.readouterr().out.startswith("verified: bundle tumor-s")

    final = load_bundle(packed, unpack_dir=tmp_path / "unpacked")
    assert final.has_edgetpu and "quant_report.json" in final.manifest.files
    engine = Engine(final, device="auto", num_threads=1)  # no Edge TPU here: CPU fallback
    assert engine.info.model_file == "cpu.tflite" and engine.info.fallback_reason
    assert engine.health_check()["ok"]
    rng = np.random.default_rng(9)
    frame = np.concatenate([_tile(rng)[0] for _ in range(3)], axis=1)  # 64 x 192 px
    heat = engine.infer(frame, um_per_px=1.0)
    assert heat.probs.shape == (SIZE // 4, 3 * SIZE // 4)
    assert 0.0 <= heat.probs.min() and heat.probs.max() <= 1.0


def test_printed_report_and_seeded_subset(task, tmp_path, capsys):
    args = [task / "model.keras", "--calib", task / "calib", "--samples", 20, "--no-layer-report"]
    code, text, _ = _quantize(capsys, *args, "--seed", 7, "--out", tmp_path / "a")
    assert code == 0
    assert "calibration: 20 of 110 images" in text and "seed 7" in text
    assert "note: only 20 calibration images (100-500 recommended)" in text
    assert "verdict: OK" in text
    assert "calibration images not used for calibration (no --val)" in text
    files = {}
    for name, seed in (("b", 7), ("c", 8)):
        code, out, _ = _quantize(capsys, *args, "--seed", seed, "--out", tmp_path / name, "--json")
        files[name] = json.loads(out)["calibration"]["files"]
    a_files = json.loads((tmp_path / "a" / "quant_report.json").read_text())["calibration"]["files"]
    assert a_files == files["b"] != files["c"]


def test_bad_calibration_is_named_bad(task, tmp_path, capsys):
    """Calibrating on dark frames clips real tissue: the report says so and --strict fails."""
    blank = tmp_path / "dark"
    blank.mkdir()
    for i in range(10):
        cv2.imwrite(str(blank / f"b{i}.png"), np.full((SIZE, SIZE, 3), 40, np.uint8))
    code, text, _ = _quantize(
        capsys, task / "model.keras", "--calib", blank, "--val", task / "val",
        "--out", tmp_path / "bad", "--strict",
    )  # fmt: skip
    assert code == 1
    verdict = next(ln for ln in text.splitlines() if "verdict:" in ln)
    assert "BAD: int8 pixel AUC" in verdict and "below float" in verdict
    assert "see flagged layers" in verdict
    assert "<- FLAGGED" in text


def test_saved_model_with_normalization_and_dynamic_size(tmp_path, tiles, capsys):
    """A SavedModel that expects (pixel - 127.5) / 127.5 and has no fixed input size."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x = inp = keras.Input((None, None, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(1, 3, strides=2, padding="same", activation="sigmoid")(x)
    model = keras.Model(inp, x)
    saved = tmp_path / "saved"
    model.export(str(saved), verbose=False)
    out = tmp_path / "norm"
    code, text, err = _quantize(
        capsys, saved, "--calib", tiles / "calib", "--samples", 30, "--input-size", "64x64",
        "--mean", "127.5", "--std", "127.5", "--out", out, "--no-layer-report",
    )  # fmt: skip
    assert code == 0, err
    bundle = load_bundle(out)
    assert bundle.manifest.normalization.mean == (127.5, 127.5, 127.5)
    tile = _tile(np.random.default_rng(5))[0]
    want = model.predict(((tile.astype(np.float32) - 127.5) / 127.5)[None], verbose=0)[0, ..., 0]
    got = Engine(bundle, device="cpu", num_threads=1).infer_tile(tile)
    assert np.max(np.abs(got - want)) < 0.03


def test_dynamic_input_needs_a_size(tmp_path, tiles, capsys):
    from lucida.tools.demo.tiny_models import tiny_fcn

    path = tmp_path / "dyn.keras"
    tiny_fcn(None).save(path)
    code, _, err = _quantize(capsys, path, "--calib", tiles / "calib", "--out", tmp_path / "x")
    assert code == 2
    assert "input size is dynamic" in err and "--input-size" in err


def test_float_op_left_in_graph_is_an_error(tmp_path, tiles, capsys):
    import tensorflow as tf

    class Mod(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)], autograph=False
        )
        def __call__(self, x):
            return tf.math.floormod(x, 7.0) / 7.0

    saved = tmp_path / "floormod"
    mod = Mod()
    tf.saved_model.save(mod, str(saved), signatures=mod.__call__)
    code, _, err = _quantize(capsys, saved, "--calib", tiles / "calib", "--samples", 10,
                             "--out", tmp_path / "fm")  # fmt: skip
    assert code == 2
    assert "float op(s) left in the int8 graph: op 1 FLOOR_MOD (float32" in err
    assert not (tmp_path / "fm").exists()


def test_empty_calibration_folder(tmp_path, tiles, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _quantize(
        capsys, tmp_path / "model.keras", "--calib", tmp_path / "empty", "--out", tmp_path / "x"
    )
    assert code == 2 and "no images" in err
