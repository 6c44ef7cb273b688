"""`lucida check`: tells an Edge TPU compatible model from broken and incompatible ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tflite_fakes as fakes
from lucida.tools.cli import main
from lucida.tools.toolchain.tflite_reader import TFLiteReadError, read_tflite

SIZE = 16
pytestmark = pytest.mark.tf


def _convert(py_fn, shape, int8=True, int16=False) -> bytes:
    """A function of a float RGB tensor -> TFLite bytes (full int8 with uint8 I/O, or float).

    Traced afresh for each shape (a reused tf.function relaxes its shape to a dynamic batch).
    """
    import tensorflow as tf

    fn = tf.function(py_fn, autograph=False)
    rng = np.random.default_rng(0)
    samples = [rng.uniform(0, 255, (1, *shape[1:])).astype(np.float32) for _ in range(4)]
    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function(tf.TensorSpec(shape, tf.float32))], fn
    )
    if int8 or int16:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([s] for s in samples)
    if int16:
        ops = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        conv.target_spec.supported_ops = [ops]
        conv.inference_input_type = tf.int16
        conv.inference_output_type = tf.int16
    elif int8:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    return conv.convert()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """name -> path of one compatible and many broken or incompatible .tflite files."""
    import tensorflow as tf

    w = tf.constant(np.random.default_rng(1).normal(0, 0.1, (3, 3, 3, 8)).astype(np.float32))

    def conv_net(x):  # conv 3x3 (3 -> 8 channels) + relu + sigmoid: all Edge TPU ops
        y = tf.nn.relu(tf.nn.conv2d(x / 255.0, w, 1, "SAME"))
        return tf.sigmoid(tf.reduce_mean(y, axis=-1, keepdims=True))

    def leaky(x):
        return tf.nn.leaky_relu(tf.nn.conv2d(x / 255.0, w, 1, "SAME"))

    def five_d(x):
        y = tf.reshape(x, [1, 2, SIZE // 2, SIZE, 3]) * 2.0 + 1.0
        return tf.reshape(y, [1, SIZE, SIZE, 3])

    def floor_mod(x):
        return tf.math.floormod(x, 7.0)

    s = [1, SIZE, SIZE, 3]
    ok = _convert(conv_net, s)
    built = {
        "ok": ok,
        "float": _convert(conv_net, s, int8=False),
        "dynamic_batch": _convert(conv_net, [None, SIZE, SIZE, 3]),
        "batch2": _convert(conv_net, [2, SIZE, SIZE, 3]),
        "unsupported_op": _convert(leaky, s),
        "five_d": _convert(five_d, s),
        "float_left": _convert(floor_mod, s),  # TFLITE_BUILTINS_INT8 kept FLOOR_MOD in float
        "int16": _convert(conv_net, s, int16=True),
        "custom_op": fakes.with_custom_op(ok, 1, "MyPreprocess"),
        "subgraphs": fakes.with_extra_subgraph(ok),
        "big": fakes.with_big_params_and_input(ok, 9 * 2**20, 2048),
        "compiled": fakes.fake_compiled(ok),
        "truncated": ok[: len(ok) // 2],
        "not_tflite": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "zero": b"",
    }
    folder = tmp_path_factory.mktemp("check_models")
    paths = {}
    for name, data in built.items():
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(data)
    return paths


def _check(capsys, *argv):
    code = main(["check", *[str(a) for a in argv]])
    out = capsys.readouterr()
    return code, out.out, out.err


def _reason(stdout: str) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("NOT Edge TPU compatible:")]
    assert len(lines) == 1, stdout
    return lines[0]


def test_compatible_model_exits_0(models, capsys):
    code, out, _ = _check(capsys, models["ok"])
    assert code == 0
    assert "compatible with the Edge TPU" in out.splitlines()[-1]
    assert "CONV_2D" in out


@pytest.mark.parametrize(
    "name, expected",
    [
        ("float", ["op 0", "is a float op", "float32[1,16,16,3]"]),
        ("dynamic_batch", ["dynamic batch", "-1,16,16,3"]),
        ("batch2", ["batch size 2"]),
        ("unsupported_op", ["LEAKY_RELU is not supported by the Edge TPU", "run on the CPU"]),
        ("five_d", ["int8[1,2,8,16,3]", "at most 3"]),
        ("float_left", ["DEQUANTIZE is not supported"]),
        ("int16", ["is not 8-bit", "int16"]),
        ("custom_op", ["op 1 MyPreprocess is a custom op"]),
        ("subgraphs", ["2 subgraphs"]),
    ],
)
def test_incompatible_model_exits_1_with_one_line_reason(models, capsys, name, expected):
    code, out, err = _check(capsys, models[name])
    assert code == 1, err
    reason = _reason(out)
    for text in expected:
        assert text in reason, reason


def test_float_left_in_int8_graph_is_named(models, capsys):
    code, out, _ = _check(capsys, models["float_left"])
    assert code == 1
    assert "op 1 FLOOR_MOD is not supported by the Edge TPU and is a float op" in out


def test_first_cpu_op_is_marked(models, capsys):
    code, out, _ = _check(capsys, models["unsupported_op"])
    marked = [ln for ln in out.splitlines() if "<- CPU from here" in ln]
    assert len(marked) == 1 and "LEAKY_RELU" in marked[0]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("truncated", "truncated or corrupt"),
        ("not_tflite", "not a TFLite model"),
        ("zero", "empty file (zero bytes)"),
    ],
)
def test_unreadable_file_exits_2_without_traceback(models, capsys, name, expected):
    code, out, err = _check(capsys, models[name])
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_file_exits_2(tmp_path, capsys):
    code, _, err = _check(capsys, tmp_path / "nope.tflite")
    assert code == 2 and "no such file" in err


def test_runtime_version_gates_newer_ops(models, capsys):
    code, out, _ = _check(capsys, models["ok"], "--runtime-version", "12")
    assert code == 1
    assert "QUANTIZE needs Edge TPU runtime >= 13 (targeting 12)" in _reason(out)


def test_big_model_warns_but_passes(models, capsys):
    code, out, _ = _check(capsys, models["big"])
    assert code == 0
    assert "exceed the ~8 MiB on-chip memory" in out
    assert "is very large" in out


def test_compiled_model_is_recognised(models, capsys):
    code, out, _ = _check(capsys, models["compiled"])
    assert code == 0
    assert "(already compiled)" in out


def test_json_report(models, capsys):
    code, out, _ = _check(capsys, models["unsupported_op"], "--json")
    assert code == 1
    r = json.loads(out)
    assert r["compatible"] is False
    assert r["first_cpu_op"]["opcode"] == "LEAKY_RELU"
    assert r["ops_mappable"] == r["first_cpu_op"]["index"]
    assert [p["kind"] for p in r["problems"]] == ["unsupported_op"]
    code, out, _ = _check(capsys, models["zero"], "--json")
    assert code == 2 and json.loads(out)["readable"] is False


def test_reader_counts_macs_and_bytes(models):
    m = read_tflite(models["ok"])
    conv = next(op for op in m.ops if op.opcode == "CONV_2D")
    assert conv.macs == SIZE * SIZE * 8 * (3 * 3 * 3)  # out elements x kernel volume
    weights = next(t for t in conv.inputs if t.constant and t.dtype == "int8")
    assert weights.shape == (8, 3, 3, 3) and weights.bytes == 8 * 27
    assert weights.scales == 8  # per-channel
    assert m.param_bytes >= weights.bytes
    assert m.inputs[0].dtype == "uint8" and m.inputs[0].shape == (1, SIZE, SIZE, 3)
    assert m.to_dict()["macs"] == m.macs


def test_reader_rejects_bytes_that_are_not_tflite():
    with pytest.raises(TFLiteReadError, match="not a TFLite model"):
        read_tflite(b"{}" * 10)
