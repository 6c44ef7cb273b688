"""ChArUco on real photos of a printed board (opencv_contrib's tutorial images): corners on
a flat-board homography, agreement with OpenCV's own detector, outliers dropped."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from lucida.calibration import detect_pattern
from lucida.calibration.detect import neighbour_deviation, reject_outliers
from lucida.calibration.imageio import read_image
from lucida.tools.calibrate.charuco_bench import flat_board_rms, printed_board, read_intrinsics
from realdata import real

PHOTOS = ["cvcontrib_img_00.jpg", "cvcontrib_img_02.jpg", "cvcontrib_img_03.jpg"]


@pytest.mark.parametrize("name", PHOTOS)
def test_real_board_corners_lie_on_a_flat_board(name):
    spec = printed_board()
    k, d = read_intrinsics(real("charuco", "cvcontrib_tutorial_camera_charuco.yml"))
    rgb = read_image(real("charuco", name))
    det = detect_pattern(rgb, spec)
    assert len(det.ids) == 24  # every inner corner of the 5x7 board
    assert flat_board_rms(det.ids, det.camera_px, spec, k, d) <= 0.35
    cc, ci, _, _ = cv2.aruco.CharucoDetector(spec.board()).detectBoard(
        cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    )
    theirs = dict(zip(ci.ravel().tolist(), cc.reshape(-1, 2)))
    gap = [np.linalg.norm(theirs[i] - p) for i, p in zip(det.ids, det.camera_px)]
    assert np.mean(gap) <= 0.25 and np.max(gap) <= 1.0


def test_a_corner_off_its_neighbours_is_dropped():
    """A corner displaced 6.5 px (as partial occlusion did) is dropped; the rest stay."""
    spec = printed_board()
    det = detect_pattern(read_image(real("charuco", PHOTOS[0])), spec)
    pts = det.camera_px.copy()
    pts[10] += (5.0, -4.1)  # 6.5 px
    ids, kept = reject_outliers(det.ids, pts, spec)
    assert det.ids[10] not in ids and len(ids) == len(det.ids) - 1
    dev = neighbour_deviation(det.ids, det.camera_px, spec)
    assert np.nanmax(dev) < 1.0  # clean corners agree with their neighbours


def test_partial_occlusion_leaves_no_corner_off():
    """A dark blob over part of the board: whatever is returned is where it should be."""
    spec = printed_board()
    rgb = read_image(real("charuco", PHOTOS[0]))
    clean = detect_pattern(rgb, spec)
    x, y = clean.camera_px[10]
    occluded = rgb.copy()
    cv2.circle(occluded, (int(x + 9), int(y + 7)), 11, (30, 30, 30), -1)
    det = detect_pattern(occluded, spec)
    ref = dict(zip(clean.ids.tolist(), clean.camera_px))
    err = [np.linalg.norm(ref[i] - p) for i, p in zip(det.ids, det.camera_px)]
    assert len(det.ids) >= 20 and max(err) <= 1.0, sorted(err)[-3:]
