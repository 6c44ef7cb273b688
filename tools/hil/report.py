"""The bench's report: report.json, junit.xml (one testcase per step) and a single-file
report.html with the plots embedded (also written as PNG files next to it).

report.json and junit.xml are written first and always; plots need matplotlib (the `[host]`
extra) and are left out, with a line saying so, when it is missing. The HTML opens with the
verdict, the key figures and every failure or skip; values are shown as tables, times as times,
host paths as their last component only (a report is shared outside the lab).

Plots (matplotlib, Agg): latency histogram (capture->display, device clock), fps over time
(measure windows and soak samples), memory (RSS) over time, contour IoU per objective; each with
the scenario's limit drawn as a red line where it has one.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from lucida.calibration.atomic import atomic_write_bytes

VERDICT_COLOUR = {
    "passed": "#1a7f37",
    "failed": "#cf222e",
    "skipped": "#9a6700",
    "error": "#8250df",
}


NO_MATPLOTLIB = "no plots: matplotlib is missing (`pip install camera-lucida[host]`)"
# An absolute path not preceded by a word, ':' or '/' (so URLs are left alone): keep its last part.
_HOST_PATH = re.compile(r"(?<![\w:/.~-])(?:/[\w.+@-]+)+/([\w.+@-]+)")


def scrub_paths(text: str) -> str:
    """Host paths in `text` shortened to '.../LAST' (a report leaves the lab; paths mean nothing)."""
    return _HOST_PATH.sub(lambda m: f".../{m.group(1)}", text)


def write_report(report: dict, out_dir: str | os.PathLike) -> dict:
    """Write every form of the report under out_dir; returns {kind: path}.

    report.json and junit.xml come first, so a failure in plotting never loses the verdict.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "junit": out / "junit.xml", "html": out / "report.html"}
    report = {**report, "plots": {}}
    atomic_write_bytes(paths["json"], (json.dumps(report, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(paths["junit"], junit_xml(report))
    try:
        plots = make_plots(report, out)
    except ImportError as exc:
        if (getattr(exc, "name", None) or "").split(".")[0] != "matplotlib":
            raise
        plots, report["plots_missing"] = {}, NO_MATPLOTLIB
    if plots or "plots_missing" in report:
        report["plots"] = {k: p.name for k, p in plots.items()}
        atomic_write_bytes(
            paths["json"], (json.dumps(report, indent=2, default=str) + "\n").encode()
        )
    atomic_write_bytes(paths["html"], html_report(report, plots).encode())
    missing = {"plots_missing": report["plots_missing"]} if "plots_missing" in report else {}
    return {**paths, **{f"plot_{k}": p for k, p in plots.items()}, **missing}


def junit_xml(report: dict) -> bytes:
    """JUnit XML: one <testcase> per step; failed -> <failure>, skipped -> <skipped>."""
    steps = report["steps"]
    suite = ET.Element(
        "testsuite",
        name=f"lucida-hil.{report['scenario']}",
        tests=str(len(steps)),
        failures=str(report["counts"]["failed"]),
        errors=str(report["counts"]["error"]),
        skipped=str(report["counts"]["skipped"]),
        time=f"{report['duration_s']:.1f}",
        timestamp=report["started"],
    )
    props = ET.SubElement(suite, "properties")
    dev = report.get("device") or {}
    for key in ("kind", "host", "machine", "backend", "delegate", "model", "model_sha256"):
        ET.SubElement(props, "property", name=f"device.{key}", value=scrub_paths(str(dev.get(key))))
    for s in steps:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"lucida.hil.{report['scenario']}",
            name=s["name"],
            time=f"{s['duration_s']:.2f}",
        )
        if s["verdict"] == "failed":
            ET.SubElement(
                case, "failure", message=s["message"][:500], type=s["kind"]
            ).text = _checks_text(s)
        elif s["verdict"] == "error":
            ET.SubElement(case, "error", message=s["message"][:500], type=s["kind"]).text = s[
                "message"
            ]
        elif s["verdict"] == "skipped":
            ET.SubElement(case, "skipped", message=s["message"][:500])
        ET.SubElement(case, "system-out").text = scrub_paths(
            json.dumps({"checks": s["checks"], "metrics": s["metrics"]}, default=str)
        )
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _checks_text(step: dict) -> str:
    lines = []
    for c in step["checks"]:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[c["ok"]]
        want = f" (want {c['limit']})" if c.get("limit") is not None else ""
        note = f" - {c['note']}" if c.get("note") else ""
        lines.append(f"{mark} {c['name']}: {c['value']}{want}{note}")
    return "\n".join(lines)


def make_plots(report: dict, out: Path) -> dict:
    """PNG plots of the run's series under `out`; {name: path} for those with data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["series"]
    lim = limits(report)
    made = {}

    def limit_line(ax, value, label, vertical=False):
        if value is None:
            return
        draw = ax.axvline if vertical else ax.axhline
        draw(value, color="#cf222e", lw=1.6, label=label)

    def save(fig, name):
        path = out / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made[name] = path

    lat = series.get("latency_ms") or []
    if lat:
        pct = series.get("latency_percentiles_ms") or {}
        top = max(pct.get("p99", max(lat)) * 1.5, pct.get("p50", 0) * 3, 1.0)
        shown = [x for x in lat if x <= top]
        fig, ax = plt.subplots(figsize=(6.4, 3.2))
        ax.hist(shown, bins=min(60, max(20, len(shown) // 5)), color="#4c72b0")
        for (q, v), colour in zip(pct.items(), ("#55a868", "#dd8452", "#c44e52")):
            ax.axvline(v, color=colour, ls="--", lw=1.2, label=f"{q} {v:.0f} ms")
        beyond = len(lat) - len(shown)
        title = f"Latency ({len(lat)} overlays" + (
            f"; {beyond} beyond {top:.0f} ms)" if beyond else ")"
        )
        p99_max = lim.get("latency_p99_ms_max")
        if p99_max is not None and p99_max <= top:
            limit_line(ax, p99_max, f"limit: p99 <= {p99_max:g} ms", vertical=True)
        elif p99_max is not None:  # listed in the legend, beyond the right edge
            ax.plot(
                [], [], color="#cf222e", lw=1.6, label=f"limit: p99 <= {p99_max:g} ms (off scale)"
            )
        ax.set(
            xlabel="capture -> display latency (ms, device clock)", ylabel="overlays", title=title
        )
        ax.legend(fontsize=8)
        save(fig, "latency_hist")
    fps = series.get("fps") or []
    if fps:
        fig, ax = plt.subplots(figsize=(6.4, 3.2))
        for kind, marker in (("measure", "o"), ("soak", ".")):
            pts = [(t, f) for t, f, k in fps if k == kind]
            if pts:
                ax.plot(*zip(*pts), marker=marker, ls="-" if kind == "soak" else "", label=kind)
        if lim.get("fps_min") is not None:
            limit_line(ax, lim["fps_min"], f"limit: >= {lim['fps_min']:g} / s")
        top = max([f for _, f, _ in fps] + [lim.get("fps_min") or 0]) * 1.15 or 1.0
        ax.set(
            xlabel="time (s)", ylabel="overlays / s", title="Throughput over time", ylim=(0, top)
        )
        ax.legend(fontsize=8)
        save(fig, "fps")
    rss = series.get("rss_mb") or []
    if rss:
        fig, ax = plt.subplots(figsize=(6.4, 3.2))
        ax.plot(*zip(*rss), marker=".", color="#55a868")
        for i, t in enumerate(series.get("restarts_s") or []):
            ax.axvline(
                t, color="#999999", ls=":", lw=1, label="daemon restarted" if i == 0 else None
            )
        if series.get("restarts_s"):
            ax.legend(fontsize=8)
        ax.set(
            xlabel="time (s)", ylabel="daemon RSS (MiB)", title="Memory over time", ylim=(0, None)
        )
        save(fig, "memory")
    iou = {k: v for k, v in (series.get("iou_per_objective") or {}).items() if v is not None}
    if iou:
        keys = sorted(iou, key=lambda o: float(o[:-1]) if o[:-1].replace(".", "").isdigit() else 0)
        fig, ax = plt.subplots(figsize=(6.4, 3.2))
        ax.bar(keys, [iou[k] for k in keys], color="#8172b2")
        for i, k in enumerate(keys):
            ax.text(i, iou[k], f"{iou[k]:.2f}", ha="center", va="bottom", fontsize=8)
        if lim.get("iou_min") is not None:
            limit_line(ax, lim["iou_min"], f"limit: >= {lim['iou_min']:g}")
            ax.legend(fontsize=8, loc="lower right")
        ax.set(
            xlabel="objective",
            ylabel="contour IoU (pooled)",
            title="Contours vs ground truth",
            ylim=(0, 1),
        )
        save(fig, "iou")
    mot = series.get("motion") or {}
    if mot.get("t_s"):
        _motion_plot(plt, mot, save)
    return made


def _motion_plot(plt, mot: dict, save) -> None:
    """The hand step: stage pan speed (log scale) over time, the blanking speed, the onset
    frames, and what the display showed (green: an overlay, grey: blank)."""
    fig, ax = plt.subplots(figsize=(7.2, 3.2))
    spans = mot["display"] + [[mot["end_s"], None]]
    for (a, kind), (z, _) in zip(spans, spans[1:]):
        ax.axvspan(a, z, color="#55a868" if kind == "overlay" else "#bbbbbb", alpha=0.3, lw=0)
    pan = [max(v, 0.1) for v in mot["pan_um_s"]]
    ax.plot(mot["t_s"], pan, color="#4c72b0", lw=1.2, label="stage pan speed (truth)")
    ax.axhline(
        mot["blank_speed_um_s"],
        color="#cf222e",
        lw=1.4,
        label=f"blanking speed {mot['blank_speed_um_s']:g} um/s (device)",
    )
    for i, t in enumerate(mot["onsets_s"]):
        ax.axvline(t, color="#dd8452", ls="--", lw=1, label="onset frame" if i == 0 else None)
    ax.fill_between([], [], color="#55a868", alpha=0.3, label="overlay shown")
    ax.fill_between([], [], color="#bbbbbb", alpha=0.3, label="display blank")
    ax.set(
        yscale="log",
        ylim=(0.1, None),
        xlabel="time since the hand started (s)",
        ylabel="um/s",
        title="A hand on the stage, motion seen in the image only",
    )
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    save(fig, "motion")


# check-name prefix -> limit key; the strictest limit over the run is drawn on the plots
_LIMIT_CHECKS = {
    "latency p99": "latency_p99_ms_max",
    "fps (median": "fps_min",
    "contour IoU": "iou_min",
}


def limits(report: dict) -> dict:
    """Numeric limits from the run's checks: {latency_p99_ms_max, fps_min, iou_min} where set."""
    found: dict = {}
    for s in report["steps"]:
        for c in s["checks"]:
            key = next((k for p, k in _LIMIT_CHECKS.items() if c["name"].startswith(p)), None)
            m = re.search(r"[-+]?\d+(?:\.\d+)?", str(c.get("limit") or ""))
            if key is None or m is None:
                continue
            v = float(m.group())
            strict = min if key.endswith("_max") else max
            found[key] = strict(found[key], v) if key in found else v
    return found


def _img(path: Path) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.stem}" src="data:image/png;base64,{b64}">'


def _when(stamp: str) -> str:
    """ISO time stamp -> '2026-11-29 18:39:01 UTC' (or as given when it does not parse)."""
    try:
        t = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z")
    except (TypeError, ValueError):
        return str(stamp)
    off = t.utcoffset()
    zone = "UTC" if off is not None and not off.total_seconds() else t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M:%S} {zone}"


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def _fmt(value, key: str = "") -> str:
    """One value as HTML: tables for mappings, lists joined, times as times, paths shortened."""
    e = html.escape
    if value is None or value == "":
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key.endswith("_ns"):
        return f"{value / 1e9:.3f} s (device clock)"
    if isinstance(value, float):
        unit = " s" if key.endswith("_s") else (" ms" if key.endswith("_ms") else "")
        return f"{value:.4g}{unit}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        rows = "".join(
            f"<tr><th>{e(str(k))}</th><td>{_fmt(v, str(k))}</td></tr>" for k, v in value.items()
        )
        return f"<table class='kv'>{rows}</table>"
    if isinstance(value, (list, tuple)):
        sep = "; " if any(isinstance(v, (list, tuple)) for v in value) else ", "
        return sep.join(
            _fmt(v) if not isinstance(v, (list, tuple)) else "(" + _fmt(v) + ")" for v in value
        )
    return e(scrub_paths(str(value)))


