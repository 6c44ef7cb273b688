"""The inference engine: backends, the Edge TPU delegate path, quantization, tiling, health."""

from __future__ import annotations

import shutil
import sys
import types

import numpy as np
import pytest
from lucida.models import load_bundle, write_bundle
from lucida.runtime import backends
from lucida.runtime.backends import BackendError, select_backend
from lucida.runtime.edgetpu import list_edge_tpus
from lucida.runtime.engine import Engine, EngineError, HealthCheckError
from lucida.runtime.quant import dequantize, input_lut, is_identity, quantize


# -- backend chain ---------------------------------------------------------------------------------
def _block(monkeypatch, *modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # makes `import m` raise ImportError


def _fake_tflite_runtime(monkeypatch):
    pkg = types.ModuleType("tflite_runtime")
    mod = types.ModuleType("tflite_runtime.interpreter")
    mod.Interpreter = object
    mod.load_delegate = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "tflite_runtime", pkg)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", mod)


def test_litert_is_first_choice(monkeypatch):
    monkeypatch.delenv("LUCIDA_BACKEND", raising=False)
    assert select_backend().name == "ai_edge_litert"


def test_falls_back_to_tflite_runtime_then_tensorflow(monkeypatch):
    monkeypatch.delenv("LUCIDA_BACKEND", raising=False)
    _block(monkeypatch, "ai_edge_litert", "ai_edge_litert.interpreter")
    _fake_tflite_runtime(monkeypatch)
    assert select_backend().name == "tflite_runtime"
    _block(monkeypatch, "tflite_runtime", "tflite_runtime.interpreter")
    assert select_backend().name == "tensorflow"


def test_no_backend_names_every_try(monkeypatch):
    monkeypatch.delenv("LUCIDA_BACKEND", raising=False)
    _block(monkeypatch, "ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow")
    with pytest.raises(BackendError) as e:
        select_backend()
    for name, *_ in backends.BACKEND_ORDER:
        assert name in str(e.value)


def test_backend_override_by_argument_and_environment(monkeypatch):
    monkeypatch.setenv("LUCIDA_BACKEND", "tensorflow")
    assert select_backend().name == "tensorflow"
    assert select_backend("ai_edge_litert").name == "ai_edge_litert"
    with pytest.raises(BackendError, match="unknown backend 'tflite'"):
        select_backend("tflite")


def test_tensorflow_backend_gives_the_same_heatmap(tiny_bundle):
    x = tiny_bundle.golden()[0]
    a = Engine(tiny_bundle, backend="ai_edge_litert").infer_tile(x)
    b = Engine(tiny_bundle, backend="tensorflow").infer_tile(x)
    assert Engine(tiny_bundle, backend="tensorflow").info.backend == "tensorflow"
    np.testing.assert_allclose(a, b, atol=1 / 255 + 1e-6)


# -- Edge TPU delegate through a real external-delegate library -------------------------------------
@pytest.fixture()
def fake_tpu(fake_tpu_env):
    return fake_tpu_env("usb:0")


def test_delegate_loads_with_device_option(tpu_bundle, fake_tpu):
    e = Engine(tpu_bundle, device="usb:0")
    assert e.info.delegate == "edgetpu:usb:0"
    assert e.info.model_file == "edgetpu.tflite"
    assert fake_tpu.read_text().splitlines() == ["create device=usb:0"]
    assert e.health_check()["ok"]


