"""`lucida bench overlay`: the result carries the numbers the issue asks for (no timing asserts)."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
from lucida.tools.bench import overlay as bench_overlay


def test_overlay_bench_reports_ours_and_the_peer_side_by_side():
    pytest.importorskip("supervision", reason="the peer is a dev dependency")
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    bench_overlay.add_arguments(parser)
    result = bench_overlay.run_overlay_bench(parser.parse_args(["--runs", "3", "--warmup", "1"]))
    assert result["display"] == "1920x1080" and result["eyepiece_mask"] and result["homography"]
    assert result["regions"] >= 2
    for key in ("ms_p50", "ms_p90", "ms_p99", "extract_ms_p50", "compose_ms_p50"):
        assert result[key] > 0
    assert result["ms_p50"] <= result["ms_p99"]
    assert "supervision" in result["peer"]
    assert result["peer_ratio"] == round(result["peer_ms_p50"] / result["ms_p50"], 2)


def test_pictures_of_ar_and_preview_mode(tmp_path):
    ar_path, preview_path = bench_overlay.write_pictures(tmp_path)
    ar = cv2.imread(str(ar_path))
    preview = cv2.imread(str(preview_path))
    assert ar.shape == (1080, 1920, 3) and preview.shape == (540, 960, 3)
    assert ar_path.stat().st_size < 400_000 and preview_path.stat().st_size < 400_000
    assert not ar[0, 0].any() and ar[:, :, 1].max() == 255  # black display, green contours
    assert np.median(preview[..., 2]) > 180  # mostly pink tissue under the overlay
