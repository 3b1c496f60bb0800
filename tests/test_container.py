"""Writer and reader: round trips, defaults, indexing, class views, bad input, overwrite."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from _helpers import leftovers
from hypothesis import given
from hypothesis import strategies as st

import ladd_format
from ladd_format import ContainerExistsError, InvalidInputError
from ladd_format.testing import example_arrays


def _probs(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    z = rng.normal(0, 2, shape)
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(dtype)


@st.composite
def containers(draw):
    n = draw(st.integers(1, 4))
    m = draw(st.integers(1, 9))
    h = draw(st.integers(n, 19))
    w = draw(st.integers(n, 19))
    c = draw(st.sampled_from([1, 3]))
    k = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return dict(
        images=rng.integers(0, 256, (m, h, w, c), dtype=np.uint8),
        labels=rng.integers(0, k, m),
        dense=_probs(rng, (m, n * n, k), draw(st.sampled_from([np.float32, np.float64]))),
        sampler={"n": n, "ratio": draw(st.sampled_from([0.625, 0.5, 1.0, 0.3]))},
        encoding=draw(st.sampled_from(["float32", "float16"])),
        compression=draw(st.sampled_from([None, "zstd", "gzip"])),
        suffix=draw(st.sampled_from([".ladd", ".ladd.zip"])),
    )


@given(containers())
def test_round_trip_is_exact(case):
    with tempfile.TemporaryDirectory() as tmp:
        path = ladd_format.write(Path(tmp) / f"c{case['suffix']}", case["images"], case["labels"], case["dense"],
                                 sampler=case["sampler"], encoding=case["encoding"],
                                 compression=case["compression"])
        with ladd_format.open(path, verify=True) as ds:
            assert np.array_equal(np.asarray(ds.images), case["images"])
            assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, case["labels"])
            want = case["dense"].astype(case["encoding"]).astype(np.float32)
            dense = np.asarray(ds.dense_labels)
            assert dense.dtype == np.float32 and np.array_equal(dense, want)
            assert np.allclose(dense.sum(-1), 1, atol=2e-3)
            assert len(ds) == len(case["images"])
            assert ds.manifest.sampler.n == case["sampler"]["n"]
        assert leftovers(Path(tmp)) == [path.name]


def test_defaults_just_work(tmp_path):
    images, labels, dense = example_arrays(num_classes=4, ipc=3, size=16)
    path = ladd_format.write(tmp_path / "d.ladd", images, labels, dense)
    with ladd_format.open(path) as ds:
        m = ds.manifest
        assert (m.sampler.kind, m.sampler.n, m.sampler.ratio) == ("uniform_grid", 5, 0.625)
        assert m.class_names == ["0", "1", "2", "3"]
        assert m.labeler.architecture == "unknown" and m.distillation.method == "unknown"
        assert m.distillation.ipc == 3 and ds.ipc == 3
        assert m.format_version == "1.1"  # uint8, the default encoding, is format 1.1
        assert (m.dense_labels.encoding, m.dense_labels.values) == ("uint8", "probs")
        flat = images.reshape(-1, 3) / 255
        assert np.allclose(m.image.mean, flat.mean(0)) and np.allclose(m.image.std, flat.std(0))


def test_accepts_torch_tensors_and_metadata(tmp_path):
    torch = pytest.importorskip("torch")
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=12, channels=1)
    path = ladd_format.write(
        tmp_path / "t.ladd", torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(dense),
        class_names=["cat", "dog", "é"], mean=[0.5], std=[0.25],
        labeler={"architecture": "ConvNetD3", "epochs": 10, "training": {"lr": 0.01}},
        distillation=ladd_format.manifest.DistillationInfo(method="MTT", source_dataset="x", ipc=2),
        extra={"paper": "LADD", "numbers": [1, 2.5, None, True]},
    )
    with ladd_format.open(path) as ds:
        assert ds.class_names == ["cat", "dog", "é"]
        assert ds.manifest.labeler.training == {"lr": 0.01}
        assert ds.manifest.extra["numbers"] == [1, 2.5, None, True]
        assert ds.manifest.image.std == [0.25]


def test_logits_decode_to_softmax(tmp_path):
    images, labels, _ = example_arrays(num_classes=3, ipc=1, size=8)
    logits = np.random.default_rng(1).normal(0, 4, (3, 25, 3)).astype(np.float32)
    path = ladd_format.write(tmp_path / "l.ladd", images, labels, logits, values="logits", temperature=2.0)
    with ladd_format.open(path) as ds:
        assert np.array_equal(np.asarray(ds.dense_logits), logits)
        z = logits.astype(np.float64) / 2.0
        want = np.exp(z - z.max(-1, keepdims=True))
        want /= want.sum(-1, keepdims=True)
        assert np.allclose(np.asarray(ds.dense_labels), want, atol=1e-6)
    with ladd_format.open(ladd_format.write(tmp_path / "p.ladd", images, labels, _)) as ds:
        with pytest.raises(ladd_format.LaddError, match="probabilities"):
            ds.dense_logits


def test_indexing(tmp_path):
    images, labels, dense = example_arrays(num_classes=5, ipc=4, size=8)
    with ladd_format.open(ladd_format.write(tmp_path / "i.ladd", images, labels, dense, encoding="float32")) as ds:
        image, label, d = ds[7]
        assert np.array_equal(image, images[7]) and label == labels[7] and np.array_equal(d, dense[7])
        assert np.array_equal(ds.images[-1], images[-1])
        idx = [5, 2, 5, 19]
        assert np.array_equal(ds.images[idx], images[idx])
        assert np.array_equal(ds.dense_labels[np.array(idx)], dense[idx])
        mask = labels == 2
        assert np.array_equal(ds.images[mask], images[mask])
        assert np.array_equal(ds.images[1:9:3, 2, :, 0], images[1:9:3, 2, :, 0])
        assert np.array_equal(ds.dense_labels[..., 3], dense[..., 3])
        assert np.array_equal(ds.dense_labels[4, :, 1], dense[4, :, 1])
        assert ds.images[[]].shape == (0, 8, 8, 3)
        assert ds.images.shape == images.shape and ds.images.ndim == 4 and len(ds.images) == 20
        for bad in (20, -21, [0, 20]):
            with pytest.raises(IndexError):
                ds.images[bad]


def test_class_views(tmp_path):
    images, _, dense = example_arrays(num_classes=3, ipc=3, size=8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 1])
    with ladd_format.open(ladd_format.write(tmp_path / "u.ladd", images, labels, dense)) as ds:
        assert ds.ipc is None and ds.manifest.distillation.ipc is None
        assert ds.class_counts.tolist() == [3, 4, 2]
        assert ds.class_indices(1).tolist() == [1, 4, 7, 8]
        assert ds.balanced_indices(2).tolist() == [0, 3, 1, 4, 2, 5]
        with pytest.raises(ValueError):
            ds.balanced_indices(3)
        with pytest.raises(IndexError):
            ds.class_indices(3)


def _arrays():
    return example_arrays(num_classes=3, ipc=2, size=8)


def _bad_cases():
    images, labels, dense = _arrays()
    nan = dense.copy()
    nan[2, 3, 1] = np.nan
    unnormalised = dense * 0.9
    negative = dense.copy()
    negative[0, 0, 0] = -0.01
    return {
        "float images": (dict(images=images.astype(np.float32)), "uint8"),
        "3-d images": (dict(images=images[..., 0]), "channel axis"),
        "NCHW images": (dict(images=images.transpose(0, 3, 1, 2)), "NCHW"),
        "2 channels": (dict(images=images[..., :2]), "1 or 3 channels"),
        "no images": (dict(images=images[:0], labels=labels[:0], dense_labels=dense[:0]), "at least one"),
        "float labels": (dict(labels=labels.astype(float)), "integers"),
        "bool labels": (dict(labels=labels > 0), "integers"),
        "label too big": (dict(labels=np.where(labels == 0, 3, labels)), r"\[0, 3\)"),
        "negative label": (dict(labels=labels - 1), r"\[0, 3\)"),
        "labels wrong length": (dict(labels=labels[:-1]), r"\[M\]"),
        "dense wrong crops": (dict(dense_labels=dense[:, :9]), "n\\*n"),
        "dense integer": (dict(dense_labels=(dense > 0.5).astype(int)), "floating"),
        "dense NaN": (dict(dense_labels=nan), "non-finite"),
        "dense inf": (dict(dense_labels=np.where(nan != nan, np.inf, dense)), "non-finite"),
        "rows not summing to 1": (dict(dense_labels=unnormalised), "sum to 1"),
        "negative prob": (dict(dense_labels=negative), r"\[0, 1\]"),
        "unknown encoding": (dict(encoding="int3"), "int3"),
        "float16 overflow": (dict(dense_labels=dense * 1e6, values="logits", encoding="float16"), "overflows"),
        "bad values": (dict(values="probabilities"), "probs"),
        "NaN metadata": (dict(extra={"a": [1.0, math.nan]}), r"extra\.a.*finite"),
        "inf metadata": (dict(labeler={"training": {"lr": math.inf}}), "lr"),
        "non-JSON metadata": (dict(extra={"when": object()}), "extra"),
        "non-string key": (dict(extra={1: "x"}), "valid string"),
        "class names count": (dict(class_names=["a", "b"]), "class names"),
        "duplicate class names": (dict(class_names=["a", "a", "b"]), "unique"),
        "mean length": (dict(mean=[0.5], std=[0.2, 0.2, 0.2]), "one per channel"),
        "zero std": (dict(mean=[0.5] * 3, std=[0.2, 0.0, 0.2]), "std"),
        "NaN mean": (dict(mean=[math.nan] * 3, std=[0.2] * 3), "mean"),
        "zero temperature": (dict(temperature=0.0), "temperature"),
        "sampler n=0": (dict(sampler={"n": 0}), "n"),
        "sampler ratio": (dict(sampler={"n": 5, "ratio": 1.5}), "ratio"),
        "unknown sampler": (dict(sampler={"kind": "random"}), "kind"),
        "image smaller than n": (dict(sampler={"n": 9}), "smaller"),
        "bad checkpoint digest": (dict(labeler={"checkpoint_sha256": "xyz"}), "checkpoint_sha256"),
        "bad compression": (dict(compression="lz4"), "compression"),
        "object array": (dict(labels=np.array([0, 1, None, 1, 2, 2], dtype=object)), "object"),
    }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
@pytest.mark.parametrize("suffix", [".ladd", ".ladd.zip"])
def test_bad_input_is_rejected_before_writing(tmp_path, case, suffix):
    images, labels, dense = _arrays()
    changes, message = _bad_cases()[case]
    args = dict(images=images, labels=labels, dense_labels=dense)
    args.update({k: changes.pop(k) for k in list(changes) if k in args})
    target = tmp_path / "sub" / f"bad{suffix}"
    with pytest.raises(InvalidInputError, match=message):
        ladd_format.write(target, args["images"], args["labels"], args["dense_labels"], **changes)
    assert leftovers(tmp_path) == []


def test_refuses_to_overwrite_and_replaces_when_asked(tmp_path):
    images, labels, dense = _arrays()
    for suffix in (".ladd", ".ladd.zip"):
        path = ladd_format.write(tmp_path / f"c{suffix}", images, labels, dense)
        with pytest.raises(ContainerExistsError, match="overwrite=True"):
            ladd_format.write(path, images[::-1], labels, dense)
        with ladd_format.open(path) as ds:
            assert np.array_equal(np.asarray(ds.images), images)
        ladd_format.write(path, images[::-1].copy(), labels, dense, overwrite=True)
        with ladd_format.open(path) as ds:
            assert np.array_equal(np.asarray(ds.images), images[::-1])
    assert leftovers(tmp_path) == ["c.ladd", "c.ladd.zip"]


def test_never_replaces_a_non_container(tmp_path):
    images, labels, dense = _arrays()
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(InvalidInputError, match="not a container"):
        ladd_format.write(precious, images, labels, dense, overwrite=True)
    assert precious.read_text() == "keep me"


def test_stored_bytes_and_pack(tmp_path):
    images, labels, dense = example_arrays(num_classes=10, ipc=3, size=16)
    path = ladd_format.write(tmp_path / "s.ladd", images, labels, dense, encoding="float32", compression=None)
    with ladd_format.open(path) as ds:
        stored = ds.stored_bytes()
    assert set(stored) == {"images", "labels", "dense_labels"}
    assert images.nbytes < stored["images"] < images.nbytes + 2000  # raw chunks + metadata
    assert dense.nbytes < stored["dense_labels"] < dense.nbytes + 2000
    packed = ladd_format.pack(path, tmp_path / "s.ladd.zip")
    with ladd_format.open(packed) as ds:
        assert ds.stored_bytes() == stored
        assert np.array_equal(np.asarray(ds.dense_labels), dense)
    with pytest.raises(ContainerExistsError):
        ladd_format.pack(path, packed)
    with pytest.raises(InvalidInputError, match=".zip"):
        ladd_format.pack(path, tmp_path / "s.tar")


def test_open_missing_or_foreign(tmp_path):
    with pytest.raises(ladd_format.ContainerNotFoundError):
        ladd_format.open(tmp_path / "nothing.ladd")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(ladd_format.ContainerNotFoundError, match="neither"):
        ladd_format.open(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ladd_format.IncompleteContainerError, match="zarr.json"):
        ladd_format.open(tmp_path / "empty")


def test_chunks_hold_whole_images_and_cover_the_array(tmp_path, monkeypatch):
    import zarr

    from ladd_format import _write

    monkeypatch.setattr(_write, "CHUNK_BYTES", 8 * 8 * 3 * 4)  # at most 4 images a chunk
    images, labels, dense = example_arrays(num_classes=5, ipc=2, size=8)
    path = ladd_format.write(tmp_path / "k.ladd", images, labels, dense)
    arr = zarr.open_array(zarr.storage.LocalStore(path / "images", read_only=True), zarr_format=3)
    assert arr.chunks == (4, 8, 8, 3) and arr.nchunks == 3  # 10 images -> 4 + 4 + 2
    assert arr.metadata.dimension_names == ("image", "height", "width", "channel")
    with ladd_format.open(path) as ds:
        assert np.array_equal(np.asarray(ds.images), images)


def test_subset_views(tmp_path):
    images, labels, dense = example_arrays(num_classes=3, ipc=4, size=8)
    logits = np.log(dense)
    for values, stored in (("probs", dense), ("logits", logits)):
        path = ladd_format.write(tmp_path / f"{values}.ladd", images, labels, stored, values=values,
                                 encoding="float32")
        with ladd_format.open(path) as ds:
            idx = ds.balanced_indices(2)
            view = ds.subset(idx)
            assert len(view) == 6 and view.ipc == 2 and len(ds) == 12
            assert np.array_equal(np.asarray(view.images), images[idx])
            assert np.array_equal(view.labels, labels[idx])
            assert np.allclose(np.asarray(view.dense_labels), dense[idx], atol=1e-6)
            assert np.array_equal(view.images[[3, 0]], images[idx[[3, 0]]])
            image, label, d = view[5]
            assert np.array_equal(image, images[idx[5]]) and label == labels[idx[5]]
            assert np.array_equal(np.asarray(view.subset([1]).images), images[idx[[1]]])
            with pytest.raises(IndexError):
                ds.subset([12])