def test_delegate_retry_survives_usb_reenumeration(tpu_bundle, fake_tpu, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_FAIL_FIRST", "1")
    e = Engine(tpu_bundle, device="usb:0")
    assert e.info.delegate == "edgetpu:usb:0"
    assert len(fake_tpu.read_text().splitlines()) == 2


def test_absent_device_falls_back_to_cpu_model_with_reason(tpu_bundle, fake_tpu, caplog):
    e = Engine(tpu_bundle, device="usb:1")
    assert e.info.delegate == "cpu" and e.info.model_file == "cpu.tflite"
    assert "no Edge TPU answered at usb:1" in e.info.fallback_reason
    assert "ai_edge_litert" in e.info.fallback_reason  # versions reported for mismatch hunting
    assert "running tiny on the CPU" in caplog.text


def test_missing_library_falls_back_to_cpu(tpu_bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("LUCIDA_EDGETPU_LIB", str(tmp_path / "libedgetpu.so.1"))
    e = Engine(tpu_bundle)
    assert e.info.model_file == "cpu.tflite"
    assert "libedgetpu is not installed" in e.info.fallback_reason


def test_edgetpu_model_never_runs_without_delegate(tpu_bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("LUCIDA_EDGETPU_LIB", str(tmp_path / "nothing.so"))
    for device in ("auto", "cpu", "usb:0"):
        assert Engine(tpu_bundle, device=device).info.model_file == "cpu.tflite"


def test_discovery_probes_device_specs(fake_tpu, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_DEVICES", "usb:0,usb:1,pci:0")
    specs = [t.spec for t in list_edge_tpus(select_backend())]
    assert specs == ["usb:0", "usb:1", "pci:0"]


# -- quantization ------------------------------------------------------------------------------------
def test_quantize_matches_hand_computed_codes():
    # real 0.5 at scale 0.25, zp 10 -> 12; halves round away from zero like TFLite
    assert quantize([0.5, -0.125, 100.0, -100.0], 0.25, 10, "uint8").tolist() == [12, 9, 255, 0]
    assert quantize([0.375, -0.375], 0.25, 0, "int8").tolist() == [2, -2]
    assert quantize([1000.0], 0.5, -128, "int8").tolist() == [127]


def test_dequantize_matches_hand_computed_values():
    np.testing.assert_array_equal(
        dequantize(np.array([0, 128, 255], np.uint8), 1 / 256, 0),
        np.array([0.0, 0.5, 255 / 256], np.float32),
    )
    np.testing.assert_array_equal(
        dequantize(np.array([-128, 0], np.int8), 0.5, -128), np.array([0.0, 64.0], np.float32)
    )


def test_input_lut_fuses_normalization_and_quantization():
    lut = input_lut((127.5,) * 3, (127.5,) * 3, 2 / 255, 128, "uint8")
    assert lut[0].tolist() == [0, 0, 0] and lut[255].tolist() == [255, 255, 255]
    assert is_identity(input_lut((0,) * 3, (1,) * 3, 1.0, 0, "uint8"))
    assert not is_identity(lut)


def test_engine_applies_manifest_normalization(tiny_bundle, tmp_path):
    """A manifest that asks for inverted pixels gives the model's answer on the inverted tile."""
    m = tiny_bundle.manifest.model_dump(mode="json")
    m["normalization"] = {"mean": [255.0] * 3, "std": [-1.0] * 3}
    files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
    inverted = Engine(write_bundle(tmp_path / "inv", m, files))
    x = tiny_bundle.golden()[0]
    np.testing.assert_array_equal(inverted.infer_tile(x), Engine(tiny_bundle).infer_tile(255 - x))


@pytest.fixture(
    params=[(None, "RGB"), (None, "BGR"), ("inverted", "RGB"), ("inverted", "BGR")],
    ids=["identity-RGB", "identity-BGR", "inverted-RGB", "inverted-BGR"],
)
def lut_engine(request, tiny_bundle, tmp_path):
    """The tiny bundle with an input normalization (none, or inverted pixels) and colour order."""
    normalization, order = request.param
    m = tiny_bundle.manifest.model_dump(mode="json")
    if normalization:
        m["normalization"] = {"mean": [255.0] * 3, "std": [-1.0] * 3}
    m["input"]["color_order"] = order
    files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
    return Engine(write_bundle(tmp_path / "b", m, files))


def test_tiles_fed_into_the_input_tensor_match_set_tensor(lut_engine):
    """A tile written straight into the interpreter's input tensor (a strided view of a wider
    frame, through the input LUT and colour order) gives the output set_tensor gives."""
    e = lut_engine
    h, w = e.manifest.input.height, e.manifest.input.width
    wide = np.random.default_rng(3).integers(0, 256, (h + 8, w + 40, 3), dtype=np.uint8)
    tile = wide[5 : 5 + h, 17 : 17 + w]  # rows are strided: not a contiguous array
    got = e.raw_tile(tile).copy()
    e.interpreter.set_tensor(e._in["index"], np.ascontiguousarray(e._prepare(tile)))
    e.interpreter.invoke()
    np.testing.assert_array_equal(got, e.interpreter.get_tensor(e._out["index"])[0])


def test_input_tensors_made_ahead_give_the_same_heatmap(lut_engine):
    """The pipeline's capture thread makes each tile's input tensor ahead (normalized, quantized,
    colour order applied); inference on those is bit for bit inference on the frame's tiles, for
    a tiled frame and a frame of exactly one tile."""
    e = lut_engine
    h, w = e.manifest.input.height, e.manifest.input.width
    rng = np.random.default_rng(5)
    for size in [(h, w), (3 * h + 7, 2 * w + 5)]:
        x = e.resample(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        ahead = e.input_tensors(x)
        assert len(ahead.tensors) == (1 if size == (h, w) else len(e.plan(*x.size).tiles))
        assert all(t.flags.c_contiguous and t.shape == (1, h, w, 3) for t in ahead.tensors)
        np.testing.assert_array_equal(e.infer_input(ahead).probs, e.infer_input(x).probs)


def test_an_input_tensor_of_the_wrong_shape_is_refused(tiny_bundle):
    e = Engine(tiny_bundle)
    h, w = tiny_bundle.manifest.input.height, tiny_bundle.manifest.input.width
    with pytest.raises(EngineError, match=r"an input tensor uint8 \(1, 4, 4, 3\)"):
        e.infer_tile(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(EngineError, match="an input tensor float32"):
        e.infer_tile(np.zeros((1, h, w, 3), np.float32))


# -- whole-field inference ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def float_fcn_pair(tmp_path_factory):
    """The same float FCN as a 64x64-tile bundle and as a 160x224 whole-frame model."""
    from lucida.tools.demo.tiny_models import tiny_fcn
    from lucida.tools.toolchain.bundle import build_bundle
    from lucida.tools.toolchain.convert import convert_float

    model = tiny_fcn(size=None, seed=3)
    d = tmp_path_factory.mktemp("float")
    x = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tile = build_bundle(
        d / "tile",
        name="ftile",
        task="test",
        objectives=["10x"],
        cpu_tflite=convert_float(model, (64, 64, 3)),
        golden_input=x,
        stride=(32, 32),
    )
    full = build_bundle(
        d / "full",
        name="ffull",
        task="test",
        objectives=["10x"],
        cpu_tflite=convert_float(model, (160, 224, 3)),
        golden_input=np.zeros((160, 224, 3), np.uint8),
        stride=(224, 160),
    )
    return tile, full


def test_tiles_stitch_to_the_whole_frame_result(float_fcn_pair):
    tile, full = float_fcn_pair
    frame = np.random.default_rng(7).integers(0, 256, (160, 224, 3), dtype=np.uint8)
    stitched = Engine(tile).infer(frame)
    whole = Engine(full).infer(frame)
    assert stitched.probs.shape == whole.probs.shape == (40, 56)
    np.testing.assert_allclose(stitched.probs, whole.probs, atol=1e-5)
    np.testing.assert_allclose(stitched.affine, whole.affine)


def test_heatmap_affine_maps_cells_to_frame_pixels(tiny_bundle):
    e = Engine(tiny_bundle)
    frame = np.zeros((1080, 1920, 3), np.uint8)
    hm = e.infer(frame, um_per_px=0.5)  # 20x frame, model at 1 um/px: resampled to 960x540
    assert hm.probs.shape == (135, 240)
    # cell (0, 0) covers frame px 0..7: its centre is at 3.5
    np.testing.assert_allclose(hm.affine @ [0, 0, 1], [3.5, 3.5])
    np.testing.assert_allclose(hm.affine @ [239, 134, 1], [1915.5, 1075.5])
    assert hm.frame_size == (1920, 1080)


def test_frame_of_model_size_is_one_tile(tiny_bundle):
    e = Engine(tiny_bundle)
    x = tiny_bundle.golden()[0]
    np.testing.assert_array_equal(e.infer(x).probs, e.infer_tile(x))


# -- health --------------------------------------------------------------------------------------------
def test_health_check_passes_and_catches_a_wrong_model(tiny_bundle, tmp_path):
    assert Engine(tiny_bundle).health_check()["ok"]
    m = tiny_bundle.manifest.model_dump(mode="json")
    files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
    y = np.load(tiny_bundle.path / "golden_output.npy")
    files["golden_output.npy"] = np.clip(1.0 - y, 0, 1).astype(np.float32)
    bad = write_bundle(tmp_path / "bad", m, files)
    with pytest.raises(HealthCheckError, match="golden check failed"):
        Engine(bad).health_check()
    assert not Engine(bad).health_check(raise_on_fail=False)["ok"]


def test_bundle_tarball_round_trip(tiny_bundle, tmp_path):
    from lucida.models import pack_bundle

    tgz = pack_bundle(tiny_bundle.path, tmp_path / "tiny.tar.gz")
    b = load_bundle(tgz, unpack_dir=tmp_path / "unpacked")
    assert Engine(b).health_check()["ok"]
    shutil.rmtree(tmp_path / "unpacked")
