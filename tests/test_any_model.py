"""Anyone's model, end to end: a 1000-class classifier, a DeepLab-style ArgMax segmenter and a
4-class Gleason-style heatmap, each built here with TensorFlow, bundled from the bare .tflite
with flags, run by `lucida infer` and by the daemon, and checked against the float Keras model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import daemon_config
from lucida.models import load_bundle
from lucida.tools.cli import main

pytestmark = pytest.mark.tf
GLEASON = "0 benign\n1 GP3 #ffff00\n2 GP4 #ff8000\n3 GP5 #ff0000\n"
COLOURS = {"GP3": (255, 255, 0), "GP4": (255, 128, 0), "GP5": (255, 0, 0)}


def _noise(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3)).astype(np.float32) for _ in range(n)]


def _tinted(n, h, w, seed):
    """Photos stand-ins: a random colour with noise (RGB uint8), so classes differ by image."""
    rng = np.random.default_rng(seed)
    return [
        np.clip(
            rng.integers(0, 256, (1, 1, 3)) * 0.8 + rng.normal(0, 30, (h, w, 3)), 0, 255
        ).astype(np.uint8)
        for _ in range(n)
    ]


def _lucida(capsys, *argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def gleason_scene(w=128, h=96) -> np.ndarray:
    """White glass with a green (GP3), a blue (GP4) and a red (GP5) patch, RGB uint8."""
    img = np.full((h, w, 3), 255, np.uint8)
    img[8:40, 8:40] = (0, 200, 0)
    img[8:40, 80:120] = (0, 0, 200)
    img[56:90, 40:88] = (200, 0, 0)
    return img


def _seg_scene(seed=0, size=129) -> np.ndarray:
    """Blocks of colour with some noise, RGB uint8: regions a segmenter splits cleanly."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(
        rng.integers(0, 256, (4, 4, 3), np.uint8), (size, size), interpolation=cv2.INTER_NEAREST
    )
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def gleason_net(size=64):
    """4 classes per 4x4 px cell from colour alone: white benign, green GP3, blue GP4, red GP5."""
    import keras
    from keras import layers

    x = inp = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255)(x)
    x = layers.AveragePooling2D(4)(x)
    conv = layers.Conv2D(4, 1)
    x = layers.Softmax()(conv(x))
    model = keras.Model(inp, x)
    w = (
        np.array(  # rows r, g, b; columns benign, GP3, GP4, GP5
            [[6, -6, -6, 6], [6, 6, -6, -6], [6, -6, 6, -6]], np.float32
        )
        * 1.5
    )
    conv.set_weights([w[None, None], np.array([-18, 0, 0, 0], np.float32)])
    return model


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """The three models as bare .tflite files (and their float Keras twins)."""
    from lucida.tools.demo.tiny_models import tiny_classifier, tiny_segmenter
    from lucida.tools.toolchain.convert import quantize_keras

    d = tmp_path_factory.mktemp("any-model")
    out = {"dir": d}
    cls = tiny_classifier(96, 1000)
    calib = [x.astype(np.float32) for x in _tinted(16, 96, 96, seed=1)]
    (d / "cls.tflite").write_bytes(quantize_keras(cls, calib))
    seg = tiny_segmenter(129, 21)
    calib = [x.astype(np.float32) for x in _tinted(8, 129, 129, seed=3)] + [
        _seg_scene(seed).astype(np.float32) for seed in range(4)
    ]
    (d / "seg.tflite").write_bytes(quantize_keras(seg, calib))
    gl = gleason_net(64)
    scene = gleason_scene().astype(np.float32)
    calib = [scene[:64, :64], scene[32:96, 64:128], scene[:64, 60:124]] + _noise(4, 64)
    (d / "gleason.tflite").write_bytes(quantize_keras(gl, calib))
    (d / "gleason.txt").write_text(GLEASON)
    (d / "cls.txt").write_text("".join(f"species {k}\n" for k in range(1000)))
    voc = [
        "background",
        *(f"voc{k}" for k in range(1, 15)),
        "person",
        *(f"voc{k}" for k in range(16, 21)),
    ]
    (d / "voc.txt").write_text("\n".join(voc) + "\n")
    out.update(cls=cls, seg=seg, gleason=gl)
    return out


