"""Architecture variants to train the latency predictor on (host side, Keras + the TFLite converter).

The search space is EfficientNet-EdgeTPU's, shrunk to heatmap nets of the demo family's kind:
input 64..256 px on the long side (square or 16:9), a stride-2 stem of 8..64 channels, then 2..6
blocks, each a regular 3x3/5x5 conv ("conv", EdgeTPU's fused block), a depthwise-separable pair
("dw") or an inverted residual ("mbconv": 1x1 expand, depthwise, 1x1 project, Add when shapes
allow), with strides that bring the output cell to 4..16 px, and a 1x1 conv to one logit per
cell. Weights are random: the candidates are measured, never trained for accuracy.

Each candidate is a seed: `spec_for_seed(seed)` draws the same architecture every time, and the
held-out split is by seed (`is_held_out`: every 5th). `build_candidates` quantizes them (full int8,
uint8 I/O, ~10 random calibration images) and writes each as a small bundle folder
(cpu.tflite + candidate.json, no golden pair) under build/candidates/, so `lucida profile` measures
them exactly as it measures real bundles.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("build") / "candidates"
SPEC_FILE = "candidate.json"
HELD_OUT_EVERY = 5

SIZES = (64, 96, 128, 160, 192, 224, 256)
WIDTHS = (8, 12, 16, 24, 32, 48, 64)
BLOCKS = ("conv", "dw", "mbconv")


class CandidateError(ValueError):
    """A candidate folder or spec that cannot be used."""


@dataclass(frozen=True)
class Block:
    """One block: kind ('conv' | 'dw' | 'mbconv'), output channels, stride, kernel, expansion."""

    kind: str
    channels: int
    stride: int
    kernel: int = 3
    expand: int = 1


@dataclass(frozen=True)
class CandidateSpec:
    """One architecture: input (width, height) px, stem channels, blocks; cell = total stride px."""

    seed: int
    size: tuple[int, int]
    stem: int
    blocks: tuple[Block, ...]

    @property
    def name(self) -> str:
        return f"cand-{self.seed:04d}"

    @property
    def cell(self) -> int:
        s = 2
        for b in self.blocks:
            s *= b.stride
        return s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CandidateSpec:
        return cls(
            seed=int(d["seed"]),
            size=(int(d["size"][0]), int(d["size"][1])),
            stem=int(d["stem"]),
            blocks=tuple(Block(**b) for b in d["blocks"]),
        )


def is_held_out(seed: int) -> bool:
    """Held-out split by seed: every HELD_OUT_EVERY-th candidate is never trained on."""
    return seed % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


def _round8(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


def spec_for_seed(seed: int) -> CandidateSpec:
    """The architecture drawn from `seed` (deterministic)."""
    rng = np.random.default_rng(10_000 + seed)
    side = int(rng.choice(SIZES))
    size = (side, side) if rng.random() < 0.5 else (side, _round16(side * 9 / 16))
    stem = int(rng.choice(WIDTHS))
    depth = int(rng.integers(2, 7))
    # total stride 4..16: the stem gives 2, then 1..3 more stride-2 blocks among `depth`
    n_down = int(rng.integers(1, min(3, depth) + 1))
    down_at = set(rng.choice(depth, size=n_down, replace=False).tolist())
    mixed = rng.random() < 0.4  # else one block kind for the whole net
    kind0 = str(rng.choice(BLOCKS))
    growth = float(rng.choice((1.0, 1.25, 1.5, 2.0)))
    blocks, c = [], stem
    for i in range(depth):
        kind = str(rng.choice(BLOCKS)) if mixed else kind0
        stride = 2 if i in down_at else 1
        if stride == 2:
            c = min(_round8(c * growth), 128)
        kernel = 5 if rng.random() < 0.25 else 3
        expand = int(rng.choice((3, 6))) if kind == "mbconv" else 1
        blocks.append(Block(kind, c, stride, kernel, expand))
    return CandidateSpec(seed, size, stem, tuple(blocks))


def _round16(x: float) -> int:
    return max(16, int(round(x / 16)) * 16)


def build_keras(spec: CandidateSpec):
    """The Keras model of a spec: raw RGB 0..255 in, one logit per cell out (random weights)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(spec.seed)
    w, h = spec.size
    inp = keras.Input((h, w, 3), name="image")

    def conv(x, c, k=3, s=1, act=True):
        x = layers.Conv2D(c, k, strides=s, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU(6.0)(x) if act else x

    def dw(x, k=3, s=1):
        x = layers.DepthwiseConv2D(k, strides=s, padding="same", use_bias=False)(x)
        return layers.ReLU(6.0)(layers.BatchNormalization()(x))

    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = conv(x, spec.stem, s=2)
    for b in spec.blocks:
        c_in = x.shape[-1]
        if b.kind == "conv":
            x = conv(x, b.channels, b.kernel, b.stride)
        elif b.kind == "dw":
            x = conv(dw(x, b.kernel, b.stride), b.channels, k=1)
        else:
            y = conv(x, c_in * b.expand, k=1)
            y = conv(dw(y, b.kernel, b.stride), b.channels, k=1, act=False)
            x = layers.Add()([x, y]) if b.stride == 1 and c_in == b.channels else y
    x = layers.Conv2D(1, 1, name="logits")(x)
    return keras.Model(inp, x, name=spec.name.replace("-", "_"))


def quantize_spec(spec: CandidateSpec, n_calib: int = 10) -> bytes:
    """Full-int8 TFLite bytes (uint8 I/O) of a spec, calibrated on random images."""
    from lucida.tools.toolchain.convert import quantize_keras

    rng = np.random.default_rng(spec.seed)
    w, h = spec.size
    samples = [rng.integers(0, 256, (h, w, 3)).astype(np.float32) for _ in range(n_calib)]
    return quantize_keras(build_keras(spec), samples)


def write_candidate(out_dir: str | os.PathLike, spec: CandidateSpec, tflite: bytes):
    """A minimal bundle folder for a candidate: cpu.tflite + candidate.json, no golden pair."""
    from lucida.models import write_bundle
    from lucida.tools.toolchain.tflite_reader import read_tflite

    m = read_tflite(tflite)
    qi, qo = m.inputs[0], m.outputs[0]
    w, h = spec.size
    cell = spec.cell
    stride = max(cell, (w * 3 // 4) // cell * cell), max(cell, (h * 3 // 4) // cell * cell)
    manifest = {
        "schema_version": 1,
        "name": spec.name,
        "task": "candidate",
        "description": "latency-predictor training candidate (random weights, not for use)",
        "objectives": ["10x", "20x"],
        "input": {"width": w, "height": h, "dtype": qi.dtype},
        "quantization": {
            "input": {"dtype": qi.dtype, "scale": qi.scale or 0.0, "zero_point": qi.zero_point},
            "output": {"dtype": qo.dtype, "scale": qo.scale or 0.0, "zero_point": qo.zero_point},
        },
        "output": {"kind": "heatmap", "channels": 1, "activation": "sigmoid"},
        "tiling": {"stride_x": int(stride[0]), "stride_y": int(stride[1])},
    }
    spec_bytes = (json.dumps(spec.to_dict(), indent=1) + "\n").encode()
    return write_bundle(
        Path(out_dir) / spec.name, manifest, {"cpu.tflite": tflite, SPEC_FILE: spec_bytes}
    )


def read_spec(bundle) -> CandidateSpec | None:
    """The candidate spec of a bundle (None for a bundle that is not a candidate)."""
    if SPEC_FILE not in bundle.manifest.files:
        return None
    try:
        return CandidateSpec.from_dict(json.loads(bundle.file(SPEC_FILE).read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise CandidateError(f"bundle {bundle.name}: bad {SPEC_FILE}: {exc}") from None


def build_candidates(
    seeds, out_dir: str | os.PathLike = DEFAULT_DIR, progress: bool = True
) -> list[Path]:
    """Quantize and write the candidates of these seeds (skipping folders that already exist)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    paths = []
    for seed in tqdm(list(seeds), desc="candidates", unit="model", disable=not progress):
        spec = spec_for_seed(int(seed))
        folder = out_dir / spec.name
        if not (folder / "manifest.json").is_file():
            write_candidate(out_dir, spec, quantize_spec(spec))
        paths.append(folder)
    return paths


def register(sub) -> None:
    p = sub.add_parser(
        "candidates",
        help="generate architecture variants (int8 bundles) to train the latency predictor on",
    )
    p.add_argument("--count", type=int, default=100, help="number of candidates (seeds 0..N-1)")
    p.add_argument("--first", type=int, default=0, help="first seed")
    p.add_argument("--out", default=str(DEFAULT_DIR), help="folder for the candidate bundles")
    p.add_argument("--json", action="store_true", help="print the specs as JSON lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from lucida.tools.cli import require_host

    if args.count < 1:
        raise CandidateError("--count must be >= 1")
    require_host("tensorflow", "keras")
    paths = build_candidates(range(args.first, args.first + args.count), args.out)
    if args.json:
        for p in paths:
            print((p / SPEC_FILE).read_text().replace("\n", ""))
    else:
        held = sum(is_held_out(args.first + i) for i in range(args.count))
        print(f"{len(paths)} candidates in {args.out} ({held} held out for evaluation)")
        print(f"measure them: lucida profile {args.out}/cand-* --threads 1")
    return 0
