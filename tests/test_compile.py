"""`lucida compile`: the edgetpu_compiler log parser, a fake compiler on PATH, and its absence."""

from __future__ import annotations

import json
import os
import stat

import pytest
import tflite_fakes as fakes
from lucida.tools.cli import main
from lucida.tools.toolchain.compile import parse_compiler_log

# What edgetpu_compiler 16 prints with -s (written for these tests in the compiler's format).
LOG_ALL_MAPPED = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1117 ms.

Input model: tumor_int8.tflite
Input size: 3.95MiB
Output model: tumor_int8_edgetpu.tflite
Output size: 4.12MiB
On-chip memory used for caching model parameters: 3.89MiB
On-chip memory remaining for caching model parameters: 3.86MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 31
Operation log: tumor_int8_edgetpu.log

Operator                       Count      Status

CONV_2D                        14         Mapped to Edge TPU
DEPTHWISE_CONV_2D              13         Mapped to Edge TPU
LOGISTIC                       1          Mapped to Edge TPU
QUANTIZE                       2          Mapped to Edge TPU
ADD                            1          Mapped to Edge TPU
Compilation child process completed within timeout period.
Compilation succeeded!
"""

LOG_PARTIAL = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 412 ms.

Input model: lymph_int8.tflite
Input size: 1.21MiB
Output model: lymph_int8_edgetpu.tflite
Output size: 1.18MiB
On-chip memory used for caching model parameters: 864.00KiB
On-chip memory remaining for caching model parameters: 6.89MiB
Off-chip memory used for streaming uncached model parameters: 512.00KiB
Number of Edge TPU subgraphs: 1
Total number of operations: 24
Operation log: lymph_int8_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of \
the model will instead run on the CPU, which is slower. If possible, consider updating your model \
to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 20
Number of operations that will run on CPU: 4

Operator                       Count      Status

CONV_2D                        12         Mapped to Edge TPU
DEPTHWISE_CONV_2D              6          Mapped to Edge TPU
QUANTIZE                       1          Mapped to Edge TPU
ADD                            1          Mapped to Edge TPU
LEAKY_RELU                     1          Operation not supported
CONV_2D                        2          More than one subgraph is not supported
QUANTIZE                       1          More than one subgraph is not supported
Compilation child process completed within timeout period.
Compilation succeeded!
"""

LOG_FAILED = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.
ERROR: Attempting to use a delegate that only supports static-sized tensors with a graph that \
has dynamic-sized tensors.
Compilation failed: Model failed in Tflite interpreter. Please ensure model can be loaded/run in \
Tflite interpreter.
Compilation child process completed within timeout period.
Compilation failed!
"""

# The .log file an older compiler writes beside the model (no summary, only the table).
LOG_FILE_V14 = """\
Edge TPU Compiler version 14.1.317412892
Input: tiny_yolo.tflite
Output: tiny_yolo_edgetpu.tflite

Operator                       Count      Status

MAX_POOL_2D                    6          Mapped to Edge TPU
CONV_2D                        11         Mapped to Edge TPU
RESIZE_NEAREST_NEIGHBOR        1          Operation version not supported
QUANTIZE                       1          Operation is otherwise supported, but not mapped due to \
some unspecified limitation
CONV_2D                        2          More than one subgraph is not supported
"""


def test_parse_all_mapped():
    r = parse_compiler_log(LOG_ALL_MAPPED)
    assert r["succeeded"] is True
    assert r["compiler_version"] == "16.0.384591198"
    assert r["on_chip_mib"] == pytest.approx(3.89)
    assert r["on_chip_remaining_mib"] == pytest.approx(3.86)
    assert r["off_chip_mib"] == 0
    assert r["subgraphs"] == 1
    assert (r["ops_total"], r["ops_tpu"], r["ops_cpu"]) == (31, 31, 0)
    assert r["input_model"] == "tumor_int8.tflite"
    assert r["output_model"] == "tumor_int8_edgetpu.tflite"
    assert r["compile_ms"] == 1117
    assert len(r["operators"]) == 5 and all(row["mapped"] for row in r["operators"])


def test_parse_partial_mapping_counts_cpu_ops_and_units():
    r = parse_compiler_log(LOG_PARTIAL)
    assert r["succeeded"] is True
    assert r["on_chip_mib"] == pytest.approx(864 / 1024)
    assert r["off_chip_mib"] == pytest.approx(0.5)
    assert (r["ops_total"], r["ops_tpu"], r["ops_cpu"]) == (24, 20, 4)
    cpu = [row for row in r["operators"] if not row["mapped"]]
    assert [(row["op"], row["count"]) for row in cpu] == [
        ("LEAKY_RELU", 1),
        ("CONV_2D", 2),
        ("QUANTIZE", 1),
    ]
    assert cpu[0]["status"] == "Operation not supported"


def test_parse_failure_keeps_the_error_line():
    r = parse_compiler_log(LOG_FAILED)
    assert r["succeeded"] is False
    assert r["errors"][0].startswith("ERROR: Attempting to use a delegate that only supports")
    assert r["operators"] == []


def test_parse_older_log_file_counts_from_the_table():
    r = parse_compiler_log(LOG_FILE_V14)
    assert r["compiler_version"] == "14.1.317412892"
    assert r["input_model"] == "tiny_yolo.tflite"
    assert (r["ops_total"], r["ops_tpu"], r["ops_cpu"]) == (21, 17, 4)
    assert r["operators"][3]["status"].startswith("Operation is otherwise supported")


def _fake_compiler(folder, log: str, rc: int = 0, compiled: bytes | None = None):
    """A shell script that behaves like edgetpu_compiler: writes MODEL_edgetpu.tflite, prints log.

    compiled: what it writes (default: the input with its ops replaced by one edgetpu-custom-op
    in libedgetpu's layout, 3.89 MiB cached, as LOG_ALL_MAPPED says).
    """
    (folder / "log.txt").write_text(log)
    (folder / "compiled.tflite").write_bytes(compiled or b"")
    script = folder / "edgetpu_compiler"
    script.write_text(
        f"""#!/bin/sh
out=.
while [ $# -gt 1 ]; do
  case "$1" in
    -o|--out_dir) out="$2"; shift 2 ;;
    -m|--min_runtime_version) echo "$2" > "{folder}/runtime_arg"; shift 2 ;;
    *) shift ;;
  esac
