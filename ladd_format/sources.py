"""Source datasets as uint8 arrays: the real data a labeler learns from and models are tested on.

Built in: Fashion-MNIST (from the Debian package ``dataset-fashion-mnist`` or any folder with
its four IDX files), plain numpy arrays, and image folders with one sub-folder per class.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._write import _channel_stats
from .errors import InvalidInputError, LaddError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class SourceNotFoundError(LaddError, FileNotFoundError):
    """A source dataset is not installed where the library looks for it."""


@dataclass(frozen=True)
class SourceDataset:
    """A labelled dataset with train and test splits, images uint8 [N, H, W, C]."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    location: str = field(default="memory")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        h, w, c = self.image_shape
        return (f"SourceDataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"{h}x{w}x{c}, classes={self.num_classes})")


def data_dirs(name: str) -> list[Path]:
    """Where a named dataset is looked for, in order."""
    dirs = []
    if os.environ.get("LADD_DATA_DIR"):
        dirs.append(Path(os.environ["LADD_DATA_DIR"]) / name)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    dirs.append(Path(xdg) / "ladd_format" / name)
    dirs.append(Path("/usr/share/datasets") / name)
    return dirs


def fashion_mnist(root: str | os.PathLike[str] | None = None) -> SourceDataset:
    """Fashion-MNIST: 60,000 train and 10,000 test images, 28x28x1, 10 classes (MIT licence)."""
    candidates = [Path(root)] if root is not None else data_dirs("fashion-mnist")
    for folder in candidates:
        files = {key: _find_idx(folder, stem) for key, stem in _FASHION_MNIST_FILES.items()}
        if all(files.values()):
            arrays = {key: _read_idx(path) for key, path in files.items()}  # type: ignore[arg-type]
            return from_arrays(
                "fashion-mnist", arrays["train_images"][..., None], arrays["train_labels"],
                arrays["test_images"][..., None], arrays["test_labels"],
                class_names=FASHION_MNIST_CLASSES, mean=(0.2861,), std=(0.3530,), location=str(folder))
    looked = ", ".join(str(p) for p in candidates)
    raise SourceNotFoundError(
        f"Fashion-MNIST not found (looked in {looked}). Install it with "
        "`sudo apt-get install dataset-fashion-mnist`, or without root: "
        "`apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb /tmp/fm && "
        "mkdir -p ~/.local/share/ladd_format/fashion-mnist && "
        "cp /tmp/fm/usr/share/datasets/fashion-mnist/*.gz ~/.local/share/ladd_format/fashion-mnist/` "
        "(bash scripts/setup.sh does this), or pass the folder holding the four IDX files.")


def from_arrays(
    name: str, train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
    test_labels: np.ndarray, *, class_names: tuple[str, ...] | list[str] | None = None,
    mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, location: str = "memory",
) -> SourceDataset:
    """A source from uint8 arrays [N, H, W, C] and integer labels; mean/std default to the train split's."""
    splits = {"train": (train_images, train_labels), "test": (test_images, test_labels)}
    for split, (images, labels) in splits.items():
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[-1] not in (1, 3):
            raise InvalidInputError(f"{split} images must be uint8 [N, H, W, C] with C in (1, 3)")
        if np.asarray(labels).shape != (len(images),) or not np.issubdtype(np.asarray(labels).dtype, np.integer):
            raise InvalidInputError(f"{split} labels must be integers [N] = [{len(images)}]")
    if test_images.shape[1:] != train_images.shape[1:]:
        raise InvalidInputError(f"train and test images differ in shape: {train_images.shape[1:]} "
                                f"vs {test_images.shape[1:]}")
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    k = int(max(train_labels.max(initial=0), test_labels.max(initial=0))) + 1
    names = tuple(str(c) for c in (class_names if class_names is not None else range(k)))
    if min(train_labels.min(initial=0), test_labels.min(initial=0)) < 0 or k > len(names):
        raise InvalidInputError(f"labels must lie in [0, {len(names)})")
    if mean is None or std is None:
        auto_mean, auto_std = _channel_stats(train_images)
        mean = auto_mean if mean is None else mean
        std = auto_std if std is None else std
    return SourceDataset(name, train_images, train_labels, test_images, test_labels, names,
                         tuple(float(v) for v in mean), tuple(float(v) for v in std), location)


