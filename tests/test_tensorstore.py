"""tensorstore, an independent Zarr v3 implementation, reads every array bit for bit."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import ladd_format
from ladd_format._encodings import get_encoding
from ladd_format.testing import example_arrays

ts = pytest.importorskip("tensorstore")


def kvstore(path):
    if str(path).endswith(".zip"):
        return {"driver": "zip", "base": {"driver": "file", "path": str(path)}}
    return {"driver": "file", "path": str(path) + "/"}


def read_with_tensorstore(path):
    """(manifest, {array name: numpy array}) read without ladd_format or zarr-python."""
    kv = ts.KvStore.open(kvstore(path)).result()
    manifest = json.loads(kv.read("zarr.json").result().value)["attributes"]["ladd"]
    arrays = {}
    for name in manifest["arrays"]:
        spec = {"driver": "zarr3", "kvstore": kvstore(path), "path": f"{name}/", "open": True}
        arrays[name] = ts.open(spec, read=True).result().read().result()
    return manifest, arrays


ENCODINGS = [("float32", None), ("float16", None), ("uint8", None), ("uint16", None),
             ("topk", {"k": 2, "rule": "smoothing"}), ("topk", {"k": 3, "rule": "renorm"})]


@pytest.mark.parametrize("encoding,params", ENCODINGS)
@pytest.mark.parametrize("compression", [None, "zstd", "gzip"])
@pytest.mark.parametrize("suffix", [".ladd", ".ladd.zip"])
@pytest.mark.parametrize("channels", [1, 3])
def test_tensorstore_reads_every_array(tmp_path, encoding, params, compression, suffix, channels):
    images, labels, dense = example_arrays(num_classes=7, ipc=3, size=(12, 10), channels=channels)
    path = ladd_format.write(tmp_path / f"c{suffix}", images, labels, dense,
                             encoding=encoding, encoding_params=params, compression=compression)
    manifest, arrays = read_with_tensorstore(path)
    enc = get_encoding(encoding, params, 7)
    stored = enc.encode(dense)
    with ladd_format.open(path) as ds:
        assert manifest == ds.manifest.to_json()
        assert set(arrays) == {"images", "labels", *stored}
        assert np.array_equal(arrays["images"], images) and arrays["images"].dtype == np.uint8
        assert np.array_equal(arrays["labels"], labels)
        for name, want in stored.items():
            assert arrays[name].dtype == want.dtype and np.array_equal(arrays[name], want)
            assert np.array_equal(arrays[name], ds._arrays[name][:])
        decoded = enc.decoder({name: (lambda sel, a=arrays[name]: a[sel]) for name in stored})(slice(None))
        assert np.array_equal(decoded, np.asarray(ds.dense_labels))
    for name, arr in arrays.items():
        assert list(arr.shape) == manifest["arrays"][name]["shape"]
        assert str(arr.dtype) == manifest["arrays"][name]["dtype"]
        little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        assert hashlib.sha256(little.tobytes()).hexdigest() == manifest["arrays"][name]["sha256"]
