"""`lucida check` on real int8 models built to straddle each rule's edge (TensorFlow converter).

For every generated model the documented compiler behaviour gives the number of ops it maps
(the oracle: Coral's conditions, one Edge TPU subgraph, CPU from the first refused op on). The
property: `ops_mappable` is never below it (an upper bound), and without uncertain ops it is
exactly it. Models are drawn from a seeded generator: sizes just inside and just outside each
limit, the refused op at random depths.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from lucida.tools.cli import main
from lucida.tools.toolchain.check import check_file

pytestmark = pytest.mark.tf


def _convert(fn, shape) -> bytes:
    import tensorflow as tf

    f = tf.function(fn, autograph=False)
    rng = np.random.default_rng(0)
    samples = [rng.uniform(0, 255, shape).astype(np.float32) for _ in range(3)]
    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [f.get_concrete_function(tf.TensorSpec(shape, tf.float32))], f
    )
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([s] for s in samples)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    return conv.convert()


def _cpu_from(first_refused: str):
    """Oracle: ops before the first `first_refused` op map; it and every op after it do not."""

    def oracle(opcodes: list[str]) -> int:
        return opcodes.index(first_refused) if first_refused in opcodes else len(opcodes)

    return oracle


def _all(opcodes: list[str]) -> int:
    return len(opcodes)


def _cases():
    """(name, tf function, input shape, oracle) drawn from a seeded generator."""
    import tensorflow as tf

    rng = random.Random(15)
    w8 = tf.constant(np.random.default_rng(1).normal(0, 0.2, (3, 3, 8, 8)).astype(np.float32))
    w3 = tf.constant(np.random.default_rng(2).normal(0, 0.2, (3, 3, 3, 8)).astype(np.float32))

    def convs(x, n):
        y = tf.nn.relu(tf.nn.conv2d(x / 255.0, w3, 1, "SAME"))
        for _ in range(n):
            y = tf.nn.relu(tf.nn.conv2d(y, w8, 1, "SAME"))
        return y

    cases = []
    for depth in (8, 6):  # MEAN over the channels: depth a multiple of 4 or not
        w = tf.constant(
            np.random.default_rng(3).normal(0, 0.2, (1, 1, 8, depth)).astype(np.float32)
        )

        def mean_z(w):
            def fn(x):
                y = tf.nn.conv2d(convs(x, 1), w, 1, "SAME")
                return tf.sigmoid(tf.reduce_mean(y, axis=-1, keepdims=True))

            return fn

        oracle = _all if depth % 4 == 0 else _cpu_from("MEAN")
        cases.append((f"mean_depth{depth}", mean_z(w), [1, 12, 12, 3], oracle))
    for n in (16000, 16004):  # SOFTMAX: at most 16,000 elements
        cases.append((f"softmax_{n}", lambda x: tf.nn.softmax(x / 255.0), [1, n], None))
    for stride in (1, 2):  # STRIDED_SLICE: strides of 1 only

        def sliced(s):
            return lambda x: tf.sigmoid(convs(x, 1)[:, 1:11:s, :, :])

        oracle = _all if stride == 1 else _cpu_from("STRIDED_SLICE")
        cases.append((f"strided_slice_{stride}", sliced(stride), [1, 12, 12, 3], oracle))
    for k in sorted(rng.sample(range(4), 2)):  # an unsupported op at a random depth

        def leaky_at(k):
            return lambda x: tf.sigmoid(tf.nn.conv2d(tf.nn.leaky_relu(convs(x, k)), w8, 1, "SAME"))

        cases.append(
            (f"leaky_after_{k}_convs", leaky_at(k), [1, 10, 10, 3], _cpu_from("LEAKY_RELU"))
        )

    def leading(x):  # a CPU op at the input: what follows it still maps (edgetpu#597)
        return tf.sigmoid(convs(tf.nn.leaky_relu(x), 1))

    def leading_oracle(opcodes):  # input QUANTIZE and LEAKY_RELU on the CPU, the rest mapped
        return len(opcodes) - 2

    cases.append(("leading_leaky", leading, [1, 10, 10, 3], leading_oracle))
    cases.append(
        ("argmax_tail", lambda x: tf.argmax(convs(x, 1), axis=-1, output_type=tf.int32),
         [1, 10, 10, 3], _cpu_from("ARG_MAX"))
    )  # fmt: skip
    return cases


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straddle")
    out = []
    for name, fn, shape, oracle in _cases():
        path = folder / f"{name}.tflite"
        path.write_bytes(_convert(fn, shape))
        out.append((name, path, oracle))
    return out


def _softmax_oracle(name, opcodes):
    n = int(name.split("_")[1])
    return len(opcodes) if n <= 16000 else opcodes.index("SOFTMAX")


def test_ops_mappable_is_an_upper_bound_of_the_documented_compiler(generated):
    seen = []
    for name, path, oracle in generated:
        r = check_file(path)
        opcodes = [o["opcode"] for o in r.ops]
        expected = _softmax_oracle(name, opcodes) if oracle is None else oracle(opcodes)
        assert r.ops_mappable >= expected, (name, opcodes, r.ops_mappable, expected)
        assert r.ops_mappable - r.ops_uncertain <= expected, (name, opcodes, r.ops)
        if not r.ops_uncertain:
            assert r.ops_mappable == expected, (name, opcodes)
        seen.append((name, r.ops_mappable, expected))
    # Each edge was straddled: one side maps everything, the other does not.
    by = dict((n, (m, e)) for n, m, e in seen)
    assert by["mean_depth8"][0] > by["mean_depth6"][0]
    assert by["softmax_16000"][0] > by["softmax_16004"][0]
    assert by["strided_slice_1"][0] > by["strided_slice_2"][0]


def test_per_op_json_names_where_each_op_runs(generated, capsys):
    path = next(p for n, p, _ in generated if n.startswith("leaky_after"))
    assert main(["check", str(path), "--json"]) == 1
    r = json.loads(capsys.readouterr().out)
    ops = r["ops"]
    leaky = next(o for o in ops if o["opcode"] == "LEAKY_RELU")
    assert leaky["runs_on"] == "cpu" and "not supported" in leaky["reason"]
    after = [o for o in ops if o["index"] > leaky["index"] and o["runs_on"] == "cpu"]
    assert after and all("follows CPU op" in o["reason"] for o in after)
    assert r["layout"]["tpu_segments"][0][0] == 0
    assert r["layout"]["transitions"] == 1
    assert r["ops_mappable"] == sum(o["runs_on"] == "edgetpu" for o in ops)


def test_leading_cpu_op_does_not_stop_the_mapping(generated):
    path = next(p for n, p, _ in generated if n == "leading_leaky")
    r = check_file(path)
    ops = {o["opcode"]: o for o in reversed(r.ops)}
    assert ops["LEAKY_RELU"]["runs_on"] == "cpu"
    assert all(o["runs_on"] == "edgetpu" for o in r.ops if o["opcode"] == "CONV_2D")
    assert r.layout["leading_cpu_ops"] and r.layout["transitions"] == 1


def test_argmax_tail_is_mapped_except_its_tail_and_exits_0(generated, capsys):
    path = next(p for n, p, _ in generated if n == "argmax_tail")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mapped except its tail" in out and "ARG_MAX" in out.splitlines()[-1]
    r = check_file(path)
    assert r.verdict == "mapped_except_tail" and not r.problems
    assert r.layout["tail_only"] and r.layout["transitions"] == 1
