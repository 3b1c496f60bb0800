"""The streaming Writer: batches of any size give the container write() gives, byte for byte;
bad batches, short streams and exceptions leave nothing at the target."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ladd_format
from ladd_format import Writer
from ladd_format.testing import example_arrays

from test_vectors import _files


def _stream(path, images, labels, dense, cuts, **kwargs):
    with Writer(path, num_images=len(images), image_shape=images.shape[1:], num_classes=dense.shape[2],
                **kwargs) as w:
        for lo, hi in zip([0, *cuts], [*cuts, len(images)]):
            w.append(images[lo:hi], labels[lo:hi], dense[lo:hi])
    return path


ENCODINGS = [("float32", None), ("float16", None), ("uint8", None), ("uint16", None),
             ("topk", {"k": 3, "rule": "smoothing"})]


@pytest.mark.parametrize("encoding,params", ENCODINGS)
@pytest.mark.parametrize("suffix", [".ladd", ".ladd.zip"])
def test_batches_give_the_bytes_of_one_write(tmp_path, encoding, params, suffix, monkeypatch):
    monkeypatch.setattr(ladd_format._write, "CHUNK_BYTES", 20_000)  # several chunks per array
    images, labels, dense = example_arrays(num_classes=10, ipc=7, size=32, seed=3)
    kw = dict(encoding=encoding, encoding_params=params, labeler={"architecture": "x", "input_size": [32, 32]})
    whole = ladd_format.write(tmp_path / f"whole{suffix}", images, labels, dense, **kw)
    parts = _stream(tmp_path / f"parts{suffix}", images, labels, dense, [1, 2, 9, 33, 34, 50], **kw)
    assert _files(whole) == _files(parts)
    with ladd_format.open(parts) as ds:
        assert ds.manifest.format_version == "1.2" and ds.manifest.labeler.input_size == [32, 32]
        assert ds.manifest.image.mean == ladd_format.open(whole).manifest.image.mean
        assert ds._arrays["images"].chunks[0] < len(images)  # really several chunks


@given(cuts=st.lists(st.integers(1, 39), max_size=6, unique=True).map(sorted))
def test_any_batching_gives_the_same_container(tmp_path_factory, cuts):
    tmp = tmp_path_factory.mktemp("w")
    images, labels, dense = example_arrays(num_classes=4, ipc=10, size=16, seed=1)
    a = ladd_format.write(tmp / "a.ladd", images, labels, dense, encoding="float16")
    b = _stream(tmp / "b.ladd", images, labels, dense, cuts, encoding="float16")
    assert _files(a) == _files(b)


def test_short_stream_and_bad_batches_leave_nothing(tmp_path):
    images, labels, dense = example_arrays(num_classes=4, ipc=5, size=16, seed=0)
    target = tmp_path / "c.ladd"
    w = Writer(target, num_images=20, image_shape=(16, 16, 3), num_classes=4)
    w.append(images[:10], labels[:10], dense[:10])
    with pytest.raises(ladd_format.InvalidInputError, match="10 of the 20"):
        w.close()
    assert list(tmp_path.iterdir()) == []
    bad = dense[10:].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ladd_format.InvalidInputError, match="non-finite"):
        with Writer(target, num_images=20, image_shape=(16, 16, 3), num_classes=4) as w:
            w.append(images[:10], labels[:10], dense[:10])
            w.append(images[10:], labels[10:], bad)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ladd_format.InvalidInputError, match="more than"):
        with Writer(target, num_images=5, image_shape=(16, 16, 3), num_classes=4) as w:
            w.append(images[:10], labels[:10], dense[:10])
    with pytest.raises(ladd_format.InvalidInputError, match="16, 16, 3"):
        with Writer(target, num_images=20, image_shape=(16, 16, 3), num_classes=4) as w:
            w.append(images[:, :8], labels, dense)
    with pytest.raises(RuntimeError):
        with Writer(target, num_images=20, image_shape=(16, 16, 3), num_classes=4) as w:
            w.append(images[:10], labels[:10], dense[:10])
            raise RuntimeError("the labeler crashed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,match", [
    ({"num_images": 0}, "num_images"), ({"image_shape": (16, 16)}, "image_shape"),
    ({"num_classes": 0}, "classes"), ({"class_names": ["a"]}, "class names"),
    ({"mean": [0.5], "std": [1.0]}, "mean"), ({"compression": "lz4"}, "compression"),
    ({"encoding": "topk"}, "k"), ({"labeler": {"input_size": [0, 3]}}, "input_size"),
    ({"labeler": {"mean": [0.5]}}, "mean and std"),
])
def test_bad_metadata_is_refused_before_anything_is_written(tmp_path, kwargs, match):
    args = {"num_images": 4, "image_shape": (16, 16, 3), "num_classes": 4, **kwargs}
    with pytest.raises(ladd_format.InvalidInputError, match=match):
        Writer(tmp_path / "sub" / "c.ladd", **args)
    assert list(tmp_path.iterdir()) == []


def test_existing_target_is_refused_up_front(tmp_path):
    target = ladd_format.testing.write_example(tmp_path / "c.ladd")
    with pytest.raises(ladd_format.ContainerExistsError, match="--overwrite"):
        Writer(target, num_images=4, image_shape=(16, 16, 3), num_classes=4)
