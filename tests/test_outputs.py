"""Output kinds without TensorFlow: decoding raw tensors, labels files, per-class contours."""

from __future__ import annotations

import os

import numpy as np
import pytest
from lucida.models.manifest import OutputSpec, TensorQuant
from lucida.overlay.classes import ClassContours, class_styles
from lucida.overlay.contours import ContourParams
from lucida.overlay.regions import Regions
from lucida.overlay.render import ContourRenderer, LegendRenderer, RenderContext
from lucida.runtime.outputs import OutputDecoder
from lucida.runtime.quant import dequantize
from lucida.runtime.serial_protocol import ClassSwitch, parse_simple
from lucida.tools.toolchain.bundle import BundleError, read_labels


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("positives", [[3], [1, 2, 5], list(range(1, 21))])
def test_softmax_positive_set_matches_float_softmax(dtype, positives):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    raw = rng.integers(info.min, info.max + 1, (9, 7, 21)).astype(dtype)
    scale, zp = 0.11, (3 if dtype == "int8" else 130)
    dec = OutputDecoder(
        OutputSpec(kind="heatmap", channels=21, activation="softmax", positive_classes=positives),
        TensorQuant(dtype=dtype, scale=scale, zero_point=zp),
    )
    p = _softmax(dequantize(raw, scale, zp).astype(np.float64))
    probs, stack = dec.positive(raw)
    assert probs.shape == (9, 7) and probs.dtype == np.float32
    # the exp-table path equals the float64 softmax within float32 rounding
    np.testing.assert_allclose(probs, p[..., positives].sum(-1), rtol=1e-6, atol=2e-7)
    if len(positives) > 1:
        np.testing.assert_allclose(stack, p[..., positives], rtol=1e-6, atol=2e-7)
    else:
        assert stack is None
    np.testing.assert_array_equal(dec.class_index(raw), p.argmax(-1))


@pytest.mark.parametrize(
    "scale", [0.02, 0.11, 0.5, 3.0]
)  # s*255: 5, 28, 128 (float64), 765 (exact)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("positives", [[15], [1, 2, 5]])
def test_softmax_large_output_in_parallel_bands_is_exact(scale, threads, dtype, positives):
    """A DeepLab-sized row (many bands, shared by workers) gives a plain NumPy float64 softmax
    to float32 rounding, whatever the output scale: the float32 table, the float64 table, or
    the exact float fallback; for one positive class and for a positive set with its stack."""
    rng = np.random.default_rng(2)
    info = np.iinfo(dtype)
    raw = rng.integers(info.min, info.max + 1, (40, 513, 21)).astype(dtype)
    raw[:5] = rng.integers(info.min, info.min + 8, (5, 513, 21))  # far below the global bound
    raw[5:8] = info.max  # every class at the top code: uniform, 1/21 each
    zp = 3 if dtype == "int8" else 128
    dec = OutputDecoder(
        OutputSpec(kind="heatmap", channels=21, activation="softmax", positive_classes=positives),
        TensorQuant(dtype=dtype, scale=scale, zero_point=zp),
        threads=threads,
    )
    p = _softmax(dequantize(raw, scale, zp).astype(np.float64))
    probs, stack = dec.positive(raw)
    assert probs.dtype == np.float32 and probs.shape == (40, 513)
    np.testing.assert_allclose(probs, p[..., positives].sum(-1), rtol=1e-6, atol=2e-7)
    assert probs.max() <= 1.0
    if len(positives) == 1:
        assert stack is None
    else:
        assert stack.dtype == np.float32 and stack.shape == (40, 513, 3)
        np.testing.assert_allclose(stack, p[..., positives], rtol=1e-6, atol=2e-7)
    # the same decoder on a second output (per-thread scratch blocks reused) and a smaller one
    np.testing.assert_allclose(dec.positive(raw[::-1])[0], probs[::-1], rtol=1e-6, atol=0)
    small = raw[:3, :7]
    np.testing.assert_allclose(
        dec.positive(small)[0], p[:3, :7][..., positives].sum(-1), rtol=1e-6, atol=2e-7
    )


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("positives", [[15], [1, 2, 5], list(range(1, 21))])
def test_compiled_softmax_kernel_decodes_as_the_numpy_path(dtype, positives, monkeypatch):
    """The compiled kernel (where the install built it) and the NumPy path give the same
    positive map and stack for a DeepLab-sized output, to float32 rounding, over both threads."""
    from lucida.runtime import outputs

    if outputs._KERNEL is None:
        pytest.skip("no compiled softmax kernel in this install (no C compiler)")
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    raw = rng.integers(info.min, info.max + 1, (60, 513, 21)).astype(dtype)
    spec = OutputSpec(kind="heatmap", channels=21, activation="softmax", positive_classes=positives)
    quant = TensorQuant(dtype=dtype, scale=0.11, zero_point=0)
    compiled = OutputDecoder(spec, quant, threads=2)
    assert compiled.compiled
    monkeypatch.setattr(outputs, "_KERNEL", None)
    numpy_path = OutputDecoder(spec, quant, threads=2)
    assert not numpy_path.compiled
    (p1, s1), (p0, s0) = compiled.positive(raw), numpy_path.positive(raw)
    np.testing.assert_allclose(p1, p0, rtol=2e-6, atol=1e-7)
    if len(positives) > 1:
        np.testing.assert_allclose(s1, s0, rtol=2e-6, atol=1e-7)
    assert p1.max() <= 1.0