def test_classifier_bundles_from_a_bare_tflite_and_infers_like_keras(made, capsys, tmp_path):
    d = made["dir"]
    text = _lucida(
        capsys,
        "bundle",
        "--cpu",
        d / "cls.tflite",
        "--labels",
        d / "cls.txt",
        "--name",
        "cls",
        "--task",
        "test",
        "--objectives",
        "10x",
        "--out",
        tmp_path / "cls",
    )
    assert "kind class_scores" in text and "activation none (the output comes from SOFTMAX)" in text
    m = load_bundle(tmp_path / "cls").manifest
    assert m.output.kind == "class_scores" and m.output.channels == 1000
    assert m.output.labels[7].name == "species 7"
    agree = 0
    for i, img in enumerate(_tinted(4, 120, 150, seed=5)):
        png = _write_png(tmp_path / f"img{i}.png", img)
        res = json.loads(_lucida(capsys, "infer", tmp_path / "cls", png, "--json", "--top-k", 3))
        x = cv2.resize(img, (96, 96), interpolation=cv2.INTER_AREA).astype(np.float32)
        p = np.asarray(made["cls"](x[None]))[0]
        top = res["top"][0]
        assert top["label"] == f"species {top['index']}" and len(res["top"]) == 3
        assert abs(top["score"] - p[top["index"]]) < 0.1  # int8 vs float on the same input
        agree += top["index"] == int(np.argmax(p))
    assert agree >= 3  # the int8 model's top-1 is the float model's (ties may flip one)


