"""The picture and the check behind `lucida select`: the Pareto front (accuracy vs per-frame
latency) as a PNG, and `--evaluate-regret` (picks with predicted latencies against the oracle's
picks with measured ones over log-spaced budgets)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from lucida.tools.latency.select import Choice, SelectError, pick


def pareto(choices: list[Choice]) -> list[Choice]:
    """Choices no other beats on both accuracy and per-frame p90, by latency."""
    front, best = [], -math.inf
    for c in sorted(choices, key=lambda c: (c.frame_p90_ms, -c.accuracy)):
        if c.accuracy > best:
            front.append(c)
            best = c.accuracy
    return front


# -- the plot --------------------------------------------------------------------------------
def plot(
    choices: list[Choice],
    budget: float,
    chosen: Choice | None,
    path: str | Path,
    title: str,
    metric: str,
) -> Path:
    """Accuracy vs per-frame p90 latency: measured filled, predicted hollow with the margin as
    an error bar, Pareto front, budget line, chosen point. PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for src, style in (("measured", dict(color="C0")), ("predicted", dict(color="C1"))):
        pts = [c for c in choices if c.source == src]
        if not pts:
            continue
        x = [c.frame_p90_ms for c in pts]
        y = [c.accuracy for c in pts]
        if src == "predicted":
            lo = [c.frame_p90_ms - c.frame_p90_ms / (1 + c.margin) for c in pts]
            ax.errorbar(x, y, xerr=[lo, [0] * len(pts)], fmt="none", ecolor="C1", alpha=0.5)
            ax.scatter(x, y, facecolors="none", edgecolors="C1", label="predicted (+margin)")
        else:
            ax.scatter(x, y, label="measured", **style)
    front = pareto(choices)
    if len(front) > 1:
        ax.step(
            [c.frame_p90_ms for c in front],
            [c.accuracy for c in front],
            where="post",
            color="grey",
            lw=1,
            alpha=0.7,
            label="Pareto front",
        )
    for c in choices:
        ax.annotate(
            c.name,
            (c.frame_p90_ms, c.accuracy),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.axvline(budget, color="C3", ls="--", label=f"budget {budget:.1f} ms/frame")
    if chosen is not None:
        ax.scatter(
            [chosen.frame_p90_ms],
            [chosen.accuracy],
            marker="*",
            s=260,
            color="C2",
            zorder=5,
            label=f"chosen: {chosen.name}",
        )
    lat = [c.frame_p90_ms for c in choices] + [budget]
    if lat and max(lat) / max(min(lat), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("per-frame p90 latency (ms) = tiles x per-invoke p90")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


# -- regret ----------------------------------------------------------------------------------
def regret(choices: list[Choice], n_budgets: int = 20, mnas_w: float | None = None) -> dict:
    """Predicted-latency picks against the measured-latency oracle over n budgets spread
    log-evenly across the measured per-frame p90 range (0.9x the fastest to 1.1x the slowest):
    a scaled family's latencies grow geometrically, so even steps in ms would put most budgets
    between its two largest members."""
    both = [c for c in choices if c.measured_frame_p90_ms and c.predicted_frame_p90_ms]
    if len(both) < 2:
        raise SelectError(
            "regret evaluation needs >= 2 bundles both measured on the target and predictable"
        )
    lats = [c.measured_frame_p90_ms for c in both]
    budgets = np.geomspace(0.9 * min(lats), 1.1 * max(lats), n_budgets)
    rows, agree, misses = [], 0, 0
    for b in budgets:
        oracle = pick([_as(c, c.measured_frame_p90_ms) for c in both], b, mnas_w)
        chosen = pick([_as(c, c.predicted_frame_p90_ms) for c in both], b, mnas_w)
        same = (oracle and oracle.name) == (chosen and chosen.name)
        miss = chosen is not None and chosen.measured_frame_p90_ms > b
        agree += same
        misses += miss
        rows.append(
            {
                "budget_ms": round(float(b), 3),
                "oracle": oracle.name if oracle else None,
                "predicted_pick": chosen.name if chosen else None,
                "same": bool(same),
                "misses_budget_when_measured": bool(miss),
            }
        )
    return {
        "bundles": len(both),
        "budgets": n_budgets,
        "same_pick": int(agree),
        "misses": int(misses),
        "rows": rows,
    }


def _as(c: Choice, frame_p90: float) -> Choice:
    return replace(c, frame_p90_ms=frame_p90)
