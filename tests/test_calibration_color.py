"""Colour normalization: Reinhard in Lab moves the frame's statistics to the bundle's target."""

from __future__ import annotations

import numpy as np
import pytest
from lucida.calibration import (
    LabStats,
    MacenkoNormalizer,
    MeasurementError,
    ReinhardNormalizer,
    fit_stain_target,
    fit_target,
    lab_stats,
    normalizer_from_manifest,
)
from lucida.tools.calibrate.simulate import fallback_tissue


@pytest.fixture(scope="module")
def domains():
    rng = np.random.default_rng(5)
    train = fallback_tissue(rng, (480, 360))  # the training domain
    # the camera's domain: a different stain intensity and colour cast
    cam = np.clip(train.astype(np.float32) * (0.85, 0.95, 1.1) - 20, 0, 255).astype(np.uint8)
    return train, cam


def test_reinhard_moves_lab_statistics_to_the_target(domains):
    train, cam = domains
    target = lab_stats(train)
    before = lab_stats(cam)
    out = ReinhardNormalizer(target, momentum=0)(cam)
    after = lab_stats(out)
    d_before = np.abs(np.subtract(before.mean, target.mean)).max()
    d_after = np.abs(np.subtract(after.mean, target.mean)).max()
    assert d_before > 5 and d_after < 1.5
    assert np.allclose(after.std, target.std, rtol=0.15, atol=0.5)
    assert out.shape == cam.shape and out.dtype == np.uint8


def test_normalizer_is_chosen_per_bundle_manifest(domains):
    train, cam = domains
    t = fit_target([train])
    assert normalizer_from_manifest({"method": "none"}) is None
    assert normalizer_from_manifest(None) is None
    norm = normalizer_from_manifest(
        {"method": "reinhard", "lab_mean": list(t.mean), "lab_std": list(t.std)}
    )
    assert isinstance(norm, ReinhardNormalizer)

    class Section:  # the manifest's pydantic section works as well as a dict
        method = "reinhard"
        lab_mean = t.mean
        lab_std = t.std

    assert isinstance(normalizer_from_manifest(Section()), ReinhardNormalizer)
    with pytest.raises(MeasurementError, match="unknown colour normalization"):
        normalizer_from_manifest({"method": "vahadane"})
    with pytest.raises(MeasurementError, match="lab_std"):
        normalizer_from_manifest(
            {"method": "reinhard", "lab_mean": [50, 0, 0], "lab_std": [0, 1, 1]}
        )


def test_reinhard_smooths_source_statistics_over_frames(domains):
    train, cam = domains
    norm = ReinhardNormalizer(lab_stats(train), momentum=0.9)
    first = norm(cam)
    glass = np.full_like(cam, 235)
    glass[:60] = cam[:60]  # a field of mostly glass does not flip the colours at once
    second = norm(glass)
    assert abs(int(first[:60].mean()) - int(second[:60].mean())) < 20


def test_macenko_moves_towards_the_target(domains):
    train, cam = domains
    target = fit_stain_target(train)
    out = MacenkoNormalizer(target)(cam)
    t, b, a = lab_stats(train), lab_stats(cam), lab_stats(out)
    assert np.abs(np.subtract(a.mean, t.mean)).sum() < np.abs(np.subtract(b.mean, t.mean)).sum()


def test_lab_stats_validation():
    with pytest.raises(MeasurementError):
        lab_stats(np.zeros((10, 10), np.uint8))
    s = LabStats((50.0, 0.0, 0.0), (10.0, 5.0, 5.0))
    assert s.to_json()["lab_mean"] == [50.0, 0.0, 0.0]