done
name=$(basename "$1" .tflite)
[ {rc} -eq 0 ] && cp "{folder}/compiled.tflite" "$out/${{name}}_edgetpu.tflite"
cat "{folder}/log.txt"
exit {rc}
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.fixture()
def model(tiny_bundle, tmp_path):
    """A real int8 .tflite (built with TensorFlow by the session's tiny_bundle)."""
    dst = tmp_path / "tumor_int8.tflite"
    dst.write_bytes(tiny_bundle.file("cpu.tflite").read_bytes())
    return dst


def _twin(model, on_chip_mib=3.89, off_chip_mib=0.0) -> bytes:
    return fakes.compile_prefix(
        model.read_bytes(), _last_op(model), int(on_chip_mib * 2**20), int(off_chip_mib * 2**20)
    )


def _last_op(model) -> int:
    from lucida.tools.toolchain.tflite_reader import read_tflite

    return len(read_tflite(model).ops) - 1


@pytest.mark.tf
def test_compile_without_compiler_exits_3_with_install_steps(model, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LUCIDA_EDGETPU_COMPILER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["compile", str(model)]) == 3
    err = capsys.readouterr().err
    assert "edgetpu_compiler is not on PATH" in err
    assert "apt-get install edgetpu-compiler" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.tf
def test_compile_with_fake_compiler_on_path(model, tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_compiler(bin_dir, LOG_PARTIAL, compiled=_twin(model, 864 / 1024, 0.5))
    monkeypatch.delenv("LUCIDA_EDGETPU_COMPILER", raising=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out_dir = tmp_path / "out"
    code = main(["compile", str(model), "--out-dir", str(out_dir), "--runtime-version", "13"])
    out = capsys.readouterr().out
    assert code == 0
    assert "20 on the Edge TPU, 4 on the CPU" in out
    assert "part of the model runs on the CPU" in out
    assert (out_dir / "tumor_int8_edgetpu.tflite").is_file()
    assert (bin_dir / "runtime_arg").read_text().strip() == "13"


@pytest.mark.tf
def test_compile_json_via_env_compiler(model, tmp_path, monkeypatch, capsys):
    script = _fake_compiler(tmp_path, LOG_ALL_MAPPED, compiled=_twin(model))
    monkeypatch.setenv("LUCIDA_EDGETPU_COMPILER", str(script))
    assert main(["compile", str(model), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["on_chip_mib"] == pytest.approx(3.89) and r["ops_cpu"] == 0
    pk = r["package"]  # read back from the compiled file, and it agrees with the log
    assert pk["edgetpu_subgraphs"] == 1 and pk["min_runtime_version"] == 14
    assert pk["on_chip_bytes"] == int(3.89 * 2**20) and pk["log_mismatch"] == []
    assert r["edgetpu_model"] == str(model.parent / "tumor_int8_edgetpu.tflite")
    assert os.path.isfile(r["edgetpu_model"])


@pytest.mark.tf
def test_compile_failure_exits_1_with_compiler_error(model, tmp_path, capsys):
    script = _fake_compiler(tmp_path, LOG_FAILED, rc=1)
    assert main(["compile", str(model), "--compiler", str(script)]) == 1
    err = capsys.readouterr().err
    assert "edgetpu_compiler failed on tumor_int8.tflite (exit 1)" in err
    assert "static-sized tensors" in err


def test_compile_refuses_a_file_that_is_not_tflite(tmp_path, capsys):
    bad = tmp_path / "model.tflite"
    bad.write_text("not a model")
    assert main(["compile", str(bad), "--compiler", "/bin/true"]) == 2
    assert "not a TFLite model" in capsys.readouterr().err


@pytest.mark.tf
def test_compile_flags_a_compiled_file_that_disagrees_with_the_log(model, tmp_path, capsys):
    script = _fake_compiler(tmp_path, LOG_ALL_MAPPED, compiled=_twin(model, 1.0, 2.0))
    assert main(["compile", str(model), "--compiler", str(script)]) == 0
    out = capsys.readouterr().out
    assert "read back: 1 Edge TPU subgraph(s), runtime >= 14" in out
    assert "disagree on on_chip_bytes: log 3.89 MiB, file 1.00 MiB" in out


@pytest.mark.tf
def test_compile_refuses_output_without_edgetpu_op(model, tmp_path, capsys):
    script = _fake_compiler(tmp_path, LOG_ALL_MAPPED, compiled=model.read_bytes())
    assert main(["compile", str(model), "--compiler", str(script)]) == 1
    assert "no edgetpu-custom-op" in capsys.readouterr().err
