"""`lucida compile a.tflite b.tflite`: co-compiling, the log parsed per model, outputs read back.

The compiler logs below are published ones (sources next to each). The fake compiler on PATH prints
such a log, writes each model's operator table to `<name>_edgetpu.log` (the operation log the
real compiler writes beside every output) and writes compiled files built like
tflite_fakes.compile_prefix: the real int8 model with its ops in one edgetpu-custom-op whose
package caches the log's on-chip bytes under a parameter-caching token.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import tflite_fakes as fakes
from lucida.tools.cli import main
from lucida.tools.toolchain.cocompile import parse_cocompile_log, split_sections

# edgetpu_compiler 16 run as `edgetpu_compiler 1.tflite 2.tflite` (with -o), published in
# https://github.com/google-coral/edgetpu/issues/458 (2021-08-31). The last two lines, cut off in
# the stored copy, are the compiler's closing lines as in google-coral/edgetpu#572.
LOG_458 = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Models compiled successfully in 524 ms.

Input model: temp_models/1.tflite
Input size: 1.91MiB
Output model: temp_models/co-compiled/2/1_edgetpu.tflite
Output size: 2.52MiB
On-chip memory used for caching model parameters: 2.27MiB
On-chip memory remaining for caching model parameters: 1.07MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 57
Operation log: temp_models/co-compiled/2/1_edgetpu.log
See the operation log file for individual operation details.

Input model: temp_models/2.tflite
Input size: 1.87MiB
Output model: temp_models/co-compiled/2/2_edgetpu.tflite
Output size: 2.06MiB
On-chip memory used for caching model parameters: 2.00MiB
On-chip memory remaining for caching model parameters: 1.07MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 6
Operation log: temp_models/co-compiled/2/2_edgetpu.log
See the operation log file for individual operation details.
Compilation child process completed within timeout period.
Compilation succeeded!
"""

# A CNN and an RNN co-compiled by compiler 16 (no blank lines between sections as pasted),
# published in https://github.com/google-coral/edgetpu/issues/518 (comment of 2021-12-18).
LOG_518 = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.
Models compiled successfully in 3498 ms.
Input model: cnn_first_edge.tflite
Input size: 8.00MiB
Output model: cnn_first_edgetpu.tflite
Output size: 9.31MiB
On-chip memory used for caching model parameters: 1.75MiB
On-chip memory remaining for caching model parameters: 3.75KiB
Off-chip memory used for streaming uncached model parameters: 6.97MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 313
Operation log: cnn_first_edgetpu.log
See the operation log file for individual operation details.
Input model: rnn_second.tflite
Input size: 2.97MiB
Output model: rnn_second_edgetpu.tflite
Output size: 4.79MiB
On-chip memory used for caching model parameters: 5.29MiB
On-chip memory remaining for caching model parameters: 3.75KiB
Off-chip memory used for streaming uncached model parameters: 158.06KiB
Number of Edge TPU subgraphs: 1
Total number of operations: 78
Operation log: rnn_second_edgetpu.log
See the operation log file for individual operation details.
"""

# The .log file beside each output: header lines as a compiler-16 .log starts ("Edge TPU Compiler
# version", "Input:", "Output:"), then the operator table. The rows are written for these tests
# (they add up to the op totals of LOG_458).
OPLOG = """\
Edge TPU Compiler version 16.0.384591198
Input: temp_models/{stem}.tflite
Output: temp_models/co-compiled/2/{stem}_edgetpu.tflite

Operator                       Count      Status

{rows}
"""
ROWS = {
    "1": "CONV_2D                        30         Mapped to Edge TPU\n"
    "DEPTHWISE_CONV_2D              25         Mapped to Edge TPU\n"
    "QUANTIZE                       2          Mapped to Edge TPU",
    "2": "CONV_2D                        4          Mapped to Edge TPU\n"
    "LOGISTIC                       1          Mapped to Edge TPU\n"
    "QUANTIZE                       1          Mapped to Edge TPU",
}
MiB = 2**20


def test_split_and_parse_each_model_section():
    header, sections = split_sections(LOG_458)
    assert "Models compiled successfully in 524 ms." in header and len(sections) == 2
    r = parse_cocompile_log(LOG_458)
    assert r["succeeded"] is True and r["compile_ms"] == 524
    assert r["compiler_version"] == "16.0.384591198"
    a, b = r["models"]
    assert a["input_model"] == "temp_models/1.tflite" and b["input_model"] == "temp_models/2.tflite"
    assert (a["on_chip_mib"], b["on_chip_mib"]) == pytest.approx((2.27, 2.00))
    assert a["on_chip_remaining_mib"] == b["on_chip_remaining_mib"] == pytest.approx(1.07)
    assert (a["ops_total"], b["ops_total"]) == (57, 6) and a["ops_cpu"] == b["ops_cpu"] == 0
    assert "succeeded" not in a  # the run's status is the run's, not a section's


def test_parse_sections_without_blank_lines_and_kib_units():
    r = parse_cocompile_log(LOG_518)
    cnn, rnn = r["models"]
    assert r["compile_ms"] == 3498 and r["succeeded"]
    assert (cnn["on_chip_mib"], cnn["off_chip_mib"]) == pytest.approx((1.75, 6.97))
    assert rnn["off_chip_mib"] == pytest.approx(158.06 / 1024, abs=1e-6)
    assert rnn["on_chip_remaining_mib"] == pytest.approx(3.75 / 1024, abs=1e-6)
    assert (cnn["output_model"], rnn["ops_total"]) == ("cnn_first_edgetpu.tflite", 78)


def _fake_compiler(folder, log: str, rc: int = 0):
    """edgetpu_compiler for several models: copies folder/compiled_<name> to out/<stem>_edgetpu
    .tflite and folder/oplog_<stem> to out/<stem>_edgetpu.log for each model, prints `log`."""
    (folder / "log.txt").write_text(log)
    script = folder / "edgetpu_compiler"
    script.write_text(
        f"""#!/bin/sh
