"""Affine (de)quantization of TFLite tensors: real = scale * (q - zero_point)."""

from __future__ import annotations

import numpy as np

_INT_TYPES = {"uint8": np.uint8, "int8": np.int8, "int16": np.int16, "int32": np.int32}


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round like TFLite's std::round: halves go away from zero (np.round goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize(x, scale: float, zero_point: int, dtype: str | np.dtype) -> np.ndarray:
    """Real values -> integer codes of `dtype`, saturating at the type's range."""
    dt = np.dtype(_INT_TYPES.get(str(dtype), dtype))
    info = np.iinfo(dt)
    q = round_half_away(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dt)


def dequantize(q, scale: float, zero_point: int) -> np.ndarray:
    """Integer codes -> float32 real values."""
    return ((np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(
        np.float32
    )


def input_lut(mean, std, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """256x3 table: pixel value 0..255 per channel -> the model's input code.

    Fuses normalization ((p - mean) / std) and quantization into one lookup per pixel.
    For float32 inputs the table holds the normalized floats.
    """
    p = np.arange(256, dtype=np.float64)[:, None]
    real = (p - np.asarray(mean, dtype=np.float64)[None, :]) / np.asarray(std, dtype=np.float64)[
        None, :
    ]
    if dtype == "float32":
        return real.astype(np.float32)
    return quantize(real, scale, zero_point, dtype)


def is_identity(lut: np.ndarray) -> bool:
    """True when the table maps every pixel value to itself (uint8 input fed as is)."""
    return lut.dtype == np.uint8 and bool(np.all(lut == np.arange(256, dtype=np.uint8)[:, None]))


def saturated_fraction(tile: np.ndarray, lut: np.ndarray) -> float:
    """Fraction (0..1) of an RGB uint8 tile's input codes, through a 256x3 input_lut, that sit at
    the quantized type's min or max: near 1 when the normalization pushes pixels out of range."""
    codes = lut[tile, np.arange(3)]
    info = np.iinfo(codes.dtype)
    return float(np.mean((codes == info.min) | (codes == info.max))) if codes.size else 0.0
