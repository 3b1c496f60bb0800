"""The frozen vectors (v1.0, v1.1, v1.2, v1.3, v1.4) decode to their expected arrays on every run, forever.

A vector file that changes is a format change: SHA256SUMS catches it here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import ladd_format

ROOT = Path(__file__).resolve().parent.parent / "spec" / "vectors"
VECTORS = ROOT / "v1.0"
NAMES = ["basic_float32.ladd", "gray_float16.ladd.zip", "logits_raw.ladd"]
NAMES_V11 = ["uint8_probs.ladd", "uint16_probs.ladd.zip", "topk_smoothing.ladd", "topk_renorm.ladd.zip"]
NAMES_V12 = ["teacher_uint8.ladd"]
NAMES_V13 = ["published_uint8.ladd.zip"]
NAMES_V14 = ["coarse_s15.ladd", "coarse_s1.ladd.zip"]
ALL = ([(VECTORS, name) for name in NAMES] + [(ROOT / "v1.1", name) for name in NAMES_V11]
       + [(ROOT / "v1.2", name) for name in NAMES_V12] + [(ROOT / "v1.3", name) for name in NAMES_V13]
       + [(ROOT / "v1.4", name) for name in NAMES_V14])


@pytest.mark.parametrize("folder", [VECTORS, ROOT / "v1.1", ROOT / "v1.2", ROOT / "v1.3", ROOT / "v1.4",
                                    ROOT / "crops"])
def test_vector_files_are_unchanged(folder):
    listed = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                     and p.name not in ("SHA256SUMS", "make_crops.py") and "__pycache__" not in p.parts)
    assert sorted(listed) == present
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{name} changed"


def _as_of(dump, expected):
    """``dump`` without the members a later minor version added (they must be unset here)."""
    if not isinstance(dump, dict) or not isinstance(expected, dict):
        return dump
    added = set(dump) - set(expected)
    assert all(dump[k] is None for k in added), {k: dump[k] for k in added}
    return {k: _as_of(v, expected[k]) for k, v in dump.items() if k in expected}


@pytest.mark.parametrize("folder,name", ALL)
def test_vector_decodes_to_expected_arrays(folder, name):
    expected = np.load(folder / f"{name}.expected.npz")
    manifest = json.loads((folder / f"{name}.expected.json").read_text())
    with ladd_format.open(folder / name, verify=True) as ds:
        assert np.array_equal(np.asarray(ds.images), expected["images"])
        assert np.array_equal(ds.labels, expected["labels"])
        assert np.array_equal(np.asarray(ds.dense_labels), expected["dense_labels"])
        if "dense_values" in expected:
            assert np.array_equal(np.asarray(ds.dense_logits), expected["dense_values"])
        assert _as_of(ds.manifest.model_dump(mode="json", exclude={"created_by"}), manifest) == manifest
        assert ds.manifest.format_version == folder.name[1:]  # the oldest version with its features
        dense = np.asarray(ds.dense_labels).astype(np.float64)
        assert np.abs(dense.sum(-1) - 1).max() < (1e-3 if ds.manifest.dense_labels.encoding == "float16" else 1e-6)


@pytest.mark.parametrize("folder,name", ALL)
def test_vector_reads_without_ladd_format(folder, name):
    from test_tensorstore import read_with_tensorstore

    pytest.importorskip("tensorstore")
    expected = np.load(folder / f"{name}.expected.npz")
    manifest, arrays = read_with_tensorstore(folder / name)
    assert np.array_equal(arrays["images"], expected["images"])
    assert np.array_equal(arrays["labels"], expected["labels"])
    assert manifest["manifest_sha256"] == ladd_format.manifest.manifest_digest(manifest)
    for name_, record in manifest["arrays"].items():
        data = np.ascontiguousarray(arrays[name_], dtype=arrays[name_].dtype.newbyteorder("<"))
        assert hashlib.sha256(data.tobytes()).hexdigest() == record["sha256"]
        if f"stored_{name_}" in expected:
            assert np.array_equal(arrays[name_], expected[f"stored_{name_}"])
            assert arrays[name_].dtype == expected[f"stored_{name_}"].dtype


def _vector_definitions():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {**{("v1.0", n): v for n, v in module._vectors().items()},
            **{("v1.1", n): v for n, v in module._vectors_v11().items()},
            **{("v1.2", n): v for n, v in module._vectors_v12().items()},
            **{("v1.3", n): v for n, v in module._vectors_v13().items()},
            **{("v1.4", n): v for n, v in module._vectors_v14().items()}}


def _files(container):
    """Relative path -> bytes for a directory container or the entries of a zip one."""
    import zipfile

    if container.is_dir():
        return {p.relative_to(container).as_posix(): p.read_bytes() for p in container.rglob("*") if p.is_file()}
    with zipfile.ZipFile(container) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


@pytest.mark.parametrize("key", sorted(_vector_definitions()), ids=lambda k: "/".join(k))
def test_writer_reproduces_every_vector_byte_for_byte(tmp_path, key):
    """The streaming Writer behind write() stores exactly the committed bytes: chunks, array
    metadata and the manifest (the root zarr.json's attributes)."""
    import gzip

    version, name = key
    v = _vector_definitions()[key]
    out = ladd_format.write(tmp_path / name, v["images"], v["labels"], v["dense_labels"], **v["kwargs"])
    ours, theirs = _files(out), _files(ROOT / version / name)
    assert sorted(ours) == sorted(theirs)
    for path in theirs:
        if path == "zarr.json":
            mine, frozen = (json.loads(f[path])["attributes"]["ladd"] for f in (ours, theirs))
            if "mean" not in v["kwargs"]:
                # Statistics the writer computes: the exact-sum implementation (0.1.0) differs in
                # the last bits from the one that made v1.0, so the manifest digest differs too.
                for stat in ("mean", "std"):
                    np.testing.assert_allclose(mine["image"][stat], frozen["image"][stat], rtol=1e-14, atol=0)
                    mine["image"][stat] = frozen["image"][stat]
                mine["manifest_sha256"] = frozen["manifest_sha256"]
            assert mine == frozen
        elif theirs[path][:2] == b"\x1f\x8b":  # gzip stamps its header with the time: compare contents
            assert gzip.decompress(ours[path]) == gzip.decompress(theirs[path]), path
        else:
            assert ours[path] == theirs[path], path
