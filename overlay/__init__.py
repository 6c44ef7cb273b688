"""lucida.overlay: heatmap -> contours -> renderers -> display sinks.

Canvases are HxWx3 uint8 RGB. Typical use::

    extractor = ContourExtractor(ContourParams())
    composer = ARComposer((1920, 1080), homography, eyepiece_circle=(960, 540, 530))
    sink = make_sinks(["fb:/dev/fb0", "mjpeg:127.0.0.1:8080"])
    regions = extractor.extract(heatmap.probs, heatmap.affine, um_per_px)
    sink.show(composer.compose(regions, objective="10x", um_per_px=um_per_px))

On stage motion, a model switch or an objective change: `extractor.reset()` and show
`composer.blank()`.
"""

from .compose import ARComposer, PreviewComposer
from .contours import ContourExtractor, ContourParams
from .errors import OverlayError
from .regions import Regions
from .render import (
    ArrowRenderer,
    ContourRenderer,
    FilledRenderer,
    HeatmapRenderer,
    HudRenderer,
    RenderContext,
    ScaleBarRenderer,
    TextRenderer,
)
from .sinks import (
    FramebufferSink,
    MjpegSink,
    MultiSink,
    PngSink,
    Sink,
    VideoSink,
    WindowSink,
    make_sink,
    make_sinks,
)

__all__ = [
    "ARComposer",
    "ArrowRenderer",
    "ContourExtractor",
    "ContourParams",
    "ContourRenderer",
    "FilledRenderer",
    "FramebufferSink",
    "HeatmapRenderer",
    "HudRenderer",
    "MjpegSink",
    "MultiSink",
    "OverlayError",
    "PngSink",
    "PreviewComposer",
    "Regions",
    "RenderContext",
    "ScaleBarRenderer",
    "Sink",
    "TextRenderer",
    "VideoSink",
    "WindowSink",
    "make_sink",
    "make_sinks",
]
