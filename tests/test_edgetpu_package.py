"""Compiled models read back: the edgetpu-custom-op's package (libedgetpu's layout), via `check`.

The compiled files are built here: a real int8 model whose leading ops are replaced by one
edgetpu-custom-op, its custom options a flexbuffer map holding a `Package` flatbuffer
(executable.fbs) with PARAMETER_CACHING / EXECUTION_ONLY / STAND_ALONE executables, written with
the flatbuffers and flexbuffers packages. Real compiled models (from PyPI, fetched on demand) are
read in test_edgetpu_real_compiled.py.
"""

from __future__ import annotations

import json

import pytest
import tflite_fakes as fakes
from lucida.tools.cli import main
from lucida.tools.toolchain.check import check_file
from lucida.tools.toolchain.edgetpu_package import (
    PackageReadError,
    co_compiled,
    read_compiled,
    read_package,
    summarize,
)
from lucida.tools.toolchain.tflite_reader import read_tflite

pytestmark = pytest.mark.tf
MiB = 2**20


@pytest.fixture(scope="session")
def cpu_models(tmp_path_factory):
    """Two real int8 models: conv+sigmoid (all Edge TPU ops), and one ending in ARG_MAX."""
    import numpy as np
    import tensorflow as tf

    w = tf.constant(np.random.default_rng(1).normal(0, 0.2, (3, 3, 3, 8)).astype(np.float32))

    def convert(fn):
        f = tf.function(fn, autograph=False)
        spec = tf.TensorSpec([1, 12, 12, 3], tf.float32)
        conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function(spec)], f)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        rng = np.random.default_rng(0)
        conv.representative_dataset = lambda: (
            [rng.uniform(0, 255, (1, 12, 12, 3)).astype(np.float32)] for _ in range(3)
        )
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
        return conv.convert()

    plain = convert(lambda x: tf.sigmoid(tf.nn.conv2d(x / 255.0, w, 1, "SAME")))
    argmax = convert(lambda x: tf.argmax(tf.nn.conv2d(x / 255.0, w, 1, "SAME"), -1))
    return plain, argmax


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_package_figures_are_read_from_the_custom_options():
    pkg = read_package(fakes.compiled_package(3 * MiB, MiB // 2, token=0xABC, min_runtime=13))
    assert (pkg.on_chip_bytes, pkg.off_chip_bytes) == (3 * MiB, MiB // 2)
    assert pkg.min_runtime_version == 13 and pkg.compiler_version == "16.0.384591198"
    assert [e.type for e in pkg.executables] == ["PARAMETER_CACHING", "EXECUTION_ONLY"]
    assert pkg.caching_tokens == {0xABC}
    assert pkg.executables[1].instruction_bytes == 64 and pkg.executables[0].chip == "beagle"


def test_stand_alone_executable_streams_everything():
    pkg = read_package(fakes.compiled_package(0, 5 * MiB))
    assert [e.type for e in pkg.executables] == ["STAND_ALONE"]
    assert pkg.on_chip_bytes == 0 and pkg.off_chip_bytes == 5 * MiB and not pkg.caching_tokens


@pytest.mark.parametrize(
    "options, expected",
    [
        (b"", "without custom options"),
        (b"fake compiled executable", "corrupt Edge TPU package"),
        (fakes.custom_options(b"\x00" * 64), "not a DarwiNN package"),
    ],
)
def test_unreadable_package_is_one_clear_error(options, expected):
    with pytest.raises(PackageReadError, match=expected):
        read_package(options)


def test_compiled_model_with_argmax_tail(cpu_models, tmp_path, capsys):
    plain, argmax = cpu_models
    ops = [op.opcode for op in read_tflite(argmax).ops]
    last = ops.index("ARG_MAX") - 1
    compiled = _write(tmp_path, "seg_edgetpu.tflite", fakes.compile_prefix(argmax, last, MiB, 0))
    r = check_file(compiled)
    assert r.compiled and r.verdict == "mapped_except_tail" and not r.problems
    assert r.package["edgetpu_subgraphs"] == 1
    assert r.runtime_version == r.package["min_runtime_version"] == 14
    assert r.memory == {"on_chip_bytes": MiB, "off_chip_bytes": 0, "source": "compiled package"}
    assert r.param_bytes >= MiB and r.macs is None
    assert main(["check", str(compiled)]) == 0
    out = capsys.readouterr().out
    assert "mapped except its tail" in out and "declares runtime >= 14" in out
    assert "parameters on-chip 1.00 MiB, streamed (off-chip) 0.0 KiB" in out


def test_compiled_model_json_and_co_compilation(cpu_models, tmp_path, capsys):
    plain, _ = cpu_models
    n = len(read_tflite(plain).ops)
    a = _write(tmp_path, "a_edgetpu.tflite", fakes.compile_prefix(plain, n - 1, MiB, 2 * MiB, 7))
    b = _write(tmp_path, "b_edgetpu.tflite", fakes.compile_prefix(plain, n - 1, MiB, 0, 7))
    c = _write(tmp_path, "c_edgetpu.tflite", fakes.compile_prefix(plain, n - 1, MiB, 0, 8))
    assert main(["check", str(a), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["verdict"] == "compatible" and r["compiled"] is True
    assert r["package"]["on_chip_bytes"] == MiB and r["package"]["off_chip_bytes"] == 2 * MiB
    assert r["ops"][0]["runs_on"] == "edgetpu" and r["ops"][0]["opcode"] == "edgetpu-custom-op"
    pa, pb, pc = (read_compiled(read_tflite(p)) for p in (a, b, c))
    assert co_compiled(pa, pb) and not co_compiled(pa, pc)
    assert summarize(pa)["caching_tokens"] == [7]


def test_compiled_model_with_corrupt_package_exits_1(cpu_models, tmp_path, capsys):
    plain, _ = cpu_models
    n = len(read_tflite(plain).ops)
    good = fakes.compile_prefix(plain, n - 1, MiB, 0)
    bad = _write(tmp_path, "bad_edgetpu.tflite", fakes.with_custom_options(good, b"garbage!"))
    assert main(["check", str(bad)]) == 1
    assert "unreadable Edge TPU package" in capsys.readouterr().out


def test_ops_the_compiler_left_on_the_cpu(cpu_models, tmp_path):
    plain, _ = cpu_models
    ops = [op.opcode for op in read_tflite(plain).ops]  # QUANTIZE CONV_2D LOGISTIC QUANTIZE
    tail = _write(tmp_path, "t_edgetpu.tflite", fakes.compile_prefix(plain, len(ops) - 2, MiB, 0))
    r = check_file(tail)  # only the output QUANTIZE left behind: an expected tail
    assert r.verdict == "mapped_except_tail"
    assert (
        r.ops[-1]["runs_on"] == "cpu"
        and "left on the CPU by edgetpu_compiler" in r.ops[-1]["reason"]
    )
    early = _write(tmp_path, "e_edgetpu.tflite", fakes.compile_prefix(plain, 0, MiB, 0))
    r = check_file(early)  # the convolution left on the CPU: not what a good compile looks like
    assert r.verdict == "incompatible"
    assert "CONV_2D was left on the CPU by edgetpu_compiler" in r.reason
