"""Fuzzing the reader: any damage to any file gives a LaddError or the exact original data.

A reader must never crash with a foreign exception, hang, or return wrong data silently.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ladd_format
from ladd_format.testing import example_arrays


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=9, channels=3)
    root = tmp_path_factory.mktemp("fuzz")
    path = ladd_format.write(root / "c.ladd", images, labels, dense, compression="zstd")
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    with ladd_format.open(path) as ds:  # the default encoding is lossy: compare with its decoding
        dense = np.asarray(ds.dense_labels)
    return path, files, (images, labels, dense)


damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("garbage"), st.integers(0, 64), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("delete"), st.just(0), st.just(0)),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=120)
@given(which=st.integers(0, 100), how=damage, as_zip=st.booleans())
def test_damage_gives_typed_error_or_exact_data(pristine, which, how, as_zip):
    path, files, (images, labels, dense) = pristine
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "c.ladd"
        shutil.copytree(path, copy)
        target = copy / files[which % len(files)]
        kind, a, b = how
        data = bytearray(target.read_bytes())
        if kind == "flip" and data:
            data[a % len(data)] ^= b
        elif kind == "truncate":
            data = data[: a % (len(data) + 1)]
        elif kind == "garbage":
            data = bytearray(np.random.default_rng(b).integers(0, 256, a, dtype=np.uint8).tobytes())
        if kind == "delete":
            target.unlink()
        else:
            target.write_bytes(bytes(data))
        location = copy
        if as_zip:
            from _helpers import zip_dir

            location = zip_dir(copy, Path(tmp) / "c.ladd.zip")
        try:
            ds = ladd_format.open(location, verify=True)
        except ladd_format.LaddError:
            return
        with ds:
            assert np.array_equal(np.asarray(ds.images), images)
            assert np.array_equal(ds.labels, labels)
            assert np.array_equal(np.asarray(ds.dense_labels), dense)
