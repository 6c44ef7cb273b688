"""The quantization report: how far the int8 model is from the float one, and where it got lost.

Float and int8 run on the same validation images (int8 through the LiteRT interpreter with the
runtime's own input lookup table, so exactly what the device runs). Reported: output RMSE and max
abs error (in the model's output units), threshold (1 channel) or top-1 (several channels)
agreement, and with labels the metric delta (pixel AUC for heatmaps with masks, accuracy and AUC
for class scores); a per-layer table from TFLite's QuantizationDebugger (RMSE of the int8 layer
output against float, over the layer's quantization scale; > 0.7 flagged); the calibration set.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
from lucida.runtime.quant import dequantize, input_lut

FLAG_RMSE_OVER_SCALE = 0.7


class Int8Runner:
    """An int8 TFLite model on the LiteRT interpreter: RGB uint8 HxWx3 -> dequantized output."""

    def __init__(self, tflite: bytes, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), threads: int = 1):
        from lucida.runtime.backends import select_backend

        self.it = select_backend().Interpreter(model_content=tflite, num_threads=threads)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        scale, zp = self.inp["quantization"]
        dtype = np.dtype(self.inp["dtype"]).name
        self.lut = input_lut(mean, std, scale, zp, dtype)
        self.out_q = self.out["quantization"]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        x = self.lut[rgb, np.arange(3)]
        self.it.set_tensor(self.inp["index"], x[None])
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])[0]
        if np.issubdtype(y.dtype, np.floating):
            return y.astype(np.float32)
        return dequantize(y, *self.out_q)


def to_probs(raw: np.ndarray, activation: str) -> np.ndarray:
    """Model output -> probabilities per channel (sigmoid / softmax over the last axis / as is)."""
    x = np.asarray(raw, np.float64)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return x


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).ravel().astype(bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.asarray(score).ravel()))


def _mask_at(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Input-resolution bool mask -> output cells (positive where >= half the cell is)."""
    import cv2

    frac = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return frac >= 0.5


def compare(
    float_out: list[np.ndarray],
    int8_out: list[np.ndarray],
    labels: list,
    kind: str = "heatmap",
    activation: str = "none",
    positive_index: int = 0,
    threshold: float = 0.5,
) -> dict:
    """Float vs int8 outputs on the same images -> errors, agreement and (with labels) metrics."""
    f = np.stack(float_out).astype(np.float64)
    q = np.stack(int8_out).astype(np.float64)
    err = q - f
    res: dict = {
        "images": len(float_out),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "max_abs_error": float(np.max(np.abs(err))),
        "float_range": [float(f.min()), float(f.max())],
    }
    pf, pq = to_probs(f, activation), to_probs(q, activation)
    channels = f.shape[-1]
    k = positive_index if channels > 1 else 0
    pos_f, pos_q = pf[..., k], pq[..., k]
    if channels == 1:
        res["threshold"] = threshold
        res["threshold_agreement"] = float(np.mean((pos_f >= threshold) == (pos_q >= threshold)))
    else:
        res["top1_agreement"] = float(np.mean(pf.argmax(-1) == pq.argmax(-1)))
    metric = None
    if kind == "heatmap":
        ys, sf, sq = [], [], []
        for lab, a, b in zip(labels, pos_f, pos_q):
            if isinstance(lab, np.ndarray):
                ys.append(_mask_at(lab, *a.shape[:2]))
                sf.append(a)
                sq.append(b)
        if ys:
            y = np.concatenate([m.ravel() for m in ys])
            af = _auc(y, np.concatenate([s.ravel() for s in sf]))
            aq = _auc(y, np.concatenate([s.ravel() for s in sq]))
            metric = {
                "name": "pixel AUC",
                "key": "auc",
                "float": af,
                "int8": aq,
                "labelled": len(ys),
            }
            if af is None:
                metric["note"] = "masks hold a single class: AUC undefined"
    else:
        idx = [i for i, lab in enumerate(labels) if isinstance(lab, (int, np.integer))]
        if idx:
            y = np.array([labels[i] for i in idx])
            acc_f = float(np.mean(pf[idx].argmax(-1) == y)) if channels > 1 else None
            acc_q = float(np.mean(pq[idx].argmax(-1) == y)) if channels > 1 else None
            yb = y == positive_index if channels > 1 else y == 1
            af, aq = _auc(yb, pos_f[idx]), _auc(yb, pos_q[idx])
            if af is not None:
                metric = {
                    "name": "AUC",
                    "key": "auc",
                    "float": af,
                    "int8": aq,
                    "labelled": len(idx),
                }
                if acc_f is not None:
                    metric["accuracy"] = {"float": acc_f, "int8": acc_q}
            elif acc_f is not None:
                metric = {"name": "accuracy", "key": "accuracy", "float": acc_f, "int8": acc_q}
                metric["labelled"] = len(idx)
    if metric and metric.get("float") is not None and metric.get("int8") is not None:
        metric["delta"] = metric["int8"] - metric["float"]
    res["metric"] = metric
    return res


