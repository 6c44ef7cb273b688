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
    """Affine quantization of one tensor: real = scale * (q - zero_point).

    Wider integer dtypes (int16/int32/int64) hold class indices (a class_map output, e.g. an
    ArgMax), with scale 0: they are not quantized reals.
    """

    dtype: Literal["uint8", "int8", "int16", "int32", "int64", "float32"]
    scale: float = 0.0
    zero_point: int = 0


class Quantization(_Strict):
    input: TensorQuant
    output: TensorQuant


class Label(_Strict):
    """One class: its name, an optional display name and an optional (R, G, B) drawing colour."""

    name: str = Field(min_length=1)
    display: Optional[str] = None
    color: Optional[Tuple[int, int, int]] = None

    @field_validator("color")
    @classmethod
    def _rgb(cls, v):
        if v is not None and not all(0 <= c <= 255 for c in v):
            raise ValueError(f"colour {list(v)}: expected [R, G, B] with values 0..255")
        return v

    @property
    def shown(self) -> str:
        return self.display or self.name


class OutputSpec(_Strict):
    """What the output tensor means.

    heatmap: [1, h, w, C] per-position class scores (C >= 1), activation none/sigmoid/softmax;
    class_scores: [1, C] for the whole tile (a patch classifier);
    class_map: [1, h, w] (or [1, h, w, 1]) per-position class index, any integer dtype (an ArgMax).
    channels: C, the number of classes. activation: applied after dequantization ("none" when
    the model already outputs probabilities). positive_classes: the classes whose probabilities
    are summed into the overlay's positive map (ARM's rule); default [positive_index].
    labels: class names in index order (empty, or exactly C), with optional colour/display name.
    """

    kind: Literal["heatmap", "class_scores", "class_map"] = "heatmap"
    channels: int = Field(default=1, gt=0)
    positive_index: int = Field(default=0, ge=0)
    positive_classes: Optional[List[int]] = None
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    labels: List[Label] = Field(default_factory=list)

    @field_validator("labels", mode="before")
    @classmethod
    def _plain_names(cls, v):
        """Labels may be given as plain names."""
        return [{"name": x} if isinstance(x, str) else x for x in (v or [])]

    @model_validator(mode="after")
    def _index_in_range(self):
        for k in self.positives:
            if not 0 <= k < self.channels:
                raise ValueError(f"positive class {k} not in 0..{self.channels - 1}")
        if len(set(self.positives)) != len(self.positives):
            raise ValueError(f"positive_classes {self.positives} repeats a class")
        if self.labels and len(self.labels) != self.channels:
            raise ValueError(f"{len(self.labels)} labels for {self.channels} classes")
        if self.kind == "class_map" and self.activation != "none":
            raise ValueError("a class_map output holds class indices: activation must be 'none'")
        return self

    @property
    def positives(self) -> List[int]:
        """Indices of the positive classes, in the manifest's order."""
        if self.positive_classes:
            return list(self.positive_classes)
        return [self.positive_index]

    def label(self, k: int) -> str:
        """Display name of class k ("class k" when the bundle has no labels)."""
        return self.labels[k].shown if self.labels else f"class {k}"


class Tiling(_Strict):
    """Tiles that cover a frame larger than the input, in model input px (after resampling)."""

    stride_x: int = Field(gt=0)
    stride_y: int = Field(gt=0)


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Golden(_Strict):
    """A known input tile (uint8 HxWx3 .npy) and the decoded output it must give (.npy).

    output: the positive-class probabilities for cpu.tflite; outputs: per model file
    ("edgetpu.tflite": ...) where one was measured on that file's hardware (else `output`).
    atol: max abs error allowed, in probability units: a few output quanta carried through the
    activation, or twice the spread measured across kernels (XNNPACK, reference), the larger.
    max_mismatch: for class maps, the fraction of cells allowed to change class (ties between
    kernels); None elsewhere.
    """

    input: str = "golden_input.npy"
    output: str = "golden_output.npy"
    outputs: Dict[str, str] = Field(default_factory=dict)
    atol: float = Field(default=0.02, gt=0)
    max_mismatch: Optional[float] = Field(default=None, ge=0, le=1)


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
