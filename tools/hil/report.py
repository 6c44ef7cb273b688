"""The bench's report: report.json, junit.xml (one testcase per step) and a single-file
report.html with the plots embedded (also written as PNG files next to it).

Plots (matplotlib, Agg): latency histogram (capture->display, device clock), fps over time
(measure windows and soak samples), memory (RSS) over time, contour IoU per objective.
"""

from __future__ import annotations

import base64
import html
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

VERDICT_COLOUR = {
    "passed": "#1a7f37",
    "failed": "#cf222e",
    "skipped": "#9a6700",
    "error": "#8250df",
}


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_report(report: dict, out_dir: str | os.PathLike) -> dict:
    """Write every form of the report under out_dir; returns {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "junit": out / "junit.xml", "html": out / "report.html"}
    plots = make_plots(report, out)
    report = {**report, "plots": {k: p.name for k, p in plots.items()}}
    _atomic_write(paths["json"], (json.dumps(report, indent=2, default=str) + "\n").encode())
    _atomic_write(paths["junit"], junit_xml(report))
    _atomic_write(paths["html"], html_report(report, plots).encode())
    return {**paths, **{f"plot_{k}": p for k, p in plots.items()}}


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
        ET.SubElement(props, "property", name=f"device.{key}", value=str(dev.get(key)))
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
        ET.SubElement(case, "system-out").text = json.dumps(
            {"checks": s["checks"], "metrics": s["metrics"]}, default=str
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
    made = {}

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
        top = max(f for _, f, _ in fps) * 1.15 or 1.0
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
        ax.set(
            xlabel="objective",
            ylabel="contour IoU (pooled)",
            title="Contours vs ground truth",
            ylim=(0, 1),
        )
        save(fig, "iou")
    return made


def _img(path: Path) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.stem}" src="data:image/png;base64,{b64}">'


def html_report(report: dict, plots: dict) -> str:
    e = html.escape
    dev = report.get("device") or {}
    verdict = report["verdict"]
    rows = []
    for s in report["steps"]:
        colour = VERDICT_COLOUR[s["verdict"]]
        checks = "".join(
            f"<li class='{ {True: 'ok', False: 'bad', None: 'skip'}[c['ok']] }'>"
            f"{e(str(c['name']))}: <b>{e(str(c['value']))}</b>"
            + (f" (want {e(str(c['limit']))})" if c.get("limit") is not None else "")
            + (f" <i>{e(c['note'])}</i>" if c.get("note") else "")
            + "</li>"
            for c in s["checks"]
        )
        metrics = e(json.dumps(s["metrics"], indent=1, default=str))
        rows.append(
            f"<tr><td>{s['index']}</td><td>{e(s['name'])}</td>"
            f"<td style='color:{colour};font-weight:bold'>{s['verdict']}</td>"
            f"<td>{s['duration_s']:.1f}</td><td>{e(s['message'])}"
            f"<details><summary>checks and metrics</summary><ul>{checks}</ul>"
            f"<pre>{metrics}</pre></details></td></tr>"
        )
    ident = "".join(
        f"<tr><th>{e(k)}</th><td>{e(json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))}</td></tr>"
        for k, v in dev.items()
    )
    lat = report["series"].get("latency_percentiles_ms") or {}
    counts = report["counts"]
    figs = (
        "".join(f"<figure>{_img(p)}</figure>" for p in plots.values())
        or "<p>No series to plot.</p>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lucida hil: {e(report["scenario"])}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #1f2328; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f6f8fa; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #cf222e; }} .skip {{ color: #9a6700; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 600px; }}
pre {{ font-size: 11px; max-height: 20em; overflow: auto; }}
</style></head><body>
<h1>lucida hil: {e(report["scenario"])} on {e(str(dev.get("kind")))} device:
<span style="color:{VERDICT_COLOUR[verdict]}">{verdict.upper()}</span></h1>
<p>{e(report.get("description") or "")}</p>
<p>Started {e(report["started"])}, {report["duration_s"]:.0f} s.
{counts["passed"]} passed, {counts["failed"]} failed, {counts["skipped"]} skipped, {counts["error"]} errors.
Latency (capture to display, device clock) p50/p90/p99: {lat.get("p50", "-")} / {lat.get("p90", "-")} / {lat.get("p99", "-")} ms.
{e(report.get("setup_error") or "")}</p>
<h2>Device</h2><table>{ident}</table>
<h2>Plots</h2>{figs}
<h2>Steps</h2>
<table><tr><th>#</th><th>step</th><th>verdict</th><th>s</th><th>what happened</th></tr>
{"".join(rows)}</table>
</body></html>
"""
