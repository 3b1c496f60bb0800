"""verify="read": digests checked while arrays are read in full, in one pass."""

from __future__ import annotations

import numpy as np
import pytest

import ladd_format
from ladd_format.testing import example_arrays

from _helpers import chunk_files, flip_byte


@pytest.fixture()
def plain(tmp_path):
    """An uncompressed container with several chunks per array, so a flipped byte decodes fine."""
    images, labels, dense = example_arrays(num_classes=10, ipc=6, size=32, seed=2)
    path = ladd_format.write(tmp_path / "c.ladd", images, labels, dense, encoding="float16", compression=None)
    return path, images, dense


def test_a_full_read_verifies_each_array(plain):
    path, images, dense = plain
    with ladd_format.open(path, verify="read") as ds:
        assert ds.verified_arrays() == ["labels"]  # read whole at open
        ds.images[:5]  # a partial read is not a check
        assert "images" not in ds.verified_arrays()
        assert np.array_equal(np.asarray(ds.images), images)
        np.asarray(ds.dense_labels)
        assert sorted(ds.verified_arrays()) == ["dense_labels", "images", "labels"]


def test_a_damaged_array_fails_the_read_that_completes_it(plain):
    path, images, _ = plain
    flip_byte(chunk_files(path, "images")[0], 100)
    with ladd_format.open(path, verify=False) as ds:
        assert not np.array_equal(np.asarray(ds.images), images)  # without a check: wrong pixels, silently
    with ladd_format.open(path, verify="read") as ds, pytest.raises(ladd_format.IntegrityError, match="images"):
        np.asarray(ds.images)
    with pytest.raises(ladd_format.IntegrityError, match="images"):
        ladd_format.open(path)  # verify=True finds it too, in its own pass


def test_the_device_loader_upload_verifies_in_its_one_pass(plain, monkeypatch):
    from ladd_format import loader

    path, _, _ = plain
    monkeypatch.setattr(loader, "rows_per_block", lambda shape, itemsize: 7)  # several blocks per array
    with ladd_format.open(path, verify="read") as ds:
        loader.DeviceLoader(ds, batch_size=8, device="cpu")
        assert sorted(ds.verified_arrays()) == ["dense_labels", "images", "labels"]
    flip_byte(chunk_files(path, "dense_labels")[-1], 50)
    with ladd_format.open(path, verify="read") as ds, pytest.raises(ladd_format.IntegrityError, match="dense_labels"):
        loader.DeviceLoader(ds, batch_size=8, device="cpu")


def test_verify_takes_three_values(plain):
    with pytest.raises(ladd_format.InvalidInputError, match="verify"):
        ladd_format.open(plain[0], verify="lazy")