def test_classifier_patch_map_over_tiles_through_infer(made, capsys, tmp_path):
    """`lucida infer --tiles`: the classifier over a 2 x 3 tile frame at the bundle's stride, as
    the daemon runs it: each tile's top class and score are those of the same tile classified
    alone (plain LiteRT on the int8 model), near the float Keras model's, and the patch-map PNG
    shows each tile in its class's colour."""
    from ai_edge_litert.interpreter import Interpreter
    from lucida.tools.toolchain.infer import class_palette

    d = made["dir"]
    b = tmp_path / "cls"
    _lucida(capsys, "bundle", "--cpu", d / "cls.tflite", "--labels", d / "cls.txt",
            "--tile-stride", 96, "--name", "cls", "--task", "test", "--objectives", "10x",
            "--out", b)  # fmt: skip
    tiles = _tinted(6, 96, 96, seed=21)
    frame = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], 1)])
    png = _write_png(tmp_path / "frame.png", frame)
    res = json.loads(_lucida(capsys, "infer", b, png, "--tiles", "--json", "--out", tmp_path / "o"))
    t = res["tiles"]
    assert t["grid"] == [2, 3] and t["tile_px"] == [96, 96] and t["stride_px"] == [96, 96]
    it = Interpreter(str(d / "cls.tflite"))
    it.allocate_tensors()
    (i,), (o,) = it.get_input_details(), it.get_output_details()
    pal = class_palette(load_bundle(b).manifest)
    pic = cv2.cvtColor(cv2.imread(res["class_map_png"]), cv2.COLOR_BGR2RGB)
    assert pic.shape == frame.shape
    for n, tile in enumerate(tiles):
        got = t["top"][n // 3][n % 3]
        it.set_tensor(i["index"], tile[None])
        it.invoke()
        codes = it.get_tensor(o["index"])[0]
        scale, zp = o["quantization"]
        assert got["index"] == int(np.argmax(codes)) and got["label"] == f"species {got['index']}"
        assert got["score"] == pytest.approx(scale * (int(codes.max()) - zp), abs=1e-6)
        p = np.asarray(made["cls"](tile[None].astype(np.float32)))[0]
        assert abs(got["score"] - p[got["index"]]) < 0.1  # int8 vs float on the same tile
        y, x = 96 * (n // 3), 96 * (n % 3)
        assert (pic[y + 8 : y + 88, x + 8 : x + 88] == pal[got["index"]]).all()
    fractions = {a["index"]: a["fraction"] for a in res["areas"] if a["fraction"] > 0}
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert set(fractions) == {c["index"] for row in t["top"] for c in row}
    # without --tiles: the whole image resized, top-k (pycoral's classify)
    assert "top" in json.loads(_lucida(capsys, "infer", b, png, "--json"))


def test_segmenter_class_map_through_infer(made, capsys, tmp_path):
    d = made["dir"]
    text = _lucida(
        capsys,
        "bundle",
        "--cpu",
        d / "seg.tflite",
        "--labels",
        d / "voc.txt",
        "--positive",
        "person",
        "--name",
        "seg",
        "--task",
        "test",
        "--objectives",
        "10x",
        "--out",
        tmp_path / "seg",
    )
    assert "kind class_map (from the output shape [1, 129, 129] int64)" in text
    b = load_bundle(tmp_path / "seg")
    assert b.manifest.quantization.output.dtype == "int64"
    assert b.manifest.output.positives == [15] and b.manifest.golden.max_mismatch is not None
    img = cv2.GaussianBlur(
        np.random.default_rng(2).integers(0, 256, (129, 129, 3), np.uint8), (0, 0), 3
    )
    png = _write_png(tmp_path / "scene.png", img)
    res = json.loads(
        _lucida(capsys, "infer", tmp_path / "seg", png, "--json", "--out", tmp_path / "o")
    )
    want = np.asarray(made["seg"](img[None].astype(np.float32)))[0]
    pic = cv2.cvtColor(cv2.imread(res["class_map_png"]), cv2.COLOR_BGR2RGB)
    assert pic.shape == (129, 129, 3)
    from lucida.tools.toolchain.infer import class_palette

    pal = class_palette(b.manifest)
    got = np.argmin(np.abs(pic[:, :, None, :].astype(int) - pal[None, None]).sum(-1), axis=-1)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(d / "seg.tflite"))  # plain LiteRT on the same input
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], img[None])
    it.invoke()
    np.testing.assert_array_equal(got, it.get_tensor(it.get_output_details()[0]["index"])[0])
    # random weights leave near-ties between class logits: int8 and float differ at some
    assert np.mean(got == want) > 0.8
    fractions = {a["label"]: a["fraction"] for a in res["areas"]}
    for k, name in enumerate(b.manifest.output.label(k) for k in range(21)):
        assert abs(fractions[name] - np.mean(want == k)) < 0.1
    assert abs(sum(fractions.values()) - 1.0) < 1e-6
    # a bigger frame is tiled and stitched: one class per frame px cell
    big = _write_png(tmp_path / "big.png", cv2.resize(img, (300, 200)))
    res = json.loads(
        _lucida(capsys, "infer", tmp_path / "seg", big, "--json", "--out", tmp_path / "o")
    )
    assert cv2.imread(res["class_map_png"]).shape == (200, 300, 3)


@pytest.fixture()
def gleason_bundle(made, capsys, tmp_path):
    d = made["dir"]
    text = _lucida(
        capsys,
        "bundle",
        "--cpu",
        d / "gleason.tflite",
        "--labels",
        d / "gleason.txt",
        "--positive",
        "GP3,GP4,GP5",
        "--um-per-px",
        1.0,
        "--name",
        "gleason",
        "--task",
        "test",
        "--objectives",
        "10x",
        "--out",
        tmp_path / "bundles" / "gleason",
    )
    assert "activation none (the output comes from SOFTMAX)" in text
    from lucida.models.bundle import update_manifest

    update_manifest(
        tmp_path / "bundles" / "gleason",
        contours={"blur_sigma_px": 2.0, "min_area_um2": 50.0, "flicker_margin": 0.0},
    )
    return load_bundle(tmp_path / "bundles" / "gleason")


def test_gleason_heatmap_matches_keras_per_class(made, gleason_bundle):
    from lucida.runtime.engine import Engine

    engine = Engine(gleason_bundle, device="cpu", num_threads=1)
    scene = gleason_scene()
    hm = engine.infer(scene, um_per_px=1.0)
    assert hm.class_ids == (1, 2, 3) and hm.classes.shape == (*hm.probs.shape, 3)
    tile = scene[:64, :64]
    p = np.asarray(made["gleason"](tile[None].astype(np.float32)))[0]
    probs, classes = engine.infer_tile_classes(tile)
    np.testing.assert_allclose(classes, p[..., 1:], atol=0.03)
    np.testing.assert_allclose(probs, p[..., 1:].sum(-1), atol=0.03)
    # the pipeline's path: every tile's input tensor made ahead gives the same per-class stack
    x = engine.resample(scene, 1.0)
    ahead = engine.infer_input(engine.input_tensors(x))
    np.testing.assert_array_equal(ahead.classes, engine.infer_input(x).classes)
    np.testing.assert_array_equal(ahead.probs, hm.probs)


