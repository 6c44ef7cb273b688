"""The bundle manifest (`manifest.json`): what a model expects, what it outputs, how to draw it.

Validated with pydantic on load; unknown keys are rejected so a typo never passes silently.
"""

from __future__ import annotations

from typing import Dict, List, Literal, Optional, Tuple, Union

from lucida.overlay.contours import ContourParams
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
MODEL_FILES = ("cpu.tflite", "edgetpu.tflite")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The model's input tile: width x height px, channel order, dtype, and the pixel size it expects."""

    width: int = Field(gt=0)
    height: int = Field(gt=0)
    channels: Literal[3] = 3
    color_order: Literal["RGB", "BGR"] = "RGB"
    dtype: Literal["uint8", "int8", "float32"] = "uint8"
    um_per_px: Optional[float] = Field(
        default=None,
        gt=0,
        description="pixel size (um) the model was trained at; frames are resampled to it",
    )


class Normalization(_Strict):
    """Float input = (pixel - mean) / std, per channel, pixel in 0..255 (before quantization)."""

    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v):
        if any(s == 0 for s in v):
            raise ValueError("std must be non-zero")
        return v


class TensorQuant(_Strict):
    """Affine quantization of one tensor: real = scale * (q - zero_point)."""

    dtype: Literal["uint8", "int8", "float32"]
    scale: float = 0.0
    zero_point: int = 0


class Quantization(_Strict):
    input: TensorQuant
    output: TensorQuant


class OutputSpec(_Strict):
    """What the output tensor means.

    heatmap: [1, h, w, C] per-position class scores; class_scores: [1, C] for the whole tile.
    activation: applied after dequantization ("none" when the model already outputs probabilities).
    """

    kind: Literal["heatmap", "class_scores"] = "heatmap"
    channels: int = Field(default=1, gt=0)
    positive_index: int = Field(default=0, ge=0)
    activation: Literal["none", "sigmoid", "softmax"] = "none"

    @model_validator(mode="after")
    def _index_in_range(self):
        if self.positive_index >= self.channels:
            raise ValueError(f"positive_index {self.positive_index} >= channels {self.channels}")
        return self


class Tiling(_Strict):
    """Tiles that cover a frame larger than the input, in model input px (after resampling)."""

    stride_x: int = Field(gt=0)
    stride_y: int = Field(gt=0)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Golden(_Strict):
    """A known input tile (uint8 HxWx3 .npy) and the dequantized output it must give (.npy)."""

    input: str = "golden_input.npy"
    output: str = "golden_output.npy"
    atol: float = Field(default=0.02, gt=0)


class ColorNorm(_Strict):
    """Reinhard colour normalization target: LAB mean and std of the training domain."""

    method: Literal["none", "reinhard"] = "none"
    lab_mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    lab_std: Tuple[float, float, float] = (1.0, 1.0, 1.0)


class LatencyFigure(_Strict):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    backend: str = ""
    delegate: str = "cpu"
    host: str = ""
    command: str = ""


class EdgeTpuFigures(_Strict):
    """What the compiled edgetpu.tflite holds (read back by `lucida bundle`); bytes of parameters."""

    subgraphs: int
    min_runtime_version: Optional[int] = None
    compiler_version: str = ""
    on_chip_bytes: int = 0  # cached in the Edge TPU's SRAM
    off_chip_bytes: int = 0  # streamed from host memory on every inference
    caching_tokens: List[int] = Field(default_factory=list)  # shared = co-compiled
    cpu_ops: List[str] = Field(default_factory=list)  # ops left on the CPU, in order


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = "0.1.0"
    task: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    objectives: List[str] = Field(min_length=1)
    input: InputSpec
    normalization: Normalization = Normalization()
    quantization: Quantization
    output: OutputSpec = OutputSpec()
    tiling: Tiling
    contours: Dict[str, Union[int, float, None]] = Field(default_factory=dict)
    color_norm: ColorNorm = ColorNorm()
    files: Dict[str, FileEntry]
    golden: Optional[Golden] = None
    metrics: Dict[str, object] = Field(default_factory=dict)
    latency: Dict[str, LatencyFigure] = Field(default_factory=dict)
    edgetpu: Optional[EdgeTpuFigures] = None

    @field_validator("contours")
    @classmethod
    def _contour_parameters(cls, v):
        """Defaults for heatmap -> contours; keys and rules are the overlay's ContourParams."""
        ContourParams.from_mapping(v)  # raises a ValueError naming the key and what is allowed
        return v

    @field_validator("objectives")
    @classmethod
    def _objective_names(cls, v):
        for o in v:
            if not o.endswith("x") or not o[:-1].replace(".", "", 1).isdigit():
                raise ValueError(f"objective {o!r} is not like '10x'")
        return v

    @model_validator(mode="after")
    def _has_cpu_model(self):
        if "cpu.tflite" not in self.files:
            raise ValueError("files must list 'cpu.tflite'")
        return self
