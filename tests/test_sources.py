"""Source datasets: Fashion-MNIST IDX files, arrays, image folders, random-real selection."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ladd_format import InvalidInputError
from ladd_format import sources
from ladd_format.sources import InputTooLargeError, UnsafePathError

REAL = Path("/usr/share/datasets/fashion-mnist")


def _write_idx(path, array, compress=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_idx_folder(folder, rng, compress=True):
    """An MNIST-like folder: Fashion-MNIST's file names, other contents."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (50, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": (np.arange(50) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(20) % 10).astype(np.uint8),
    }
    for i, (stem, array) in enumerate(arrays.items()):
        gz = compress if compress is not None else i % 2 == 0  # None: a mix of .gz and raw files
        _write_idx(folder / (stem + (".gz" if gz else "")), array, gz)
    return arrays


def _as_fashion_mnist(monkeypatch, arrays):
    """Make the library take these arrays for Fashion-MNIST's published contents."""
    keys = dict(zip(sources._IDX_FILES.values(), sources._IDX_FILES))
    monkeypatch.setattr(sources, "_FASHION_MNIST_SHA256",
                        {keys[stem]: hashlib.sha256(a.tobytes()).hexdigest() for stem, a in arrays.items()})


@pytest.mark.parametrize("compress", [True, False, None])
def test_other_idx_data_is_refused_as_fashion_mnist_and_loads_by_name(tmp_path, compress):
    arrays = _fake_idx_folder(tmp_path / "mnist", np.random.default_rng(0), compress)
    with pytest.raises(InvalidInputError, match="not Fashion-MNIST .*train-images-idx3-ubyte.*idx_folder"):
        sources.fashion_mnist(tmp_path / "mnist")
    for name in (None, "fashion-mnist", "FMNIST"):
        with pytest.raises(InvalidInputError, match=r"pass name= \(--source-name on the command line\)"):
            sources.load_source(tmp_path / "mnist", name=name)
    src = sources.idx_folder(tmp_path / "mnist", "mnist-like")
    assert src.name == "mnist-like" and src.location == str(tmp_path / "mnist")
    assert src.image_shape == (28, 28, 1) and src.class_names == tuple("0123456789")
    assert np.array_equal(src.train_images[..., 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(src.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert src.mean[0] == pytest.approx(arrays["train-images-idx3-ubyte"].mean() / 255)
    assert src.std[0] == pytest.approx(arrays["train-images-idx3-ubyte"].std() / 255)
    named = sources.load_source(tmp_path / "mnist", name="digits", class_names=[f"d{i}" for i in range(10)],
                                mean=(0.13,), std=[0.31])
    assert named.name == "digits" and named.class_names[9] == "d9" and (named.mean, named.std) == ((0.13,), (0.31,))
    assert np.array_equal(named.train_images, src.train_images)


def test_fashion_mnist_is_recognised_by_decoded_contents(tmp_path, monkeypatch):
    raw = _fake_idx_folder(tmp_path / "raw", np.random.default_rng(1), compress=False)
    _fake_idx_folder(tmp_path / "gz", np.random.default_rng(1), compress=True)
    _as_fashion_mnist(monkeypatch, raw)
    for folder in ("raw", "gz"):
        src = sources.load_source(tmp_path / folder)
        assert src.name == "fashion-mnist" and src.class_names[0] == "T-shirt/top" and src.mean == (0.2861,)
        assert np.array_equal(src.train_images[..., 0], raw["train-images-idx3-ubyte"])
    assert sources.load_source(tmp_path / "gz", name="my-copy").name == "my-copy"
    labels = tmp_path / "raw" / "t10k-labels-idx1-ubyte"
    data = labels.read_bytes()
    labels.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(InvalidInputError, match=r"\(t10k-labels-idx1-ubyte differ"):
        sources.fashion_mnist(tmp_path / "raw")


def test_lookup_order_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("LADD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    dirs = sources.data_dirs("fashion-mnist")
    assert dirs[:2] == [tmp_path / "data" / "fashion-mnist", tmp_path / "xdg" / "ladd_format" / "fashion-mnist"]
    with pytest.raises(sources.SourceNotFoundError, match="apt-get install dataset-fashion-mnist"):
        sources.fashion_mnist(tmp_path / "nowhere")
    arrays = _fake_idx_folder(tmp_path / "data" / "fashion-mnist", np.random.default_rng(1))
    _as_fashion_mnist(monkeypatch, arrays)
    assert sources.fashion_mnist().location == str(tmp_path / "data" / "fashion-mnist")
    assert sources.load_source("Fashion-MNIST").location == str(tmp_path / "data" / "fashion-mnist")


def test_bad_idx_header(tmp_path):
    _fake_idx_folder(tmp_path, np.random.default_rng(0), compress=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InvalidInputError, match="IDX header"):
        sources.idx_folder(tmp_path, "x")


def test_load_source_errors(tmp_path):
    _fake_idx_folder(tmp_path / "idx", np.random.default_rng(0))
    with pytest.raises(sources.SourceNotFoundError, match="no such file or folder"):
        sources.load_source(tmp_path / "absent")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="not a file"):
        sources.load_source(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.SourceNotFoundError, match="no class sub-folders"):
        sources.load_source(tmp_path / "empty")
    with pytest.raises(sources.SourceNotFoundError, match="no IDX files"):
        sources.idx_folder(tmp_path / "empty", "x")
    with pytest.raises(InvalidInputError, match="non-empty name"):
        sources.idx_folder(tmp_path / "idx", " ")
    bad = {"class_names": (["a", "b"], "10 classes but 2 class names"),
           "mean": ((0.1, 0.2, 0.3), "one per channel"), "std": ((0.0,), "> 0")}
    for key, (value, message) in bad.items():
        with pytest.raises(InvalidInputError, match=message):
            sources.load_source(tmp_path / "idx", name="x", **{key: value})
    for mean, std in (((float("nan"),), None), (None, (float("inf"),)), (("a",), None), (None, (-1.0,))):
        with pytest.raises(InvalidInputError, match="finite|numbers"):
            sources.load_source(tmp_path / "idx", name="x", mean=mean, std=std)
    (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(sources.SourceNotFoundError, match="missing: t10k-labels-idx1-ubyte"):
        sources.load_source(tmp_path / "idx", name="x")


def test_real_fashion_mnist_when_installed(tmp_path):
    if not REAL.is_dir():
        pytest.skip(f"Fashion-MNIST is not installed in {REAL} (bash scripts/setup.sh installs it)")
    src = sources.load_source(REAL)
    assert src.name == "fashion-mnist" and src.location == str(REAL)
    assert src.train_images.shape == (60000, 28, 28, 1) and src.test_images.shape == (10000, 28, 28, 1)
    assert np.bincount(src.train_labels).tolist() == [6000] * 10
    assert abs(src.train_images.mean() / 255 - 0.2861) < 1e-3
    for path in REAL.glob("*.gz"):  # the digests are of decoded contents: raw files match too
        target = tmp_path / path.name.removesuffix(".gz")
        if "labels" in path.name:
            target.write_bytes(gzip.decompress(path.read_bytes()))
        else:
            (tmp_path / path.name).symlink_to(path)
    assert sources.fashion_mnist(tmp_path).name == "fashion-mnist"


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_image_folder(tmp_path, mode):
    rng = np.random.default_rng(0)
    channels = 1 if mode == "L" else 3
    expected = {}
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (6, 5, channels), dtype=np.uint8)
                Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(
                    tmp_path / split / cls / f"{i}.png")
                expected[(split, cls, i)] = pixels
    src = sources.image_folder(tmp_path)
    assert src.class_names == ("cat", "dog") and src.image_shape == (6, 5, channels)
    assert src.train_labels.tolist() == [0, 0, 0, 1, 1, 1] and len(src.test_labels) == 4
    assert np.array_equal(src.train_images[4], expected[("train", "dog", 1)])
    assert sources.load_source(tmp_path).name == tmp_path.name and src.has_test
    named = sources.load_source(tmp_path, name="pets", class_names=["Cat", "Dog"])
    assert named.name == "pets" and named.class_names == ("Cat", "Dog")
    with pytest.raises(InvalidInputError, match="2 classes but 3 class names"):
        sources.load_source(tmp_path, class_names=["a", "b", "c"])
    resized = sources.image_folder(tmp_path / "train", size=8)
    assert resized.image_shape == (8, 8, channels) and not resized.has_test
    (tmp_path / "train" / "cat" / "big.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "train" / "cat" / "big.png")
    with pytest.raises(InvalidInputError, match="size="):
        sources.image_folder(tmp_path)


def test_from_arrays_validates():
    good = np.zeros((4, 8, 8, 3), np.uint8)
    src = sources.from_arrays("x", good, np.array([0, 1, 2, 1]), good[:2], np.array([0, 2]))
    assert src.num_classes == 3 and src.std == (1.0, 1.0, 1.0)
    with pytest.raises(InvalidInputError, match="uint8"):
        sources.from_arrays("x", good.astype(float), np.zeros(4, int), good, np.zeros(4, int))
    with pytest.raises(InvalidInputError, match="labels"):
        sources.from_arrays("x", good, np.zeros(3, int), good, np.zeros(4, int))


def test_check_matches_names_both_shapes_and_the_option():
    src = sources.from_arrays("fm", np.zeros((4, 28, 28, 1), np.uint8), np.arange(4) % 2,
                              np.zeros((2, 28, 28, 1), np.uint8), np.arange(2))
    src.check_matches(2, (28, 28, 1))
    expected = (r"^test source fm is 28x28x1 with 2 classes; the container is 32x32x3 with 2 classes: "
                r"pass a matching test source \(--test-source\)$")
    with pytest.raises(InvalidInputError, match=expected):
        src.check_matches(2, [32, 32, 3])
    with pytest.raises(InvalidInputError, match=r"with 10 classes: pass a matching labeler source \(--source\)"):
        src.check_matches(10, (28, 28, 1), "labeler source", "--source")


def _unbalanced_source():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(4), [30, 25, 40, 22]))
    images = rng.integers(0, 256, (len(labels), 4, 4, 1), dtype=np.uint8)
    return sources.from_arrays("x", images, labels, images[:4], labels[:4], class_names=["a", "b", "c", "d"])


@pytest.mark.parametrize("ipc1, ipc2, seed", [(1, 2, 0), (10, 19, 0), (3, 22, 5), (7, 8, 123)])
def test_random_real_draws_are_nested(ipc1, ipc2, seed):
    src = _unbalanced_source()
    small, large = sources.random_real(src, ipc1, seed), sources.random_real(src, ipc2, seed)
    prefix = np.concatenate([np.arange(c * ipc2, c * ipc2 + ipc1) for c in range(src.num_classes)])
    for a, b in zip(small, large):
        assert np.array_equal(a, b[prefix])


def test_random_real_is_seeded_and_balanced():
    src = _unbalanced_source()
    x1, y1, i1 = sources.random_real(src, ipc=3, seed=7)
    x2, y2, i2 = sources.random_real(src, ipc=3, seed=7)
    assert np.array_equal(i1, i2) and np.array_equal(x1, x2)
    assert all(not np.array_equal(i1, sources.random_real(src, ipc=3, seed=s)[2]) for s in (0, 8, 9))
    assert y1.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and len(set(i1.tolist())) == 12
    assert np.array_equal(x1, src.train_images[i1]) and np.array_equal(y1, src.train_labels[i1])
    with pytest.raises(InvalidInputError, match=r"class 3 \('d'\) has 22 train images, fewer than ipc=23"):
        sources.random_real(src, ipc=23)
    for bad in (0, -1, 2.5):
        with pytest.raises(InvalidInputError, match="ipc must be an integer >= 1"):
            sources.random_real(src, ipc=bad)
    with pytest.raises(InvalidInputError, match="seed"):
        sources.random_real(src, ipc=1, seed=-1)


def _class_folder(root, names=("a", "b"), per_class=2, size=4):
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size, 3), i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_image_folder_refuses_links_out_and_special_files(tmp_path):
    secret = _class_folder(tmp_path / "secret", names=("s",))
    src = _class_folder(tmp_path / "src" / "train")
    _class_folder(tmp_path / "src" / "test")
    (src / "b" / "x.png").symlink_to(secret / "s" / "0.png")
    with pytest.raises(UnsafePathError, match=r"b/x.png \(a link to .*secret/s/0.png\) is not a file inside "
                       r".*/src; refused"):
        sources.load_source(tmp_path / "src")
    (src / "b" / "x.png").unlink()
    (tmp_path / "src" / "test" / "c").symlink_to(secret / "s")  # the test split is checked too
    (src / "c").mkdir()
    with pytest.raises(UnsafePathError, match=r"test/c \(a link to .*secret/s\) is not a folder inside"):
        sources.image_folder(tmp_path / "src")
    (src / "c").rmdir()
    os.mkfifo(src / "a" / "fifo.png")
    with pytest.raises(UnsafePathError, match=r"fifo.png is a FIFO, not a regular file"):
        sources.image_folder(src)
    (src / "a" / "fifo.png").unlink()
    (src / "a" / "inside.png").symlink_to(src / "b" / "0.png")  # inside the folder: followed
    assert len(sources.image_folder(src).train_labels) == 5
    # An explicit test folder is the user's choice: its own contents are checked against it.
    elsewhere = _class_folder(tmp_path / "elsewhere", names=("a",))
    assert sources.image_folder(src, elsewhere).test_labels.tolist() == [0, 0]


def test_image_folder_limits_say_how_to_raise_them(tmp_path):
    src = _class_folder(tmp_path / "src", per_class=3)
    with pytest.raises(InputTooLargeError, match=r"holds more than 5 images, over the limit max_images=5; if you "
                       r"trust this input, raise it with max_images=$"):
        sources.load_source(src, max_images=5)
    # 6 images of 4 x 4 RGB; resized to 2 x 2 they decode to 72 bytes: the limit counts what is kept.
    with pytest.raises(InputTooLargeError, match=r"the 6 images decode to 288 bytes, over the limit max_bytes=100"):
        sources.image_folder(src, max_bytes=100)
    assert sources.image_folder(src, size=2, max_bytes=100).image_shape == (2, 2, 3)
    with pytest.raises(InvalidInputError, match="max_images must be an integer >= 1, got 0"):
        sources.image_folder(src, max_images=0)
    (src / "a" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    with pytest.raises(InvalidInputError, match=r"a/9.png: not a readable image"):
        sources.image_folder(src)
