"""The frozen vectors (v1.0, v1.1) decode to their expected arrays on every run, forever.

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
ALL = [(VECTORS, name) for name in NAMES] + [(ROOT / "v1.1", name) for name in NAMES_V11]


@pytest.mark.parametrize("folder", [VECTORS, ROOT / "v1.1", ROOT / "crops"])
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
        assert ds.manifest.model_dump(mode="json", exclude={"created_by"}) == manifest
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