def test_make_test_builds_the_compiled_kernel_where_a_compiler_exists():
    """`make test` installs the repo with its C part: a machine with a compiler decodes softmax
    outputs in the compiled kernel (the figures in README are taken with it)."""
    import shutil

    from lucida.runtime import outputs

    if not (shutil.which("cc") or shutil.which("gcc")) or os.environ.get(outputs._KERNEL_OFF):
        pytest.skip("no C compiler here, or the kernel switched off on purpose")
    assert outputs._KERNEL is not None, "pip install -e . built no runtime/_softmax_kernel*.so"


def test_an_install_without_a_c_compiler_goes_on_without_the_kernel(tmp_path):
    """The compiled part is optional: with the compiler failing, the build still succeeds and
    ships no kernel (the decoder then runs in NumPy): a plain pip install works on any device."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-temp",
            str(tmp_path / "t"),
            "--build-lib",
            str(tmp_path / "lib"),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "CC": "false"},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "_softmax_kernel" in r.stderr  # the warning names what was left out
    assert not list((tmp_path / "lib").rglob("_softmax_kernel*"))


def test_softmax_keeps_no_reference_to_the_output_once_decoded():
    """The engine decodes the interpreter's output buffer in place, and the interpreter refuses
    to invoke while any view of it lives: after `positive` returns, nothing (a worker thread,
    a helper called off before it started) may still hold the raw output."""
    import weakref

    rng = np.random.default_rng(4)
    dec = OutputDecoder(
        OutputSpec(kind="heatmap", channels=21, activation="softmax", positive_classes=[15]),
        TensorQuant(dtype="uint8", scale=0.05, zero_point=128),
        threads=4,
    )
    for _ in range(30):
        raw = rng.integers(0, 256, (64, 513, 21)).astype(np.uint8)
        alive = weakref.ref(raw)
        probs, _ = dec.positive(raw[:, :, :])  # a view, as the engine's
        del raw
        assert alive() is None and probs.shape == (64, 513)


def test_sigmoid_classes_sum_is_clipped_and_stacked():
    raw = np.array([[[200, 200, 10]]], np.uint8)
    dec = OutputDecoder(
        OutputSpec(channels=3, activation="sigmoid", positive_classes=[0, 1]),
        TensorQuant(dtype="uint8", scale=0.1, zero_point=100),
    )
    probs, stack = dec.positive(raw)
    assert probs[0, 0] == 1.0  # two classes at 0.99995 each: ARM's sum, capped at 1
    np.testing.assert_allclose(stack[0, 0], 1 / (1 + np.exp(-10.0)), rtol=1e-6)


def test_class_map_of_any_integer_dtype():
    idx = np.array([[0, 15, 8], [15, 99, -1]], np.int64)  # 99 and -1: not classes
    dec = OutputDecoder(
        OutputSpec(kind="class_map", channels=21, positive_classes=[15, 8]),
        TensorQuant(dtype="int64"),
    )
    probs, stack = dec.positive(idx)
    np.testing.assert_array_equal(probs, [[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(stack[..., 0], [[0, 1, 0], [1, 0, 0]])  # class 15
    np.testing.assert_array_equal(dec.class_index(idx[..., None]), [[0, 15, 8], [15, 21, 21]])
    assert dec.scores(idx).shape == (2, 3, 21)


def test_manifest_refuses_what_an_output_kind_cannot_mean():
    with pytest.raises(ValueError, match="class indices"):
        OutputSpec(kind="class_map", channels=3, activation="softmax")
    with pytest.raises(ValueError, match="positive class 4"):
        OutputSpec(channels=4, positive_classes=[1, 4])
    with pytest.raises(ValueError, match="2 labels for 3 classes"):
        OutputSpec(channels=3, labels=["a", "b"])


def test_labels_files_in_both_common_formats(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("background\ncat\n\ndog  #ff8000\n")
    assert read_labels(plain, 3) == [
        {"name": "background"},
        {"name": "cat"},
        {"name": "dog", "color": [255, 128, 0]},
    ]
    indexed = tmp_path / "indexed.txt"
    indexed.write_text("0  benign\n2: GP4 #ff0000\n3 GP5\n")
    labels = read_labels(indexed, 4)
    assert [lab["name"] for lab in labels] == ["benign", "class 1", "GP4", "GP5"]
    assert labels[2]["color"] == [255, 0, 0]
    with pytest.raises(BundleError, match="3 labels, the model outputs 5 classes"):
        read_labels(plain, 5)
    with pytest.raises(BundleError, match="label index 3 but the model has 3 classes"):
        read_labels(indexed, 3)


def test_pedal_class_commands():
    assert parse_simple("CLASS GP4 OFF") == ClassSwitch("GP4", False)
    assert parse_simple("class gp3 on") == ClassSwitch("gp3", True)
    assert parse_simple("CLASS GP5") == ClassSwitch("GP5", None)
    assert parse_simple("CLASS Scarlet Macaw TOGGLE") == ClassSwitch("Scarlet Macaw", None)
    assert parse_simple("CLASS") is None


def _three_blobs():
    """A 30x30 cell stack of classes (1, 2, 3): one square of each, and the positive sum."""
    stack = np.zeros((30, 30, 3), np.float32)
    stack[2:10, 2:10, 0] = 0.9
    stack[2:10, 18:26, 1] = 0.9
    stack[18:26, 8:16, 2] = 0.6
    stack[18:26, 16:20, 1] = 0.3  # GP4 + GP3 next to each other: summed, GP5 wins the cells
    stack[18:26, 16:20, 2] = 0.35
    return stack.sum(-1), stack


def test_class_contours_follow_arm_sum_and_toggles():
    probs, stack = _three_blobs()
    affine = np.array([[4.0, 0, 1.5], [0, 4.0, 1.5]])
    cc = ClassContours(ContourParams(blur_sigma_px=0, min_area_px2=0, flicker_margin=0))
    r = cc.extract(probs, affine, None, classes=stack, class_ids=(1, 2, 3))
    assert sorted(r.class_ids) == [1, 2, 3]
    assert r.contours[r.class_ids.index(3)][:, 0].max() > 18 * 4  # GP5 owns the mixed cells
    # GP4 switched off: its square is gone, and the mixed cells (0.35 alone) fall below 0.5
    r = cc.extract(probs, affine, None, classes=stack, class_ids=(1, 2, 3), enabled=[1, 3])
    assert sorted(r.class_ids) == [1, 3]
    gp5 = r.contours[r.class_ids.index(3)]
    assert gp5[:, 0].max() < 17 * 4  # the GP5 region no longer spans the mixed cells
    assert cc.extract(probs, affine, None, classes=stack, class_ids=(1, 2, 3), enabled=[]).empty


def test_class_contours_of_a_still_field_are_the_same_regions_object():
    """A still field (noise inside the anti-flicker dead band) gives back the very Regions of the
    last frame, which the AR composer then does not redraw; a switched-off class does not."""
    probs, stack = _three_blobs()
    affine = np.array([[4.0, 0, 1.5], [0, 4.0, 1.5]])
    for classes, ids in ((stack, (1, 2, 3)), (None, (1,))):
        cc = ClassContours(ContourParams(blur_sigma_px=0, min_area_px2=0))
        first = cc.extract(probs, affine, None, classes=classes, class_ids=ids)
        noisy = None if classes is None else np.clip(stack + np.float32(0.02), 0, 1)
        again = cc.extract(probs + np.float32(0.02), affine, None, classes=noisy, class_ids=ids)
        assert again is first and not first.empty
    off = cc.extract(probs, affine, None, classes=None, class_ids=(1,), enabled=[])
    assert off is not first and off.empty
    assert cc.extract(probs, affine, None, classes=None, class_ids=(1,)) is not first  # reset


def test_each_class_is_drawn_in_its_colour_with_a_legend():
    probs, stack = _three_blobs()
    affine = np.array([[4.0, 0, 1.5], [0, 4.0, 1.5]])
    cc = ClassContours(ContourParams(blur_sigma_px=0, min_area_px2=0, flicker_margin=0))
    regions = cc.extract(probs, affine, None, classes=stack, class_ids=(1, 2, 3))
    names = ["benign", "GP3", "GP4", "GP5"]
    colors = [None, (255, 255, 0), (255, 128, 0), (255, 0, 0)]
    styles = class_styles([1, 2, 3], names, colors, off=["GP4"])
    assert [s.on for s in styles] == [True, False, True]
    canvas = np.zeros((120, 160, 3), np.uint8)
    ctx = RenderContext(classes=styles)
    ContourRenderer(width_px=2).annotate(canvas, regions, ctx)
    seen = {tuple(c) for c in canvas.reshape(-1, 3)}
    assert {(255, 255, 0), (255, 128, 0), (255, 0, 0)} <= seen
    assert (0, 255, 0) not in seen  # the single-class colour is not used
    legend = LegendRenderer().annotate(np.zeros((120, 160, 3), np.uint8), Regions(), ctx)
    assert (legend == (255, 255, 0)).all(-1).any() and (legend == (128, 128, 128)).all(-1).any()