out=.
echo "$@" > "{folder}/args"
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--out_dir) out="$2"; shift 2 ;;
    -m|--min_runtime_version) shift 2 ;;
    -*) shift ;;
    *) name=$(basename "$1"); stem=$(basename "$1" .tflite)
       if [ {rc} -eq 0 ]; then
         cp "{folder}/compiled_$name" "$out/${{stem}}_edgetpu.tflite"
         cp "{folder}/oplog_$stem" "$out/${{stem}}_edgetpu.log"
       fi
       shift ;;
  esac
done
cat "{folder}/log.txt"
exit {rc}
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.fixture()
def two_models(tiny_bundle, tmp_path, monkeypatch):
    """temp_models/1.tflite and 2.tflite (real int8 models), cwd = tmp_path as in LOG_458."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "temp_models").mkdir()
    cpu = tiny_bundle.file("cpu.tflite").read_bytes()
    for stem in ("1", "2"):
        (tmp_path / "temp_models" / f"{stem}.tflite").write_bytes(cpu)
    return cpu


def _stage(folder, cpu: bytes, tokens=(0x5EED, 0x5EED), on_chip_mib=(2.27, 2.00)):
    from lucida.tools.toolchain.tflite_reader import read_tflite

    last = len(read_tflite(cpu).ops) - 1
    for stem, token, mib in zip(("1", "2"), tokens, on_chip_mib):
        compiled = fakes.compile_prefix(cpu, last, int(mib * MiB), 0, token=token)
        (folder / f"compiled_{stem}.tflite").write_bytes(compiled)
        (folder / f"oplog_{stem}").write_text(OPLOG.format(stem=stem, rows=ROWS[stem]))


ARGS = ["compile", "temp_models/1.tflite", "temp_models/2.tflite"]
OUT = ["--out-dir", "temp_models/co-compiled/2"]


@pytest.mark.tf
def test_cocompile_reports_each_model_and_the_shared_cache(
    two_models, tmp_path, monkeypatch, capsys
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_compiler(bin_dir, LOG_458)
    _stage(bin_dir, two_models)
    monkeypatch.delenv("LUCIDA_EDGETPU_COMPILER", raising=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main([*ARGS, *OUT, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    args = (bin_dir / "args").read_text().split()
    assert args[-2:] == ["temp_models/1.tflite", "temp_models/2.tflite"]  # one run, both models
    assert r["shared_cache"] is True and r["caching_tokens"] == [0x5EED]
    assert r["on_chip_mib_total"] == pytest.approx(4.27)
    one, two = r["models"]
    assert one["edgetpu_model"] == "temp_models/co-compiled/2/1_edgetpu.tflite"
    assert (one["on_chip_mib"], two["on_chip_mib"]) == pytest.approx((2.27, 2.00))
    assert (
        one["package"]["on_chip_bytes"] == int(2.27 * MiB) and one["package"]["log_mismatch"] == []
    )
    assert (
        two["package"]["on_chip_bytes"] == int(2.00 * MiB) and two["package"]["log_mismatch"] == []
    )
    # the operator tables come from each model's .log file
    assert [(o["op"], o["count"]) for o in one["operators"]][0] == ("CONV_2D", 30)
    assert (one["ops_total"], one["ops_tpu"], two["ops_total"], two["ops_tpu"]) == (57, 57, 6, 6)

    assert main([*ARGS, *OUT]) == 0
    out = capsys.readouterr().out
    assert "co-compiled 2 models in 524 ms" in out
    assert "parameters on-chip 2.27 MiB, off-chip 0.00 MiB" in out
    assert "parameters on-chip 2.00 MiB" in out and "caching token(s) 0x5eed" in out
    assert "shared on-chip cache: yes" in out and "warning" not in out


@pytest.mark.tf
def test_cocompile_warns_when_outputs_share_no_cache(two_models, tmp_path, capsys):
    script = _fake_compiler(tmp_path, LOG_458)
    _stage(tmp_path, two_models, tokens=(0x111, 0x222), on_chip_mib=(2.27, 1.0))
    assert main([*ARGS, *OUT, "--compiler", str(script)]) == 0
    out = capsys.readouterr().out
    assert "share no parameter-caching token" in out
    assert "2_edgetpu.tflite and the log disagree on on_chip_bytes: log 2.00 MiB, file 1.00" in out


@pytest.mark.tf
def test_cocompile_failure_names_the_models(two_models, tmp_path, capsys):
    failed = "Edge TPU Compiler version 16.0.384591198\nInternal compiler error. Aborting!\n"
    script = _fake_compiler(tmp_path, failed, rc=1)
    assert main([*ARGS, "--compiler", str(script)]) == 1
    err = capsys.readouterr().err
    assert "failed on 1.tflite, 2.tflite (exit 1): Internal compiler error. Aborting!" in err


def test_cocompile_refuses_two_models_with_one_file_name(tmp_path, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "cpu.tflite").write_bytes(b"")
    code = main(["compile", str(tmp_path / "a/cpu.tflite"), str(tmp_path / "b/cpu.tflite")])
    assert code == 2
    err = capsys.readouterr().err
    assert "cpu.tflite given twice" in err and "Traceback" not in err
