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
