"""Pixel size from stage micrometer images: any rotation, pitch, blur, noise, uneven light."""

from __future__ import annotations

import numpy as np
import pytest
from lucida.calibration import MeasurementError, measure_pixel_size
from lucida.tools.calibrate.simulate import micrometer_image


@pytest.mark.parametrize("seed", [0, 3, 4, 11])  # includes 7 px and 61 px pitches
def test_pixel_size_within_half_a_percent(seed):
    m = micrometer_image(seed)
    r = measure_pixel_size(m.image, spacing_um=10.0)
    true_um = 10.0 / m.period_px
    assert abs(r.um_per_px / true_um - 1) <= 0.005
    assert 0 < r.um_per_px_uncertainty < 0.005 * r.um_per_px
    assert r.lines >= 8


def test_bright_rulings_on_dark_field():
    m = micrometer_image(7, size=(800, 600))
    inverted = 255 - m.image
    r = measure_pixel_size(inverted, spacing_um=10.0)
    assert abs(r.period_px / m.period_px - 1) <= 0.005


def test_longer_every_fifth_tick_does_not_fool_the_pitch():
    """A pitch whose every-5th tick is longer: the answer is the pitch, not 5x it."""
    m = micrometer_image(21, size=(960, 720), period_px=9.0)
    r = measure_pixel_size(m.image, spacing_um=10.0)
    assert r.period_px == pytest.approx(9.0, rel=0.005)
    assert r.um_per_px == pytest.approx(10.0 / 9.0, rel=0.005)


def test_no_rulings_is_a_clear_error():
    from lucida.tools.calibrate.simulate import fallback_tissue

    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(128, 20, (300, 400, 3)), 0, 255).astype(np.uint8)
    with pytest.raises(MeasurementError, match="blank"):
        measure_pixel_size(np.full((300, 400, 3), 180, np.uint8), spacing_um=10.0)
    for img in (noise, fallback_tissue(rng, (640, 480))):
        with pytest.raises(MeasurementError, match="no clear periodic ruling"):
            measure_pixel_size(img, spacing_um=10.0)
    with pytest.raises(MeasurementError, match="spacing"):
        measure_pixel_size(noise, spacing_um=0)


@pytest.mark.parametrize(
    "seed,kw",
    [
        (101, dict(numbers=True, jpeg_quality=40, light_tilt=0.6)),
        (102, dict(thin=True, period_px=11.0)),  # 1.2 px lines: strong harmonics
        (103, dict(bits=12)),  # 12-bit camera data in a 16-bit image
        (104, dict(jpeg_quality=30, period_px=6.5)),
    ],
)
def test_hard_rulings_measured_or_refused_never_wrong(seed, kw):
    """Numbers on the scale, JPEG, uneven light, sharp lines, 12-bit data: the pitch is
    found (within 0.5 %), and the stated uncertainty covers the error."""
    m = micrometer_image(seed, size=(800, 600), **kw)
    r = measure_pixel_size(m.image, spacing_um=10.0)
    err = abs(r.period_px / m.period_px - 1)
    assert err <= 0.005
    assert err <= 5 * r.um_per_px_uncertainty / r.um_per_px + 1e-4


def test_twelve_bit_data_is_read_at_its_own_depth(tmp_path):
    """A 16-bit PNG holding 12-bit values is measured on all its levels."""
    import cv2
    from lucida.calibration.imageio import read_gray_native

    m = micrometer_image(105, size=(800, 600), bits=12)
    path = tmp_path / "m16.png"
    cv2.imwrite(str(path), m.image)
    g = read_gray_native(path)
    assert g.max() > 1000  # not divided down to 8 bits
    r = measure_pixel_size(g, spacing_um=10.0)
    assert r.period_px == pytest.approx(m.period_px, rel=0.005)


def _chessboard(square=24, size=(640, 480), angle=12.0):
    import cv2

    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    board = (((x // square) + (y // square)) % 2 * 170 + 40).astype(np.uint8)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    board = cv2.warpAffine(board, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    return cv2.cvtColor(cv2.GaussianBlur(board, (0, 0), 1.0), cv2.COLOR_GRAY2RGB)


def test_non_rulings_are_refused_with_their_own_error():
    from lucida.calibration import RefusedInputError
    from lucida.tools.calibrate.simulate import fallback_tissue

    rng = np.random.default_rng(1)
    cases = {
        "blank": np.full((300, 400, 3), 200, np.uint8),
        "black": np.clip(rng.normal(2, 1, (300, 400, 3)), 0, 255).astype(np.uint8),
        "noise": np.clip(rng.normal(128, 30, (300, 400, 3)), 0, 255).astype(np.uint8),
        "tissue": fallback_tissue(rng, (640, 480)),
        "chessboard": _chessboard(),
    }
    for name, img in cases.items():
        with pytest.raises(RefusedInputError) as exc:
            measure_pixel_size(img, spacing_um=10.0)
        assert exc.value.exit_code == 10, name
        assert "\n" not in str(exc.value)


def test_real_micrometer_photo_within_half_a_percent():
    """swharden's 10 um micrometer photo: 688.33 px over 89 divisions = 1.293 um/px."""
    from lucida.calibration.imageio import read_gray_native
    from realdata import real

    r = measure_pixel_size(read_gray_native(real("micrometer", "swharden_cal10.png")), 10.0)
    assert r.um_per_px == pytest.approx(10 * 89 / 688.33, rel=0.005)
    assert r.lines >= 80


@pytest.mark.parametrize(
    "name", ["charuco/cvcontrib_img_00.jpg", "he/tia_glands.png", "he/henorm_example1.png"]
)
def test_real_non_rulings_refused_by_the_cli(name, capsys):
    from lucida.tools.cli import main
    from realdata import real

    path = real(*name.split("/"))
    assert main(["calibrate", "pixel-size", "--image", str(path), "--spacing-um", "10"]) == 10
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ruling" in err
