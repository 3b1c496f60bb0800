"""Containers open read-only from fsspec URLs (file:// and memory:// here; s3/gcs alike)."""

from __future__ import annotations

import numpy as np
import pytest

import ladd_format
from ladd_format.testing import example_arrays

fsspec = pytest.importorskip("fsspec")


def test_file_url(tmp_path):
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
    path = ladd_format.write(tmp_path / "c.ladd", images, labels, dense, encoding="float32")
    with ladd_format.open(f"file://{path}") as ds:
        assert np.array_equal(np.asarray(ds.images), images)
        assert np.array_equal(np.asarray(ds.dense_labels), dense)


def test_memory_url_and_damage(tmp_path):
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
    path = ladd_format.write(tmp_path / "c.ladd", images, labels, dense)
    fs = fsspec.filesystem("memory")
    fs.put(str(path), "/bucket/c.ladd", recursive=True)
    with ladd_format.open("memory://bucket/c.ladd", verify=True) as ds:
        assert np.array_equal(np.asarray(ds.images), images)
        assert ds.stored_bytes()["images"] > images.nbytes // 2
    chunk = next(k for k in fs.find("/bucket/c.ladd/images/c"))
    data = bytearray(fs.cat_file(chunk))
    data[10] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    with pytest.raises(ladd_format.IntegrityError):
        ladd_format.open("memory://bucket/c.ladd", verify=True)
    fs.rm(chunk)
    with pytest.raises(ladd_format.IncompleteContainerError):
        ladd_format.open("memory://bucket/c.ladd", verify=False)
    with pytest.raises(ladd_format.LaddError):
        ladd_format.open("memory://bucket/none.ladd")
