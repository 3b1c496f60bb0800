"""Source datasets: Fashion-MNIST IDX files, arrays, image folders, random-real selection."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from ladd_format import InvalidInputError
from ladd_format import sources


def _write_idx(path, array, compress=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_fashion_mnist(folder, rng, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (50, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(50) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(20) % 10,
    }
    for stem, array in arrays.items():
        _write_idx(folder / (stem + (".gz" if compress else "")), array, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_are_read_exactly(tmp_path, compress):
    arrays = _fake_fashion_mnist(tmp_path / "fm", np.random.default_rng(0), compress)
    src = sources.fashion_mnist(tmp_path / "fm")
    assert src.image_shape == (28, 28, 1) and src.num_classes == 10
    assert np.array_equal(src.train_images[..., 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(src.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert src.class_names[0] == "T-shirt/top" and src.mean == (0.2861,)
    assert sources.load_source(tmp_path / "fm").train_images.shape == (50, 28, 28, 1)


def test_lookup_order_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("LADD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    dirs = sources.data_dirs("fashion-mnist")
    assert dirs[:2] == [tmp_path / "data" / "fashion-mnist", tmp_path / "xdg" / "ladd_format" / "fashion-mnist"]
    with pytest.raises(sources.SourceNotFoundError, match="apt-get install dataset-fashion-mnist"):
        sources.fashion_mnist(tmp_path / "nowhere")
    _fake_fashion_mnist(tmp_path / "data" / "fashion-mnist", np.random.default_rng(1))
    assert sources.fashion_mnist().location == str(tmp_path / "data" / "fashion-mnist")


def test_bad_idx_header(tmp_path):
    _fake_fashion_mnist(tmp_path, np.random.default_rng(0), compress=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InvalidInputError, match="IDX header"):
        sources.fashion_mnist(tmp_path)


def test_real_fashion_mnist_when_installed():
    try:
        src = sources.fashion_mnist()
    except sources.SourceNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (bash scripts/setup.sh installs it)")
    assert src.train_images.shape == (60000, 28, 28, 1) and src.test_images.shape == (10000, 28, 28, 1)
    assert np.bincount(src.train_labels).tolist() == [6000] * 10
    assert abs(src.train_images.mean() / 255 - 0.2861) < 1e-3


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
    resized = sources.image_folder(tmp_path / "train", size=8)
    assert resized.image_shape == (8, 8, channels) and len(resized.test_labels) == 0
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


def test_random_real_is_seeded_and_balanced():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (100, 4, 4, 1), dtype=np.uint8)
    labels = np.arange(100) % 5
    src = sources.from_arrays("x", images, labels, images[:5], labels[:5])
    x1, y1, i1 = sources.random_real(src, ipc=3, seed=7)
    x2, y2, i2 = sources.random_real(src, ipc=3, seed=7)
    _, _, i3 = sources.random_real(src, ipc=3, seed=8)
    assert np.array_equal(i1, i2) and not np.array_equal(i1, i3)
    assert y1.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert np.array_equal(x1, images[i1]) and np.array_equal(y1, labels[i1])
    with pytest.raises(InvalidInputError, match="fewer than ipc"):
        sources.random_real(src, ipc=21)
