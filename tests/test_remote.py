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


def test_memory_zip_form(tmp_path):
    """One object is the single-file form, read by range requests within each entry's place."""
    from ladd_format.remote import upload

    path = ladd_format.write(tmp_path / "c.ladd", *example_arrays(num_classes=3, ipc=2, size=8))
    packed = ladd_format.pack(path, tmp_path / "c.ladd.zip")
    url = "memory://zipped/c.ladd.zip"
    assert upload(packed, url) == url
    with ladd_format.open(url, verify=True) as ds, ladd_format.open(path) as ref:
        assert np.array_equal(np.asarray(ds.images), np.asarray(ref.images))
        assert ds.stored_bytes() == ref.stored_bytes()
    fs = fsspec.filesystem("memory")
    data = bytearray(fs.cat_file("/zipped/c.ladd.zip"))
    data[data.index(b"images/c/0/0/0/0") + 60] ^= 0xFF  # inside the first chunk
    fs.pipe_file("/zipped/c.ladd.zip", bytes(data))
    with pytest.raises(ladd_format.IntegrityError):
        ladd_format.open(url, verify=True)
    fs.pipe_file("/zipped/c.ladd.zip", bytes(data[:-40]))
    with pytest.raises(ladd_format.IntegrityError, match="zip"):
        ladd_format.open(url)
    fs.pipe_file("/zipped/plain.ladd", b"not a zip")
    with pytest.raises(ladd_format.ContainerNotFoundError, match="not a zip"):
        ladd_format.open("memory://zipped/plain.ladd")


def test_memory_upload_cut_before_manifest(tmp_path, monkeypatch):
    """An upload that stops before the root zarr.json (the manifest) leaves no container."""
    from fsspec.implementations.memory import MemoryFileSystem

    from ladd_format.remote import upload

    path = ladd_format.write(tmp_path / "c.ladd", *example_arrays(num_classes=3, ipc=2, size=8))
    put_file = MemoryFileSystem.put_file

    def cut(self, lpath, rpath, *args, **kwargs):
        if rpath.endswith("/cut/c.ladd/zarr.json"):
            raise ConnectionResetError("connection reset by peer")
        return put_file(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "put_file", cut)
    with pytest.raises(ladd_format.LaddError, match="connection reset"):
        upload(path, "memory://cut/c.ladd")
    with pytest.raises(ladd_format.IncompleteContainerError, match="zarr.json"):
        ladd_format.open("memory://cut/c.ladd")
    monkeypatch.undo()
    with pytest.raises(ladd_format.ContainerExistsError):
        upload(path, "memory://cut/c.ladd")
    upload(path, "memory://cut/c.ladd", overwrite=True)
    with ladd_format.open("memory://cut/c.ladd") as ds:
        with ladd_format.open(path) as ref:
            assert ds.manifest == ref.manifest


def test_storage_options_need_a_url(tmp_path):
    path = ladd_format.write(tmp_path / "c.ladd", *example_arrays(num_classes=3, ipc=2, size=8))
    with pytest.raises(ladd_format.InvalidInputError, match="storage_options"):
        ladd_format.open(path, storage_options={"anon": True})


def test_writers_refuse_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, labels, dense = example_arrays(num_classes=2, ipc=1, size=8)
    with pytest.raises(ladd_format.InvalidInputError, match="remote.upload"):
        ladd_format.write("s3://bucket/c.ladd", images, labels, dense)
    assert list(tmp_path.iterdir()) == []  # no local folder named "s3:"
