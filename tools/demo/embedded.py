"""`lucida demo`: the embedded default behind `make run`.

The virtual microscope (a held-out synthetic slide, 1920x1080 camera) -> the shipped model ->
contours in AR mode and preview mode -> a video file, PNG snapshots and optionally MJPEG.
Bounded by --frames / --seconds; prints a summary (fps, latency, drops, the FoV AUC it saw).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from lucida.tools.demo.evaluate import FOV_SCORE_PERCENTILE, FOV_TUMOUR_FRACTION


class DemoError(ValueError):
    """Bad `lucida demo` arguments (exit 2)."""


STALL_TIMEOUT_MS = 2000  # the virtual camera renders a new field cold for ~1 s after a jump
TOUR_PAUSE_S = 2.0  # the demo's stage rests this long on each field, as a pathologist would


def register(sub) -> None:
    p = sub.add_parser("demo", help="virtual microscope -> model -> overlay, headless and bounded")
    p.add_argument("--bundle", default="lymph-m", help="bundle folder or shipped name")
    p.add_argument("--objective", default="10x", help="objective of the virtual microscope")
    p.add_argument("--seed", type=int, default=1001, help="virtual slide seed (held out)")
    p.add_argument("--frames", type=int, default=120, help="stop after this many processed frames")
    p.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    p.add_argument("--fps", type=float, default=15.0, help="virtual camera frame rate")
    p.add_argument("--out", default="out/demo", help="folder for the video and snapshots")
    p.add_argument("--mjpeg", type=int, default=None, metavar="PORT", help="also serve MJPEG")
    p.add_argument("--picture-width", type=int, default=1920, help="preview.jpg width in px")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


class FovScores:
    """Collects (tumour in FoV?, heatmap score) per processed frame, for the FoV AUC."""

    def __init__(self):
        self.labels: list[bool] = []
        self.scores: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, result) -> None:
        mask = result.frame.meta.get("truth_mask")
        if mask is None:
            return
        with self.lock:
            self.labels.append(bool(mask.mean() >= FOV_TUMOUR_FRACTION))
            self.scores.append(float(np.percentile(result.heatmap.probs, FOV_SCORE_PERCENTILE)))

    def auc(self) -> float | None:
        from lucida.runtime.stats import roc_auc

        with self.lock:
            return roc_auc(self.labels, self.scores)


class LastOverlay:
    """Keeps the drawn result with the most tumour outlined near the centre of the field (what
    the eyepiece shows), for the pictures at the end."""

    def __init__(self):
        self.result = None
        self.objective = None
        self.area = 0.0

    def __call__(self, kind: str, t_ns: int, result=None, objective=None, **_) -> None:
        if kind == "overlay" and result is not None and result.regions:
            w, h = result.heatmap.frame_size
            centre, r = np.array([w / 2, h / 2]), min(w, h) / 2
            area = sum(
                a
                for c, a in zip(result.regions.contours, result.regions.areas_px2)
                if np.linalg.norm(c.mean(axis=0) - centre) < r
            )
            if area >= self.area:
                self.result, self.objective, self.area = result, objective, area


def write_pictures(shown: LastOverlay, ar, preview, out: Path, width: int = 1920) -> list[str]:
    """ar.png (the eyepiece display) and preview.jpg (frame + overlay, `width` px wide)."""
    import cv2
    from lucida.overlay.sinks import write_png

    r = shown.result
    um = r.frame.meta.get("um_per_px")
    kw = dict(
        heatmap_affine=r.heatmap.affine, objective=shown.objective, um_per_px=um, model=r.model
    )
    ar_img = ar.compose(r.regions, heatmap=r.heatmap.probs, **kw)
    preview_img = preview.compose(r.frame.image, r.regions, r.heatmap.probs, **kw)
    if preview_img.shape[1] > width:
        h = round(preview_img.shape[0] * width / preview_img.shape[1])
        preview_img = cv2.resize(preview_img, (width, h), interpolation=cv2.INTER_AREA)
    jpg = out / "preview.jpg"  # camera images compress badly as PNG
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(preview_img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88]
    )
    jpg.write_bytes(data.tobytes())
    return [str(write_png(out / "ar.png", ar_img)), str(jpg)]


def tour(slide, objective: str, seed: int, stops: int = 40):
    """A looping stage path over fields with and without tumour, resting on each."""
    from lucida.runtime.virtual.stage import StagePath, Waypoint
    from lucida.tools.demo.evaluate import fov_positions

    points = fov_positions(slide, objective, stops, np.random.default_rng(seed))
    return StagePath([Waypoint(x, y, None, TOUR_PAUSE_S) for x, y in points], loop=True)


def run(args) -> int:
    from lucida.models import resolve_bundle
    from lucida.overlay.compose import ARComposer, PreviewComposer
    from lucida.overlay.render import ContourRenderer, HudRenderer, ScaleBarRenderer
    from lucida.overlay.sinks import MjpegSink, VideoSink
    from lucida.runtime.models import ModelSelector
    from lucida.runtime.pipeline import Pipeline
    from lucida.runtime.virtual.camera import CameraConfig
    from lucida.runtime.virtual.scope import VirtualMicroscope

    for flag, value in (
        ("--frames", args.frames),
        ("--seconds", args.seconds),
        ("--fps", args.fps),
    ):
        if not value > 0:
            raise DemoError(f"{flag} must be > 0, got {value}")
    if args.picture_width < 16:
        raise DemoError(f"--picture-width must be >= 16 px, got {args.picture_width}")
    bundle = resolve_bundle(args.bundle)
    if args.objective not in bundle.manifest.objectives:
        raise DemoError(
            f"no model for {args.objective}: bundle {bundle.name} is made for "
            f"{', '.join(bundle.manifest.objectives)} (the eyepiece would stay dark); "
            f"choose --objective {bundle.manifest.objectives[0]} or another --bundle"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    camera = CameraConfig(resolution=(1920, 1080), fps=args.fps)
    from lucida.runtime.virtual.tissue import SyntheticSlide

    slide = SyntheticSlide(args.seed)
    scope = VirtualMicroscope(
        slide, camera=camera, objective=args.objective, path=tour(slide, args.objective, args.seed)
    )
    size = (1920, 1080)
    ar = ARComposer(
        size,
        eyepiece_circle=(size[0] / 2, size[1] / 2, size[1] / 2),
        renderers=[ContourRenderer(), ScaleBarRenderer(), HudRenderer()],
    )
    preview = PreviewComposer([ContourRenderer(), ScaleBarRenderer(), HudRenderer()])
    preview_sinks = [VideoSink(out / "preview.mp4", fps=args.fps)]
    if args.mjpeg is not None:
        mjpeg = MjpegSink("127.0.0.1", args.mjpeg)
        preview_sinks.append(mjpeg)
    fov = FovScores()
    shown = LastOverlay()
    pipe = Pipeline(
        scope,
        ModelSelector(bundle=bundle),
        ar=ar,
        on_display=shown,
        preview=preview,
        preview_sinks=preview_sinks,
        on_result=fov,
        display_interval_ms=1000 / args.fps,
        stall_timeout_ms=STALL_TIMEOUT_MS,
    )
    if args.mjpeg is not None:
        print(f"live MJPEG: {mjpeg.url}", flush=True)
    st = pipe.run(frames=args.frames, seconds=args.seconds)
    snaps = []
    if shown.result is not None:
        snaps = write_pictures(shown, ar, preview, out, args.picture_width)
    auc = fov.auc()
    summary = {
        "bundle": bundle.name,
        "objective": args.objective,
        "backend": st["backend"],
        "delegate": st["delegate"],
        "frames_in": st["frames_in"],
        "processed": st["processed"],
        "displayed": st["displayed"],
        "fps_in": st["fps_in"],
        "fps_processed": st["fps_processed"],
        "fps_displayed": st["fps_displayed"],
        "latency_ms_p50": st["latency_ms_p50"],
        "latency_ms_p90": st["latency_ms_p90"],
        "latency_ms_p99": st["latency_ms_p99"],
        "infer_ms_p50": st["infer_ms_p50"],
        "infer_ms_p99": st["infer_ms_p99"],
        "contours_ms_p50": st["contours_ms_p50"],
        "render_ms_p50": st["render_ms_p50"],
        "drops_capture": st["drops_capture"],
        "drops_result": st["drops_result"],
        "fov_auc": None if auc is None else round(auc, 4),
        "fovs": len(fov.labels),
        "fovs_with_tumour": int(sum(fov.labels)),
        "outputs": [str(out / "preview.mp4"), *snaps],
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    auc_text = "n/a (one class only)" if auc is None else f"{auc:.3f}"
    print(
        f"camera-lucida demo: {bundle.name} at {args.objective} on {st['backend']} "
        f"({st['delegate']})\n"
        f"  frames in {st['frames_in']}, processed {st['processed']}, displayed {st['displayed']}"
        f" (dropped stale: {st['drops_capture']})\n"
        f"  fps in {st['fps_in']:.1f}, processed {st['fps_processed']:.1f}, "
        f"displayed {st['fps_displayed']:.1f}\n"
        f"  frame-to-display latency p50 {st['latency_ms_p50']:.1f} ms, "
        f"p90 {st['latency_ms_p90']:.1f} ms, p99 {st['latency_ms_p99']:.1f} ms\n"
        f"  inference p50 {st['infer_ms_p50']:.1f} ms, contours p50 "
        f"{st['contours_ms_p50']:.1f} ms, render p50 {st['render_ms_p50']:.1f} ms\n"
        f"  FoV AUC {auc_text} over {len(fov.labels)} fields of view "
        f"({int(sum(fov.labels))} with tumour)\n"
        f"  wrote {', '.join(summary['outputs'])}"
    )
    return 0