def layer_errors(converter, debug_samples: list[np.ndarray], flag: float = FLAG_RMSE_OVER_SCALE):
    """Per-layer int8-vs-float error from tf.lite.experimental.QuantizationDebugger.

    converter: the one used for the int8 model (it calibrates again with the same data).
    Returns rows {index, op, tensor, rmse, scale, rmse_over_scale, flagged}, in graph order.
    """
    import tensorflow as tf

    def dataset():
        for s in debug_samples:
            yield [np.asarray(s, np.float32)[None]]

    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset)
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        try:
            mse, scale = float(r["mean_squared_error"]), float(r["scale"])
        except (KeyError, ValueError):
            continue
        rmse = math.sqrt(mse) if mse >= 0 else float("nan")
        ratio = rmse / scale if scale > 0 else float("nan")
        rows.append(
            {
                "tensor_index": int(float(r.get("tensor_idx", -1))),
                "op": r.get("op_name", ""),
                "tensor": r.get("tensor_name", ""),
                "rmse": rmse,
                "scale": scale,
                "rmse_over_scale": ratio,
                "flagged": bool(ratio > flag),
            }
        )
    return rows


def verdict(report: dict, max_metric_drop: float = 0.01, min_agreement: float = 0.98) -> dict:
    """ok / not ok with one sentence that names the bad result and the flagged layers."""
    out = report["output"]
    flagged = [r["tensor"].split(";")[0] for r in report.get("layers", []) if r["flagged"]]
    see = f": see flagged layers {', '.join(flagged[:5])}" if flagged else ""
    m = out.get("metric")
    agree_key = "threshold_agreement" if "threshold_agreement" in out else "top1_agreement"
    agree = out[agree_key]
    agree_txt = (
        f"{'threshold' if agree_key.startswith('threshold') else 'top-1'} agreement {agree:.2%}"
    )
    if m and m.get("delta") is not None:
        txt = f"{m['name']} float {m['float']:.4f}, int8 {m['int8']:.4f}"
        if -m["delta"] > max_metric_drop:
            return {
                "ok": False,
                "message": f"int8 {m['name']} {-m['delta']:.3f} below float ({txt}){see}",
            }
        ok_txt = f"int8 matches float: {txt} (delta {m['delta']:+.4f}), {agree_txt}"
    elif agree < min_agreement:
        return {
            "ok": False,
            "message": f"int8 disagrees with float: {agree_txt} (< {min_agreement:.0%}){see}",
        }
    else:
        ok_txt = f"int8 matches float: {agree_txt} (no labels for a metric)"
    if flagged:  # fine on the whole, but say where precision is thin
        ok_txt += f"; {len(flagged)} flagged layer(s) worth a look: {', '.join(flagged[:5])}"
    return {"ok": True, "message": ok_txt}


def format_report(r: dict) -> str:
    """The printed table."""
    cal, out = r["calibration"], r["output"]
    lines = [
        f"quantization report: {r['model']} -> full int8 ({r['io_dtype']} I/O), "
        f"{r['tflite_bytes'] / 1024:.1f} KiB",
        f"  calibration: {cal['samples']} of {cal['images_available']} images from "
        f"{cal['folder']}, seed {cal['seed']}",
        f"  validation:  {r['validation']['images']} images ({r['validation']['source']})",
        f"  output:      RMSE {out['rmse']:.4g}, max abs error {out['max_abs_error']:.4g}",
    ]
    if "threshold_agreement" in out:
        lines.append(
            f"  agreement:   {out['threshold_agreement']:.2%} of positions on the same side of "
            f"{out['threshold']}"
        )
    else:
        lines.append(f"  agreement:   top-1 {out['top1_agreement']:.2%}")
    m = out.get("metric")
    if m:
        if m.get("delta") is not None:
            lines.append(
                f"  {m['name']}:  float {m['float']:.4f}  int8 {m['int8']:.4f}  delta "
                f"{m['delta']:+.4f}  ({m['labelled']} labelled images)"
            )
        else:
            lines.append(f"  {m['name']}: {m.get('note', 'undefined')}")
    layers = r.get("layers") or []
    if layers:
        lines.append(
            f"  per-layer error (RMSE / scale of the int8 output; > {FLAG_RMSE_OVER_SCALE} flagged):"
        )
        lines.append(f"    {'tensor':>6}  {'op':<20} {'RMSE/scale':>10}  layer")
        for row in layers:
            mark = "  <- FLAGGED" if row["flagged"] else ""
            name = row["tensor"].split(";")[0]
            lines.append(
                f"    {row['tensor_index']:>6}  {row['op']:<20} {row['rmse_over_scale']:>10.3f}  "
                f"{name}{mark}"
            )
    elif r.get("layers_error"):
        lines.append(f"  per-layer error: not available ({r['layers_error']})")
    for note in r.get("notes", []):
        lines.append(f"  note: {note}")
    v = r["verdict"]
    lines.append(f"  verdict: {'OK' if v['ok'] else 'BAD'}: {v['message']}")
    return "\n".join(lines)
