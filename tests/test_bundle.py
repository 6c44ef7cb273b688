"""Model bundles: every way a bundle can be broken is one clear error, and nothing half-loaded."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from conftest import rewrite_manifest
from lucida.models import BundleError, Registry, load_bundle, write_bundle
from lucida.models.bundle import sha256_file
from lucida.runtime.engine import Engine, EngineError


def _rehash(folder, name):
    p = folder / name
    m = json.loads((folder / "manifest.json").read_text())
    m["files"][name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(m))


def test_missing_model_file(bundle_copy):
    (bundle_copy / "cpu.tflite").unlink()
    with pytest.raises(BundleError, match="cpu.tflite is missing"):
        load_bundle(bundle_copy)


def test_truncated_model_fails_its_hash(bundle_copy):
    p = bundle_copy / "cpu.tflite"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(BundleError, match="cpu.tflite is 1000 bytes, manifest says"):
        load_bundle(bundle_copy)


def test_modified_model_fails_its_hash(bundle_copy):
    p = bundle_copy / "cpu.tflite"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 .* does not match"):
        load_bundle(bundle_copy)


def test_truncated_model_with_matching_hash_is_an_engine_error(bundle_copy):
    p = bundle_copy / "cpu.tflite"
    p.write_bytes(p.read_bytes()[:1000])
    _rehash(bundle_copy, "cpu.tflite")
    with pytest.raises(EngineError, match="cpu.tflite"):
        Engine(load_bundle(bundle_copy))


def test_non_tflite_file_is_named(bundle_copy):
    (bundle_copy / "cpu.tflite").write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    _rehash(bundle_copy, "cpu.tflite")
    with pytest.raises(EngineError, match="not a TFLite model"):
        Engine(load_bundle(bundle_copy))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input__width": 128}, "model input shape .* manifest says"),
        ({"quantization__input__dtype": "int8"}, "model input dtype uint8, manifest says int8"),
        ({"quantization__output__scale": 0.5}, "model output quantization"),
        ({"output__channels": 2}, "output shape .* does not fit"),
    ],
)
def test_manifest_that_lies_about_the_model(bundle_copy, change, message):
    rewrite_manifest(bundle_copy, **change)
    with pytest.raises(EngineError, match=message):
        Engine(load_bundle(bundle_copy))


@pytest.mark.parametrize(
    "change, field",
    [
        ({"task": "Lymph Node"}, "task"),
        ({"objectives": ["ten"]}, "objectives"),
        ({"input__width": -1}, "input.width"),
        ({"contours__threshold_low": 0.9}, "contours"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_manifest_names_the_field(bundle_copy, change, field):
    rewrite_manifest(bundle_copy, **change)
    with pytest.raises(BundleError, match=f"field '{field}"):
        load_bundle(bundle_copy)


def test_not_json_and_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "device"])
def test_unsafe_archives_are_refused(tmp_path, kind):
    info = tarfile.TarInfo("b/manifest.json")
    data = b"{}"
    if kind == "traversal":
        info.name = "../../etc/evil"
    elif kind == "absolute":
        info.name = "/tmp/evil"
    elif kind == "symlink":
        info.type, info.linkname, data = tarfile.SYMTYPE, "/etc/passwd", None
    else:
        info.type, data = tarfile.CHRTYPE, None
    if data is not None:
        info.size = len(data)
    arc = _tar(tmp_path / "x.tar.gz", [(info, data)])
    with pytest.raises(BundleError, match="unsafe path|link or device"):
        load_bundle(arc, unpack_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_garbage_archive(tmp_path):
    arc = tmp_path / "b.tar.gz"
    arc.write_bytes(b"not gzip at all")
    with pytest.raises(BundleError, match="not a readable .tar.gz"):
        load_bundle(arc)


def test_write_bundle_is_atomic_on_invalid_manifest(tiny_bundle, tmp_path):
    m = tiny_bundle.manifest.model_dump(mode="json")
    files = {n: (tiny_bundle.path / n).read_bytes() for n in m["files"]}
    good = write_bundle(tmp_path / "b", m, files)
    with pytest.raises(ValueError):
        write_bundle(tmp_path / "b", dict(m, objectives=[]), files)
    assert load_bundle(good.path).name == "tiny"  # the old bundle is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp folders left


def test_registry_defaults_and_overrides(tiny_bundle, tmp_path):
    reg = Registry(
        search_dirs=[tiny_bundle.path.parent],
        config={
            "test": {
                "default": {"bundle": "tiny"},
                "20x": {"bundle": "tiny", "contours": {"threshold": 0.7}},
            }
        },
    )
    assert reg.resolve("test", "10x").contours.threshold == 0.5  # the overlay's default
    assert reg.resolve("test", "20x").contours.threshold == 0.7
    auto = Registry(search_dirs=[tiny_bundle.path.parent], config={})
    assert auto.resolve("test", "20x").bundle.name == "tiny"
    with pytest.raises(BundleError, match="no bundle for task 'test' at 40x"):
        auto.resolve("test", "40x")
    with pytest.raises(BundleError, match="no bundle named 'nope'"):
        Registry(
            search_dirs=[tiny_bundle.path.parent], config={"test": {"default": {"bundle": "nope"}}}
        ).resolve("test", "10x")
    with pytest.raises(BundleError, match="model config test.default"):
        Registry(config={"test": {"default": {"bundel": "x"}}})
