"""The virtual microscope: turret and stage geometry, camera effects, motion flags, faults."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from lucida.runtime.sources import SourceError
from lucida.runtime.virtual.camera import CameraConfig
from lucida.runtime.virtual.scope import OBJECTIVES, TURRET, ScopeError, VirtualMicroscope
from lucida.runtime.virtual.stage import StagePath, Waypoint
from lucida.runtime.virtual.tissue import SyntheticSlide

RES = (320, 240)
CLEAN = CameraConfig(
    resolution=RES, read_noise_dn=0, shot_noise=0, vignetting=0, colour_gains=(1, 1, 1)
)


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return SyntheticSlide(4, (3000.0, 2500.0))


@pytest.fixture(scope="module")
def spot(slide) -> tuple[float, float]:
    return slide.random_point(np.random.default_rng(0), "boundary")


def _scope(slide, path, camera=CLEAN, **kw) -> VirtualMicroscope:
    kw.setdefault("turret_move_s", 0.0)
    kw.setdefault("settle_s", 0.0)
    kw.setdefault("tile_px", 128)
    scope = VirtualMicroscope(slide, path=path, camera=camera, realtime=False, **kw)
    scope.open()
    return scope


def test_frames_carry_the_interface_fields(slide, spot):
    scope = _scope(slide, StagePath.still(*spot))
    f = scope.read()
    assert f.image.shape == (RES[1], RES[0], 3) and f.image.dtype == np.uint8
    assert f.meta["truth_mask"].shape == (RES[1], RES[0]) and f.meta["truth_mask"].dtype == bool
    assert f.meta["stage_um"] == pytest.approx(spot)
    assert f.meta["slide_seed"] == 4 and f.objective == "10x" and f.moving is False
    assert scope.read().seq == f.seq + 1
    assert scope.name == "virtual"


@pytest.mark.parametrize("objective", TURRET)
def test_pixel_size_and_field_of_view_follow_the_objective(slide, spot, objective):
    scope = _scope(slide, StagePath.still(*spot), objective=objective)
    f = scope.read()
    s = OBJECTIVES[objective]
    assert f.meta["um_per_px"] == s and f.objective == objective
    assert scope.fov_um == pytest.approx((RES[0] * s, RES[1] * s))
    # The truth mask is the slide's mask over exactly that field of view.
    x0 = round(spot[0] / s - RES[0] / 2) * s
    y0 = round(spot[1] / s - RES[1] / 2) * s
    assert np.array_equal(f.meta["truth_mask"], slide.truth_mask(x0, y0, RES[0], RES[1], s))
    assert scope.turret_position() == TURRET.index(objective) + 1


def test_um_per_px_scales_with_magnification():
    assert [OBJECTIVES[o] * int(o[:-1]) for o in TURRET] == pytest.approx([10.0] * len(TURRET))


@pytest.mark.parametrize("objective,shift_um", [("10x", (30.0, -20.0)), ("20x", (-12.0, 16.0))])
def test_moving_the_stage_shifts_the_image_by_um_over_um_per_px(slide, spot, objective, shift_um):
    scope = _scope(slide, StagePath.still(*spot), objective=objective)
    a = scope.read()
    scope.goto(spot[0] + shift_um[0], spot[1] + shift_um[1])
    b = scope.read()
    ga = cv2.cvtColor(a.image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    gb = cv2.cvtColor(b.image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    (dx, dy), response = cv2.phaseCorrelate(ga, gb)
    s = OBJECTIVES[objective]
    # The stage moves right -> the specimen moves left in the image.
    assert (dx, dy) == pytest.approx((-shift_um[0] / s, -shift_um[1] / s), abs=0.6)
    assert response > 0.3


def test_vignetting_darkens_the_corners(slide):
    glass = StagePath.still(-20000.0, -20000.0)
    vig = CameraConfig(resolution=RES, read_noise_dn=0, shot_noise=0, colour_gains=(1, 1, 1))
    g = cv2.cvtColor(_scope(slide, glass, vig).read().image, cv2.COLOR_RGB2GRAY).astype(float)
    flat = cv2.cvtColor(_scope(slide, glass, CLEAN).read().image, cv2.COLOR_RGB2GRAY).astype(float)
    centre = g[110:130, 150:170].mean()
    corners = np.mean([g[:8, :8].mean(), g[:8, -8:].mean(), g[-8:, :8].mean(), g[-8:, -8:].mean()])
    assert corners < 0.8 * centre
    assert flat[:8, :8].mean() == pytest.approx(flat[110:130, 150:170].mean(), rel=0.02)


def test_camera_noise_and_colour_cast(slide):
    glass = StagePath.still(-20000.0, -20000.0)
    cam = CameraConfig(resolution=RES, vignetting=0, colour_gains=(1.0, 0.9, 0.8))
    img = _scope(slide, glass, cam).read().image.astype(float)
    centre = img[60:180, 80:240]
    r, g, b = centre.reshape(-1, 3).mean(0)
    assert r > g > b
    assert 0.5 < centre[..., 0].std() < 15  # noisy, but not snow


def test_exposure_and_gain_brighten_the_image(slide, spot):
    scope = _scope(slide, StagePath.still(*spot))
    base = scope.read().image.mean()
    brighter_cam = CameraConfig(
        resolution=RES,
        exposure_ms=15.0,
        gain=1.2,
        read_noise_dn=0,
        shot_noise=0,
        vignetting=0,
        colour_gains=(1, 1, 1),
    )
    scope.set_camera(brighter_cam)
    brighter = scope.read().image.mean()
    assert brighter > 1.3 * base


def test_same_seed_same_frames(slide, spot):
    cam = CameraConfig(resolution=RES)
    path = StagePath([Waypoint(*spot), Waypoint(spot[0] + 200, spot[1], 100.0)])
    s1, s2 = _scope(slide, path, cam), _scope(slide, path, cam)
    for _ in range(3):
        assert np.array_equal(s1.read().image, s2.read().image)


def test_turret_move_blanks_then_settles(slide, spot):
    scope = _scope(slide, StagePath.still(*spot), turret_move_s=0.21, settle_s=0.11)  # 30 fps
    assert scope.read().moving is False
    scope.set_objective("40x")
    frames = [scope.read() for _ in range(12)]
    turning = [f for f in frames if f.meta["turret_moving"]]
    assert [f.seq for f in turning] == [f.seq for f in frames[:7]]  # 0.21 s at 30 fps
    assert all(f.objective is None and f.moving and not f.meta["truth_mask"].any() for f in turning)
    assert all(f.image.mean() < 30 for f in turning)  # no light through the turret
    after = frames[7:]
    assert all(f.objective == "40x" and f.meta["um_per_px"] == 0.25 for f in after)
    assert [f.moving for f in after] == [True, True, True, False, False]
    assert scope.turret_position() == 5 and scope.objective == "40x"


def test_turret_position_is_none_between_positions(slide, spot):
    scope = _scope(slide, StagePath.still(*spot), turret_move_s=1.0)
    scope.set_turret_position(1)
    assert scope.turret_position() is None and scope.objective is None
    with pytest.raises(ScopeError, match="turret"):
        scope.set_objective("63x")
    with pytest.raises(ScopeError, match="position"):
        scope.set_turret_position(9)


def test_moving_flag_follows_pans_pauses_and_jumps(slide, spot):
    x, y = spot
    path = StagePath(
        [
            Waypoint(x, y, None, 0.21),
            Waypoint(x + 33, y, 300.0, 0.21),
            Waypoint(x - 500, y, None, 0.5),
        ]
    )
    scope = _scope(slide, path, settle_s=0.09)
    flags = [scope.read().moving for _ in range(30)]
    # At 30 fps: 0.21 s still (7 frames), 0.11 s pan (3), 0.21 s pause (6),
    # jump + 0.09 s settle (3), still.
    assert flags == [False] * 7 + [True] * 3 + [False] * 6 + [True] * 3 + [False] * 11


def test_random_path_pans_over_tissue(slide):
    path = StagePath.random(slide, seed=3, n_moves=20)
    ts = np.linspace(0, path.duration_s, 200)
    on_tissue = [slide.region_at(*_xy(path.state(t)))[0] > 0 for t in ts]
    assert np.mean(on_tissue) > 0.8
    assert any(path.state(t).speed_um_s > 0 for t in ts)


def _xy(st):
    return st.x_um, st.y_um


def test_stall_returns_none_then_recovers(slide, spot):
    scope = VirtualMicroscope(slide, path=StagePath.still(*spot), camera=CLEAN, tile_px=128)
    scope.open()
    assert scope.read() is not None
    scope.stall(30.0)
    assert scope.read(timeout_s=0.05) is None
    scope.stall(0.0)
    assert scope.read(timeout_s=1.0) is not None
    scope.close()


def test_unplug_raises_source_error_until_replugged(slide, spot):
    scope = _scope(slide, StagePath.still(*spot))
    scope.unplug()
    with pytest.raises(SourceError, match="unplugged"):
        scope.read()
    scope.close()
    with pytest.raises(SourceError, match="unplugged"):
        scope.open()
    scope.replug()
    scope.open()
    assert scope.read() is not None
    scope.close()
    with pytest.raises(SourceError, match="not open"):
        scope.read()