def image_folder(train_root: str | os.PathLike[str], test_root: str | os.PathLike[str] | None = None, *,
                 size: int | tuple[int, int] | None = None, name: str | None = None) -> SourceDataset:
    """Images in one sub-folder per class (sorted names are the classes).

    Without ``test_root`` a ``train/`` and ``test/`` pair below ``train_root`` is used when
    present; otherwise the test split is empty. Images are RGB unless every file is greyscale;
    ``size`` resizes (bilinear), otherwise all images must share one size.
    """
    root = Path(train_root)
    if test_root is None and (root / "train").is_dir() and (root / "test").is_dir():
        root, test_root = root / "train", root / "test"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise SourceNotFoundError(f"{root}: no class sub-folders found")
    train_files = _list_images(root, classes)
    test_files = _list_images(Path(test_root), classes) if test_root is not None else []
    grey = _all_greyscale([f for f, _ in train_files + test_files])
    train_x, train_y = _load_images(train_files, grey, size)
    test_x, test_y = _load_images(test_files, grey, size, like=train_x)
    return from_arrays(name or root.name, train_x, train_y, test_x, test_y, class_names=classes,
                       location=str(root))


def load_source(name_or_path: str | os.PathLike[str]) -> SourceDataset:
    """``"fashion-mnist"`` or a folder (Fashion-MNIST IDX files, or class sub-folders)."""
    if str(name_or_path).lower() in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return fashion_mnist()
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise SourceNotFoundError(f"{name_or_path}: not a known dataset name (fashion-mnist) or a folder")
    if _find_idx(folder, _FASHION_MNIST_FILES["train_images"]):
        return fashion_mnist(folder)
    return image_folder(folder)


def random_real(source: SourceDataset, ipc: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded "random real" selection: ``ipc`` train images per class.

    Returns (images, labels, train indices), class by class; a stand-in for the output of an
    image-level distillation method, to be recorded as such in the provenance.
    """
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(source.num_classes):
        pool = np.flatnonzero(source.train_labels == c)
        if len(pool) < ipc:
            raise InvalidInputError(f"class {c} has {len(pool)} train images, fewer than ipc={ipc}")
        picks.append(np.sort(rng.choice(pool, ipc, replace=False)))
    index = np.concatenate(picks)
    return source.train_images[index], source.train_labels[index], index


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InvalidInputError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise InvalidInputError(f"{path}: IDX header says {dims} but holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _list_images(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    found = []
    for label, cls in enumerate(classes):
        folder = root / cls
        if folder.is_dir():
            found += [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES]
    return found


def _all_greyscale(files: list[Path]) -> bool:
    from PIL import Image

    for path in files:
        with Image.open(path) as im:
            if im.mode not in ("L", "1", "I;16", "I"):
                return False
    return bool(files)


def _load_images(files: list[tuple[Path, int]], grey: bool, size: int | tuple[int, int] | None,
                 like: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images = []
    for path, _ in files:
        with Image.open(path) as im:
            im = im.convert("L" if grey else "RGB")
            if size is not None:
                w, h = (size, size) if isinstance(size, int) else (size[1], size[0])
                im = im.resize((w, h), Image.BILINEAR)
            images.append(np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, 1 if grey else 3))
    if not images:
        shape = like.shape[1:] if like is not None else (1, 1, 1 if grey else 3)
        return np.zeros((0, *shape), np.uint8), np.zeros(0, np.int64)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise InvalidInputError(f"images differ in size {sorted(shapes)[:3]}...; pass size= to resize them")
    return np.stack(images), np.array([label for _, label in files], dtype=np.int64)