class CanvasSink:
    name = "canvas"

    def __init__(self):
        self.last = None

    def open(self):
        pass

    def show(self, canvas, t_capture_ns=None):
        if canvas.any():
            self.last = canvas.copy()

    def close(self):
        pass


def _colours(canvas) -> set:
    found = set()
    for name, c in COLOURS.items():
        if (canvas == c).all(-1).sum() > 5:
            found.add(name)
    return found


def test_daemon_draws_each_class_in_its_colour_and_switches_them(gleason_bundle, tmp_path):
    from lucida.runtime.config import parse_config
    from lucida.runtime.daemon import Daemon
    from test_daemon import TOKEN, call, wait_for

    frames = tmp_path / "frames"
    frames.mkdir()
    _write_png(frames / "0.png", gleason_scene())
    source = {"type": "replay", "path": str(frames), "fps": 20.0, "width": 128, "height": 96}
    cfg = parse_config(daemon_config(tmp_path, gleason_bundle, source, TOKEN))
    daemon = Daemon(cfg)
    sink = CanvasSink()
    daemon.pipeline.ar_sinks.append(sink)
    daemon.pipeline.set_objective("10x")
    daemon.start()
    try:
        assert wait_for(lambda: sink.last is not None and len(_colours(sink.last)) == 3, 20)
        code, body = call(daemon, "POST", "/overlay", {"classes": {"GP4": False}})
        assert code == 200
        assert [c["on"] for c in body["classes"]] == [True, False, True]
        time.sleep(0.3)
        sink.last = None
        assert wait_for(lambda: sink.last is not None and _colours(sink.last) == {"GP3", "GP5"}, 20)
        saved = json.loads((tmp_path / "state" / "settings.json").read_text())
        assert saved["classes_off"] == ["GP4"]
        code, body = call(daemon, "POST", "/overlay", {"classes": {"GP7": True}})
        assert code == 400 and "GP7" in json.dumps(body)
    finally:
        daemon.stop()
    again = Daemon(cfg)  # persisted like the threshold
    again.start()
    try:
        assert again.pipeline.classes_off == {"GP4"}
    finally:
        again.stop()


def _overlay_px(canvas: np.ndarray) -> np.ndarray:
    """The coloured (contour) px of an eyepiece canvas, without the grey status line and scale."""
    c = canvas.astype(np.int16)
    return (c.max(-1) - c.min(-1)) > 100


def _daemon_canvas(bundle, frame: np.ndarray, tmp_path: Path) -> np.ndarray:
    """Run the daemon (HTTP on loopback, a replay source of `frame`) until the eyepiece sink
    shows an overlay; returns that canvas (RGB, the frame's size)."""
    from lucida.runtime.config import parse_config
    from lucida.runtime.daemon import Daemon
    from test_daemon import TOKEN, wait_for

    frames = tmp_path / "frames"
    frames.mkdir()
    _write_png(frames / "0.png", frame)
    h, w = frame.shape[:2]
    source = {"type": "replay", "path": str(frames), "fps": 20.0, "width": w, "height": h}
    daemon = Daemon(parse_config(daemon_config(tmp_path, bundle, source, TOKEN)))
    sink = CanvasSink()
    daemon.pipeline.ar_sinks.append(sink)
    daemon.pipeline.set_objective("10x")
    daemon.start()
    try:
        assert wait_for(lambda: sink.last is not None, 20), "the daemon drew nothing"
        time.sleep(0.3)  # a few more frames: the overlay is steady on a still scene
        return sink.last
    finally:
        daemon.stop()


