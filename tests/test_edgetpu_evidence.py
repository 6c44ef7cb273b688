"""`lucida check`'s Edge TPU rules against what the real compiler did (tests/data/edgetpu_evidence.yaml).

Each evidence row (op, shapes, parameters, position in the graph) -> mapped or not, from a public
compiler log or Coral's documentation, with its source. A tiny model is built around the row's
op (as the compiler saw it: alone, after a CPU op that follows Edge TPU ops, or after a CPU op at
the input) and `op_verdicts` must agree, except where it says "uncertain" (then it counts the op
as mapped: an upper bound) or the row itself says the source gives no usable cause.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import yaml
from lucida.tools.toolchain.edgetpu_rules import op_verdicts
from lucida.tools.toolchain.tflite_reader import OpInfo, TensorInfo, TFLiteModel

ROWS = yaml.safe_load((Path(__file__).parent / "data" / "edgetpu_evidence.yaml").read_text())
SIZES = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "float32": 4}


class _Graph:
    def __init__(self):
        self.tensors: list[TensorInfo] = []

    def t(self, dtype, shape, const=False, values=None, zero=None, variable=False, name=None):
        shape = tuple(shape)
        n = math.prod(shape) if shape else 1
        t = TensorInfo(
            index=len(self.tensors),
            name=name or f"t{len(self.tensors)}",
            dtype=dtype,
            shape=shape,
            shape_signature=shape,
            bytes=n * SIZES[dtype],
            constant=const,
            scales=1,
            scale=0.05,
            zero_point=0,
            values=tuple(values) if values is not None else None,
            all_zero=(zero if zero is not None else False) if const else None,
            variable=variable,
        )
        self.tensors.append(t)
        return t


def _default_consts(g: _Graph, op: str, case: dict, x: tuple, y: tuple) -> list[TensorInfo]:
    ci, co = x[-1], y[-1]
    if op == "CONV_2D":
        return [g.t("int8", (co, 3, 3, ci), True), g.t("int32", (co,), True)]
    if op == "DEPTHWISE_CONV_2D":
        return [g.t("int8", (1, 3, 3, co), True), g.t("int32", (co,), True)]
    if op == "FULLY_CONNECTED":
        return [g.t("int8", (co, ci), True), g.t("int32", (co,), True)]
    if op == "TRANSPOSE_CONV":
        w = case.get("weights", (co, 3, 3, ci))
        return [g.t("int32", (4,), True, values=y), g.t("int8", w, True)]
    if op == "UNIDIRECTIONAL_SEQUENCE_LSTM":
        units = co
        consts = [g.t("int8", (units, ci), True) for _ in range(4)]
        consts += [g.t("int8", (units, units), True) for _ in range(4)]
        consts += [g.t("int32", (units,), True) for _ in range(4)]
        return consts
    return []


def model_for(row: dict) -> tuple[TFLiteModel, int]:
    """A small model holding the row's op; returns it and the op's index."""
    case = row.get("case") or {}
    name = row["op"]
    g = _Graph()
    dtype = case.get("dtype", "int8")
    out_dtype = case.get("out_dtype", "int8" if name == "QUANTIZE" else dtype)
    x_shape = tuple(case.get("in", (1, 8, 8, 16)))
    y_shape = tuple(case.get("out", x_shape))
    inp = g.t(dtype, x_shape, name="input")
    ops: list[OpInfo] = []
    x = inp
    if case.get("after_cpu") or case.get("leading_cpu"):
        if case.get("after_cpu"):
            w = [
                g.t("int8", (x_shape[-1], 1, 1, x_shape[-1]), True),
                g.t("int32", (x_shape[-1],), True),
            ]
            y0 = g.t("int8", x_shape)
            ops.append(OpInfo(len(ops), "CONV_2D", 1, False, (x, *w), (y0,)))
            x = y0
        y1 = g.t("int8", x_shape)
        ops.append(OpInfo(len(ops), "LEAKY_RELU", 1, False, (x,), (y1,)))
        x = y1
        if dtype != "int8":
            x = g.t(dtype, x_shape)  # keep the row's activation type
    y = g.t(out_dtype, y_shape)
    consts = _default_consts(g, name, case, x_shape, y_shape)
    for c in case.get("consts", []):
        consts.append(g.t(c["dtype"], c["shape"], True, c.get("values"), c.get("zero")))
    extra = ()
    if case.get("int16_state"):
        extra = (
            g.t("int16", (1, y_shape[-1]), variable=True),
            g.t("int16", (1, y_shape[-1]), variable=True),
        )
    if name == "TRANSPOSE_CONV":
        ins = (*consts, x)
    else:
        ins = (x, *consts, *extra)
    opts = dict(case.get("options", {}))
    ops.append(
        OpInfo(
            len(ops),
            name,
            case.get("version", 1),
            bool(case.get("custom")),
            ins,
            (y,),
            options=opts,
        )
    )
    model = TFLiteModel(
        path=f"<{name}>",
        file_bytes=0,
        schema_version=3,
        description="",
        subgraphs=1,
        inputs=(inp,),
        outputs=(y,),
        tensors=tuple(g.tensors),
        ops=tuple(ops),
        param_bytes=sum(t.bytes for t in g.tensors if t.constant),
        activation_bytes=sum(t.bytes for t in g.tensors if not t.constant),
    )
    return model, len(ops) - 1


def _verdict(row):
    model, i = model_for(row)
    return op_verdicts(model, (row.get("case") or {}).get("runtime", 14))[i]


def test_evidence_table_is_large_and_sourced():
    sources = Counter(r["source"] for r in ROWS)
    assert len(ROWS) >= 60, len(ROWS)
    assert len(sources) >= 15, sorted(sources)
    for r in ROWS:
        assert r["source"].startswith("https://"), r
        assert r["op"] and r["status"] and isinstance(r["mapped"], bool), r
    # Both answers are represented, and the partitioning rule has its own rows.
    assert Counter(r["mapped"] for r in ROWS)[True] >= 20
    assert sum(1 for r in ROWS if (r.get("case") or {}).get("after_cpu")) >= 15


@pytest.mark.parametrize(
    "row",
    ROWS,
    ids=[f"{i}-{r['op']}-{'map' if r['mapped'] else 'cpu'}" for i, r in enumerate(ROWS)],
)
def test_check_agrees_with_the_compiler(row):
    v = _verdict(row)
    mapped_by_check = v.runs_on == "edgetpu"
    if row.get("uncertain"):
        # The source gives no cause; still, check must never put on the CPU what was mapped.
        assert mapped_by_check or not row["mapped"], (row, v)
        return
    if v.uncertain:
        # check says it does not know: it counts the op as mapped (an upper bound).
        assert not row["mapped"] or mapped_by_check, (row, v)
        return
    assert mapped_by_check == row["mapped"], f"{row['source']}: {row['op']} {row['status']} -> {v}"


def test_check_is_rarely_uncertain_on_the_evidence():
    undecided = [r for r in ROWS if not r.get("uncertain") and _verdict(r).uncertain]
    decided = len(ROWS) - len(undecided) - sum(1 for r in ROWS if r.get("uncertain"))
    assert len(undecided) <= len(ROWS) // 8, [(r["op"], r["source"]) for r in undecided]
    assert decided >= 60


UNEXPLAINED = [r for r in ROWS if r.get("uncertain")]


@pytest.mark.parametrize("row", UNEXPLAINED, ids=lambda r: f"{r['op']}-{r['source'][-4:]}")
def test_unexplained_refusals_are_low_confidence_or_noted(row):
    """A row refused without a cause: check maps the op (the upper bound) and says it may not be
    sure: low confidence on the op, or, for op types too common to flag, a note in the report."""
    from lucida.tools.toolchain.check import check_model

    model, i = model_for(row)
    r = check_model(model, (row.get("case") or {}).get("runtime", 14))
    op = r.ops[i]
    assert op["runs_on"] == "edgetpu"
    if op["confidence"] == "low":
        assert row["source"].split("/")[-1] in op["confidence_note"]  # names the issue number
    else:
        assert any(row["op"] in n for n in r.notes), (row, op, r.notes)


def test_low_confidence_flags_few_of_the_ops_the_compiler_mapped():
    """Of the rows the compiler mapped, at most a few carry the low-confidence mark."""
    mapped = [r for r in ROWS if r["mapped"]]
    low = [(r["op"], r["source"]) for r in mapped if _verdict(r).low_confidence]
    assert len(low) <= len(mapped) // 10, low
    unexplained = [r for r in UNEXPLAINED if _verdict(r).low_confidence]
    assert len(unexplained) >= 4  # TRANSPOSE, TRANSPOSE_CONV, SPLIT, MUL (runtime 13)


def test_a_real_model_has_no_low_confidence_op():
    """Coral's MobileNetV2 (real weights): nothing like an unexplained refusal in it."""
    from lucida.tools.toolchain.check import check_model
    from lucida.tools.toolchain.tflite_reader import read_tflite
    from realdata import real

    r = check_model(read_tflite(real("models", "mobilenet_v2_1.0_224_inat_bird_quant.tflite")))
    assert r.ops_low_confidence == 0 and r.notes == []


def summary() -> dict:
    """Counts for README/docs: rows, sources, and how check's verdicts relate to the rows."""
    out = Counter(rows=len(ROWS), sources=len({r["source"] for r in ROWS}))
    for r in ROWS:
        v = _verdict(r)
        if r.get("uncertain"):
            out["uncertain_in_table"] += 1
            out["uncertain_in_table_low_confidence"] += bool(v.low_confidence)
        elif v.uncertain:
            out["check_says_uncertain"] += 1
        else:
            out["agree" if (v.runs_on == "edgetpu") == r["mapped"] else "disagree"] += 1
        if r["mapped"] and v.low_confidence:
            out["mapped_rows_marked_low_confidence"] += 1
    return dict(out)


if __name__ == "__main__":  # python tests/test_edgetpu_evidence.py
    print(summary())
