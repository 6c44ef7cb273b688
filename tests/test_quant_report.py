"""The quantization report's numbers and the calibration-image handling (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from lucida.tools.toolchain import representative as rep
from lucida.tools.toolchain.quant_report import compare, verdict


def test_class_scores_report_accuracy_and_auc():
    rng = np.random.default_rng(0)
    labels = [int(v) for v in rng.integers(0, 2, 200)]
    logits = [np.array([1.0 - 2 * y, 2 * y - 1.0]) + rng.normal(0, 0.8, 2) for y in labels]
    # int8 swaps the scores of 10 images the float model got right
    right = [i for i, (x, y) in enumerate(zip(logits, labels)) if int(np.argmax(x)) == y]
    flip = set(right[:10])
    q = [x[::-1] if i in flip else x for i, x in enumerate(logits)]
    r = compare(logits, q, labels, kind="class_scores", activation="softmax", positive_index=1)
    assert r["top1_agreement"] == pytest.approx(0.95)
    m = r["metric"]
    assert m["name"] == "AUC" and m["labelled"] == 200
    assert m["accuracy"]["int8"] == pytest.approx(m["accuracy"]["float"] - 0.05)
    assert m["delta"] < 0


def test_heatmap_masks_are_compared_at_output_resolution():
    mask = np.zeros((64, 64), bool)
    mask[:32] = True  # top half positive
    good = np.zeros((16, 16, 1), np.float32)
    good[:8] = 0.9
    bad = np.full((16, 16, 1), 0.4, np.float32)
    r = compare([good], [bad], [mask], kind="heatmap")
    assert r["metric"]["float"] == 1.0 and r["metric"]["int8"] == 0.5
    assert r["threshold_agreement"] == 0.5
    v = verdict({"output": r, "layers": []})
    assert v["ok"] is False and v["message"].startswith("int8 pixel AUC 0.500 below float")


def test_fit_to_input_crops_large_and_enlarges_small_images():
    big = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    out = rep.fit_to_input(big, 64, 48)
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out, big[26:74, 28:92])  # centre crop keeps the pixel size
    small = np.zeros((20, 30, 3), np.uint8)
    assert rep.fit_to_input(small, 64, 64).shape == (64, 64, 3)


def test_image_listing_skips_masks_and_seeded_subset_is_stable(tmp_path: Path):
    for i in range(12):
        cv2.imwrite(str(tmp_path / f"t{i:02d}.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "t00.mask.png"), np.zeros((8, 8), np.uint8))
    files = rep.list_images(tmp_path)
    assert len(files) == 12 and rep.mask_path(files[0]) == tmp_path / "t00.mask.png"
    assert rep.pick_subset(files, 5, seed=3) == rep.pick_subset(files, 5, seed=3)
    assert rep.pick_subset(files, 5, seed=3) != rep.pick_subset(files, 5, seed=4)
    assert rep.pick_subset(files, 50, seed=3) == files
    (tmp_path / "empty").mkdir()
    with pytest.raises(rep.ImageSetError, match="no images"):
        rep.list_images(tmp_path / "empty")


def test_normalize_matches_manifest_convention():
    rgb = np.array([[[0, 128, 255]]], np.uint8)
    x = rep.normalize(rgb, (127.5, 127.5, 127.5), (127.5, 127.5, 127.5))
    assert x.dtype == np.float32
    assert np.allclose(x, [[[-1.0, 0.5 / 127.5, 1.0]]])