def _checks_table(checks: list) -> str:
    if not checks:
        return ""
    e = html.escape
    rows = []
    for c in checks:
        cls, word = {True: ("ok", "pass"), False: ("bad", "FAIL"), None: ("skip", "skipped")}[
            c["ok"]
        ]
        note = c.get("note") if c["ok"] is not True else ""  # notes explain failures and skips only
        rows.append(
            f"<tr><td>{e(str(c['name']))}</td><td>{_fmt(c['value'])}</td>"
            f"<td>{_fmt(c.get('limit'))}</td><td class='{cls}'>{word}</td>"
            f"<td>{e(scrub_paths(note or ''))}</td></tr>"
        )
    return (
        "<table><tr><th>check</th><th>measured</th><th>limit</th><th>result</th><th>why</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def key_figures(report: dict) -> list[tuple[str, str]]:
    """(label, value) pairs for the summary: the run's headline numbers, each with its unit."""
    series, steps = report["series"], report["steps"]
    out = []
    lat = series.get("latency_percentiles_ms") or {}
    if lat:
        out.append(
            (
                "capture -> display latency p50 / p90 / p99 (device clock)",
                " / ".join(f"{lat.get(q, float('nan')):.0f}" for q in ("p50", "p90", "p99"))
                + " ms",
            )
        )
    fps = [s["metrics"]["fps_median"] for s in steps if s["metrics"].get("fps_median") is not None]
    if fps:
        out.append(
            (
                "overlays per second (median of each measure step)",
                ", ".join(f"{f:.1f}" for f in fps),
            )
        )
    iou = {k: v for k, v in (series.get("iou_per_objective") or {}).items() if v is not None}
    if iou:
        out.append(
            ("contour IoU vs ground truth", ", ".join(f"{k}: {v:.3f}" for k, v in iou.items()))
        )
    clears = [
        (s["name"], c["value"])
        for s in steps
        for c in s["checks"]
        if c["name"].startswith("overlay cleared within") and isinstance(c["value"], (int, float))
    ]
    if clears:
        worst = max(clears, key=lambda x: x[1])
        out.append(("slowest overlay clearing", f"{worst[1]:.0f} ms ({worst[0]})"))
    gold = [s["metrics"]["health"] for s in steps if isinstance(s["metrics"].get("health"), dict)]
    if gold and gold[0].get("max_abs_error") is not None:
        out.append(
            (
                "golden check, largest error",
                f"{max(g.get('max_abs_error') or 0 for g in gold):.4g} (atol {gold[0].get('atol')})",
            )
        )
    rss = series.get("rss_mb") or []
    if len(rss) >= 2:
        out.append(
            ("daemon memory (RSS) first -> last", f"{rss[0][1]:.0f} -> {rss[-1][1]:.0f} MiB")
        )
    if series.get("records_dropped") is not None:
        out.append(("display records lost", str(series["records_dropped"])))
    return out


def html_report(report: dict, plots: dict) -> str:
    e = html.escape
    dev = report.get("device") or {}
    verdict = report["verdict"]
    counts = report["counts"]
    summary = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in key_figures(report))
    problems = [s for s in report["steps"] if s["verdict"] != "passed"]
    attention = "".join(
        f"<div class='problem {s['verdict']}'><b>{s['index']}. {e(s['name'])}: {s['verdict']}</b>"
        f" &ndash; {e(scrub_paths(s['message']))}"
        f"{_checks_table([c for c in s['checks'] if c['ok'] is not True])}</div>"
        for s in problems
    )
    if report.get("setup_error"):
        attention = (
            f"<div class='problem error'><b>setup</b>: {e(scrub_paths(report['setup_error']))}</div>"
            + attention
        )
    rows = []
    for s in report["steps"]:
        colour = VERDICT_COLOUR[s["verdict"]]
        metrics = _fmt(s["metrics"]) if s["metrics"] else ""
        body = _checks_table(s["checks"]) + (
            f"<details><summary>measurements</summary>{metrics}</details>" if metrics else ""
        )
        rows.append(
            f"<tr><td>{s['index']}</td><td>{e(s['name'])}</td>"
            f"<td style='color:{colour};font-weight:bold'>{s['verdict']}</td>"
            f"<td>{s['duration_s']:.1f} s</td><td>{e(scrub_paths(s['message']))}{body}</td></tr>"
        )
    figs = "".join(f"<figure>{_img(p)}</figure>" for p in plots.values()) or (
        f"<p>{e(report.get('plots_missing') or 'No series to plot.')}</p>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lucida hil: {e(report["scenario"])}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #1f2328; max-width: 80em; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f6f8fa; font-weight: 600; }}
table.kv {{ margin: 0; font-size: 12px; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #cf222e; font-weight: bold; }} .skip {{ color: #9a6700; }}
.problem {{ border-left: 4px solid #cf222e; padding: 0.3em 0.8em; margin: 0.5em 0; background: #fff5f5; }}
.problem.skipped {{ border-color: #9a6700; background: #fffbea; }}
.verdict {{ color: {VERDICT_COLOUR[verdict]}; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 600px; }}
.sign td {{ min-width: 14em; height: 2em; }}
</style></head><body>
<h1>lucida hil: {e(report["scenario"])} on {e(str(dev.get("kind")))} device:
<span class="verdict">{verdict.upper()}</span></h1>
<p>{e(report.get("description") or "")}</p>
<h2>Summary</h2>
<table>
<tr><th>started</th><td>{e(_when(report["started"]))}</td></tr>
<tr><th>duration</th><td>{e(_duration(report["duration_s"]))}</td></tr>
<tr><th>steps</th><td>{counts["passed"]} passed, {counts["failed"]} failed, {counts["skipped"]} skipped, {counts["error"]} errors</td></tr>
<tr><th>model on the device</th><td>{e(str(dev.get("model")))} ({e(str(dev.get("backend")))}, {e(str(dev.get("delegate")))})</td></tr>
{summary}
</table>
{"<h2>Needs attention</h2>" + attention if attention else "<p class='ok'>Every step passed.</p>"}
<h2>Plots</h2>{figs}
<h2>Device</h2>{_fmt(dev)}
<h2>Steps</h2>
<table><tr><th>#</th><th>step</th><th>verdict</th><th>time</th><th>what happened</th></tr>
{"".join(rows)}</table>
<h2>Sign-off</h2>
<table class="sign"><tr><th>tested by</th><td></td><th>date</th><td></td></tr>
<tr><th>reviewed by</th><td></td><th>date</th><td></td></tr></table>
</body></html>
"""
