"""The ``coarse`` encoding (format 1.4) decoded from SPEC.md's text alone, on the frozen vectors.

The chunks are read with the standard library (zip, gzip) and numcodecs' zstd, never with
ladd_format, and decoded by the rule of section 5.5 as written: every row of q sums to S,
p = binary32(q) / binary32(S). The writer's SHOULD (largest remainder, ties to the lower
class) is recomputed here by ranking every remainder, independently of the library's form.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numcodecs import zstd

import ladd_format

SPEC = Path(__file__).resolve().parent.parent / "spec"
FOLDER = SPEC / "vectors" / "v1.4"
NAMES = ["coarse_s15.ladd", "coarse_s1.ladd.zip"]


def _keys(container: Path) -> dict[str, bytes]:
    if container.is_dir():
        return {p.relative_to(container).as_posix(): p.read_bytes() for p in container.rglob("*") if p.is_file()}
    with zipfile.ZipFile(container) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _array(keys: dict[str, bytes], name: str) -> np.ndarray:
    """A one-chunk array from its zarr.json and its chunk (section 2: bytes, then zstd or gzip)."""
    meta = json.loads(keys[f"{name}/zarr.json"])
    chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
    assert len(meta["shape"]) == len(chunk) and all(c >= s for c, s in zip(chunk, meta["shape"]))
    data = keys[f"{name}/c/" + "/".join("0" * len(chunk))]
    codecs = [c["name"] for c in meta["codecs"]]
    if codecs[1:] == ["zstd"]:
        data = zstd.decompress(data)
    elif codecs[1:] == ["gzip"]:
        data = gzip.decompress(data)
    else:
        assert codecs == ["bytes"]
    full = np.frombuffer(data, dtype=np.dtype(meta["data_type"]).newbyteorder("<")).reshape(chunk)
    return full[tuple(slice(0, s) for s in meta["shape"])]


def _spec_row() -> list[str]:
    rows = [line for line in (SPEC / "SPEC.md").read_text().splitlines() if line.startswith("| `coarse` |")]
    assert len(rows) == 1
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_spec_table_states_the_encoding():
    name, since, params, stored, decoding = _spec_row()
    assert (name, since) == ("`coarse`", "1.4")
    assert '{"scale": S}' in params and "1 <= S <= 254" in params
    assert "`uint8`" in stored and "last = K" in stored and "5.5" in decoding


def _largest_remainder(p: np.ndarray, scale: int) -> np.ndarray:
    """Section 5.5's SHOULD, by ranking: floor(p S), then one unit each to the largest
    remainders, ties to the lower class."""
    x = p.astype(np.float64)
    x = x / x.sum(-1, keepdims=True) * scale
    q = np.floor(x)
    short = (scale - q.sum(-1)).astype(np.int64)
    out = q.copy()
    for row in np.ndindex(*x.shape[:-1]):
        order = sorted(range(x.shape[-1]), key=lambda c: (-(x[row][c] - q[row][c]), c))
        out[row][order[:short[row]]] += 1
    return out.astype(np.int64)


def _definitions() -> dict[str, dict]:
    spec = importlib.util.spec_from_file_location("make_vectors", SPEC / "vectors" / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._vectors_v14()


@pytest.mark.parametrize("name", NAMES)
def test_vector_decodes_by_the_text(name):
    keys = _keys(FOLDER / name)
    manifest = json.loads(keys["zarr.json"])["attributes"]["ladd"]
    assert manifest["format_version"] == "1.4"
    dense = manifest["dense_labels"]
    assert dense["encoding"] == "coarse" and set(dense["params"]) == {"scale"} and dense["values"] == "probs"
    scale = dense["params"]["scale"]
    assert re.fullmatch(r"\d+", str(scale)) and 1 <= scale <= 254
    q = _array(keys, "dense_labels")
    assert q.dtype == np.uint8 and list(q.shape) == manifest["arrays"]["dense_labels"]["shape"]
    assert (q.astype(np.int64).sum(-1) == scale).all()  # every row sums to exactly S
    decoded = q.astype(np.float32) / np.float32(scale)
    expected = np.load(FOLDER / f"{name}.expected.npz")
    assert np.array_equal(decoded.view(np.int32), expected["dense_labels"].view(np.int32))
    with ladd_format.open(FOLDER / name, verify=True) as ds:
        assert np.array_equal(np.asarray(ds.dense_labels).view(np.int32), decoded.view(np.int32))
    assert np.array_equal(q, _largest_remainder(_definitions()[name]["dense_labels"], scale))
