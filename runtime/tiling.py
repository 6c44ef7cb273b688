"""Cover a frame with model-input tiles and stitch the tile outputs into one heatmap.

Units: everything in model-input px (the frame after resampling to the model's pixel size),
except `cell`, the model-input px per output cell. Overlapping outputs are split at the middle of
the overlap, so each cell comes from the tile where it is furthest from a tile border: for a
fully-convolutional model whose receptive field fits in half the overlap, the stitched heatmap
equals a run over the whole frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TilePlan:
    """Where each tile goes: padded frame size, tile origins and the output slices they own."""

    padded_w: int  # px, frame padded right/bottom so tiles fit exactly
    padded_h: int
    tile_w: int
    tile_h: int
    cell: int  # model px per output cell
    out_w: int  # cells in the stitched heatmap (cropped to the unpadded frame)
    out_h: int
    tiles: tuple  # ((x0, y0, src_slice_y, src_slice_x, dst_slice_y, dst_slice_x), ...)


def _axis(length: int, tile: int, stride: int, cell: int):
    """Tile origins along one axis and, per tile, the output cell range [a, b) it owns."""
    padded = tile if length <= tile else tile + math.ceil((length - tile) / stride) * stride
    origins = list(range(0, padded - tile + 1, stride))
    owned = []
    for i, p in enumerate(origins):
        start = 0 if i == 0 else (origins[i - 1] + tile + p) // 2
        end = padded if i == len(origins) - 1 else (p + tile + origins[i + 1]) // 2
        owned.append((start // cell, end // cell))
    return padded, origins, owned


def plan_tiles(
    frame_w: int, frame_h: int, tile_w: int, tile_h: int, stride_x: int, stride_y: int, cell: int
) -> TilePlan:
    """Plan tiles of tile_w x tile_h px at the given strides; strides must be whole cells."""
    if stride_x % cell or stride_y % cell or tile_w % cell or tile_h % cell:
        raise ValueError(
            f"tile {tile_w}x{tile_h} and stride {stride_x}x{stride_y} px must be multiples of the "
            f"output cell ({cell} px)"
        )
    if stride_x > tile_w or stride_y > tile_h:
        raise ValueError(
            f"stride {stride_x}x{stride_y} larger than tile {tile_w}x{tile_h} leaves gaps"
        )
    pw, xs, xo = _axis(frame_w, tile_w, stride_x, cell)
    ph, ys, yo = _axis(frame_h, tile_h, stride_y, cell)
    tiles = []
    for y0, (ya, yb) in zip(ys, yo):
        for x0, (xa, xb) in zip(xs, xo):
            src = (slice(ya - y0 // cell, yb - y0 // cell), slice(xa - x0 // cell, xb - x0 // cell))
            dst = (slice(ya, yb), slice(xa, xb))
            tiles.append((x0, y0, *src, *dst))
    return TilePlan(
        padded_w=pw,
        padded_h=ph,
        tile_w=tile_w,
        tile_h=tile_h,
        cell=cell,
        out_w=math.ceil(frame_w / cell),
        out_h=math.ceil(frame_h / cell),
        tiles=tuple(tiles),
    )


def stitch_into(out: np.ndarray, plan: TilePlan, index: int, tile_out: np.ndarray) -> None:
    """Copy the cells tile `index` owns from its HxW output into the padded heatmap `out`."""
    _, _, sy, sx, dy, dx = plan.tiles[index]
    out[dy, dx] = tile_out[sy, sx]