def _bundle_for_display(capsys, tflite, out: Path, *flags) -> object:
    """`lucida bundle` a bare .tflite at 1 um/px, with contours fine enough for small frames."""
    from lucida.models.bundle import update_manifest

    _lucida(
        capsys,
        "bundle",
        "--cpu",
        tflite,
        *flags,
        "--um-per-px",
        1.0,
        "--name",
        out.name,
        "--task",
        "test",
        "--objectives",
        "10x",
        "--out",
        out,
    )
    update_manifest(
        out, contours={"blur_sigma_px": 1.0, "min_area_um2": 20.0, "flicker_margin": 0.0}
    )
    return load_bundle(out)


def test_daemon_outlines_the_segmenters_positive_class(made, capsys, tmp_path):
    """bundle -> daemon: the ArgMax class map's positive class (as plain LiteRT computes it on
    the same frame) is outlined on the eyepiece, and nothing is drawn away from its edge."""
    from ai_edge_litert.interpreter import Interpreter

    d = made["dir"]
    it = Interpreter(str(d / "seg.tflite"))
    it.allocate_tensors()
    for seed in range(20):  # random weights: the first scene where one class covers a part
        scene = _seg_scene(seed=seed)
        it.set_tensor(it.get_input_details()[0]["index"], scene[None])
        it.invoke()
        want = it.get_tensor(it.get_output_details()[0]["index"])[0]
        frac = np.bincount(want.ravel(), minlength=21) / want.size
        cls = int(np.argmin(np.abs(frac - 0.3)))
        if 0.1 < frac[cls] < 0.7:
            break
    assert 0.1 < frac[cls] < 0.7, "no scene with a class covering part of the frame"
    keras_map = np.argmax(np.asarray(made["seg"](scene[None].astype(np.float32)))[0], -1)
    assert np.mean((keras_map == cls) == (want == cls)) > 0.8  # int8 vs float, same input
    b = _bundle_for_display(
        capsys,
        d / "seg.tflite",
        tmp_path / "b" / "seg",
        "--labels",
        d / "voc.txt",
        "--positive",
        str(cls),
    )
    assert b.manifest.output.kind == "class_map" and b.manifest.output.positives == [cls]
    canvas = _daemon_canvas(b, scene, tmp_path)
    drawn = _overlay_px(canvas)
    mask = (want == cls).astype(np.uint8)
    edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    dist = cv2.distanceTransform(1 - edge, cv2.DIST_L2, 3)  # px to the class's edge
    assert drawn.sum() > 0.3 * edge.sum()  # the outline is there ...
    assert np.percentile(dist[drawn], 95) <= 4.0  # ... on the class's edge, not elsewhere


def test_daemon_draws_the_classifiers_positive_tiles(made, capsys, tmp_path):
    """bundle -> daemon: a 1000-class patch classifier over a two-tile frame. The positive set
    (ARM's rule: their probabilities summed) is every class the float Keras model scores higher
    on the left tile than on the right one, so it holds the left tile's top class; the overlay
    is a region over the left tile and nothing over the right one."""
    d = made["dir"]
    left, right = _tinted(2, 96, 96, seed=11)
    p_left, p_right = (
        np.asarray(made["cls"](t[None].astype(np.float32)))[0] for t in (left, right)
    )
    pos = np.flatnonzero(p_left > p_right)
    top = int(np.argmax(p_left))
    assert top in pos and int(np.argmax(p_right)) not in pos
    assert p_left[pos].sum() > 0.7 and p_right[pos].sum() < 0.3  # far from the 0.5 threshold
    b = _bundle_for_display(
        capsys,
        d / "cls.tflite",
        tmp_path / "b" / "cls",
        "--labels",
        d / "cls.txt",
        "--positive",
        ",".join(str(k) for k in pos),
        "--tile-stride",
        96,
    )
    assert b.manifest.output.kind == "class_scores" and b.manifest.output.positives == list(pos)
    canvas = _daemon_canvas(b, np.concatenate([left, right], axis=1), tmp_path)
    ys, xs = np.nonzero(_overlay_px(canvas))
    assert len(xs) > 50  # a region is drawn (inside the eyepiece's round field stop) ...
    assert 88 <= xs.max() <= 96 + 8  # ... whose right edge is the tiles' border (the outline's
    # width and the interpolation between tile centres spill a few px): none over the right tile
