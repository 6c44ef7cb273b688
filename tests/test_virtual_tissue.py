"""The synthetic H&E slide: seeded, scale-consistent, with a mask that matches the tissue."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from lucida.runtime.virtual.nuclei import GLAND, LYMPH, TUMOUR
from lucida.runtime.virtual.tissue import SyntheticSlide, TissueError

SIZE = (3000.0, 2500.0)  # small slides: quick to build


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return SyntheticSlide(11, SIZE)


def _boundary_view(slide: SyntheticSlide, seed: int, w: int, h: int, s: float):
    x, y = slide.random_point(np.random.default_rng(seed), "boundary")
    return x - w * s / 2, y - h * s / 2


def test_same_seed_same_pixels_whatever_was_rendered_before():
    a = SyntheticSlide(5, SIZE)
    b = SyntheticSlide(5, SIZE)
    b.render(100.0, 200.0, 300, 300, 1.0)  # fills b's caches with other cells and scales
    b.render(1400.0, 1100.0, 200, 100, 0.25)
    for s in (0.5, 1.0, 3.0):
        x, y = _boundary_view(a, 0, 240, 160, s)
        rgb_a, mask_a = a.render(x, y, 240, 160, s)
        rgb_b, mask_b = b.render(x, y, 240, 160, s)
        assert np.array_equal(rgb_a, rgb_b)
        assert np.array_equal(mask_a, mask_b)
        assert mask_a.any() and not mask_a.all()


def test_different_seeds_give_different_slides():
    a, b = SyntheticSlide(1, SIZE), SyntheticSlide(2, SIZE)
    rgb_a, mask_a = a.render(0, 0, 300, 250, 10.0)
    rgb_b, mask_b = b.render(0, 0, 300, 250, 10.0)
    assert np.abs(rgb_a.astype(int) - rgb_b.astype(int)).mean() > 10
    assert (mask_a != mask_b).mean() > 0.02


def test_beyond_the_slide_is_blank_glass(slide):
    rgb, mask = slide.render(-5000.0, -5000.0, 64, 64, 2.0)
    assert rgb.min() > 190 and rgb.std(axis=(0, 1)).max() < 2
    assert not mask.any()


def test_mask_is_tumour_tissue_only(slide):
    rgb, mask = slide.render(0.0, 0.0, 600, 500, 5.0)  # the whole slide
    assert 0.02 < mask.mean() < 0.5
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    glass = grey > np.percentile(grey, 99)
    assert not (mask & glass).any()
    # Pixel centres classified by the point sampler agree with the rendered mask.
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 500, 400), rng.integers(0, 600, 400)
    region = slide.region_at((j + 0.5) * 5.0, (i + 0.5) * 5.0)
    assert np.mean((region == 2) == mask[i, j]) > 0.99
    assert np.array_equal(slide.truth_mask(0.0, 0.0, 600, 500, 5.0), mask)


def test_mask_agrees_across_scales(slide):
    x, y = _boundary_view(slide, 1, 200, 200, 4.0)
    _, coarse = slide.render(x, y, 200, 200, 4.0)
    _, fine = slide.render(x, y, 800, 800, 1.0)
    down = cv2.resize(fine.astype(np.float32), (200, 200), interpolation=cv2.INTER_AREA) > 0.5
    assert 0.05 < coarse.mean() < 0.95
    assert np.mean(down == coarse) > 0.98


def test_tumour_nuclei_lie_in_the_mask_and_lymphocytes_outside(slide):
    s = 0.5
    x, y = _boundary_view(slide, 2, 512, 512, s)
    rgb, mask = slide.render(x, y, 512, 512, s)
    nuc = slide.nuclei_in(x, y, x + 512 * s, y + 512 * s)
    col = ((nuc.xy[:, 0] - x) / s).astype(int)
    row = ((nuc.xy[:, 1] - y) / s).astype(int)
    inside = (col >= 0) & (col < 512) & (row >= 0) & (row < 512)
    kinds, col, row = nuc.kind[inside], col[inside], row[inside]
    tumour_kind = np.isin(kinds, (TUMOUR, GLAND))
    assert tumour_kind.sum() > 20 and (kinds == LYMPH).sum() > 50
    assert mask[row[tumour_kind], col[tumour_kind]].all()
    assert not mask[row[kinds == LYMPH], col[kinds == LYMPH]].any()
    # Drawn where they are: nucleus centres are darker than the tissue around them.
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(float)
    tissue = grey < 225
    assert grey[row, col].mean() < grey[tissue].mean() - 20


@pytest.mark.parametrize("seed", [0, 3, 6])
def test_tumour_nuclei_are_bigger_than_lymphocytes_in_the_pixels(seed):
    """Granulometry: dark blobs that survive an opening with a 4.6 um disk (bigger than a
    lymphocyte, smaller than a tumour nucleus) are mostly inside the mask."""
    slide = SyntheticSlide(seed, SIZE)
    s = 0.5
    x, y = _boundary_view(slide, 1, 512, 512, s)
    rgb, mask = slide.render(x, y, 512, 512, s)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    tissue = grey < 225
    thr, _ = cv2.threshold(grey[tissue].reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = ((grey < thr) & tissue).astype(np.uint8)
    r = int(round(4.6 / s))
    opened = cv2.morphologyEx(
        dark, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)
    )
    kept_in = opened[mask].sum() / dark[mask].sum()
    kept_out = opened[~mask].sum() / dark[~mask].sum()
    assert kept_in > 3 * kept_out


def test_mean_colour_alone_does_not_separate_tumour_across_slides():
    """Stain and scanner variation between slides exceeds the tumour/normal colour difference
    within a slide, so a colour rule learnt on one slide fails on another."""
    tumour, normal = [], []
    for seed in range(8):
        slide = SyntheticSlide(seed, SIZE)
        x, y = _boundary_view(slide, 0, 256, 256, 2.0)
        rgb, mask = slide.render(x, y, 256, 256, 2.0)
        px = rgb.reshape(-1, 3).astype(float)
        m = mask.ravel()
        tissue = px.mean(1) < 225
        tumour.append(px[m].mean(0))
        normal.append(px[~m & tissue].mean(0))
    tumour, normal = np.array(tumour), np.array(normal)
    within = np.linalg.norm(tumour - normal, axis=1)
    across = np.linalg.norm(normal[:, None] - normal[None, :], axis=2)
    assert within.max() > 5  # there is a (small) colour difference within a slide
    assert across.max() > 1.5 * within.max()
    # The nearest of the pooled tumour / normal mean colours misclassifies some slides.
    t0, n0 = tumour.mean(0), normal.mean(0)
    wrong = sum(np.linalg.norm(t - t0) > np.linalg.norm(t - n0) for t in tumour)
    wrong += sum(np.linalg.norm(n - n0) > np.linalg.norm(n - t0) for n in normal)
    assert wrong >= 2


@pytest.mark.parametrize(
    "args",
    [(0, 0, 0, 10, 1.0), (0, 0, 10, 10, 0.0), (0, 0, 10, 99999, 1.0), (0, 0, 1.5, 10, 1.0)],
)
def test_bad_render_requests_say_what_is_wrong(slide, args):
    with pytest.raises(TissueError, match="render"):
        slide.render(*args)


def test_bad_slide_settings_are_value_errors():
    with pytest.raises(ValueError, match="seed"):
        SyntheticSlide(-1)
    with pytest.raises(ValueError, match="size_um"):
        SyntheticSlide(1, (10.0, 10.0))
    with pytest.raises(ValueError, match="where"):
        SyntheticSlide(1, SIZE).random_point(np.random.default_rng(0), "lung")
