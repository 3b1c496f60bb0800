"""Source datasets as uint8 arrays: the real data a labeler learns from and models are tested on.

Built in: Fashion-MNIST (from the Debian package ``dataset-fashion-mnist`` or any folder with
its four IDX files, recognised by their contents), any other IDX folder under a name the user
gives, plain numpy arrays, and image folders with one sub-folder per class.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._write import _channel_stats
from .errors import InvalidInputError, LaddError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fmnist")
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
# MNIST and other datasets ship files with the same names, so Fashion-MNIST is recognised by
# content: sha256 of each file's decoded uint8 array (header stripped, so .gz and raw files match),
# computed from /usr/share/datasets/fashion-mnist (Debian dataset-fashion-mnist) as
# hashlib.sha256(_read_idx(path).tobytes()).hexdigest().
_FASHION_MNIST_SHA256 = {
    "train_images": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "train_labels": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "test_images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "test_labels": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class SourceNotFoundError(LaddError, FileNotFoundError):
    """A source dataset is not installed where the library looks for it."""


@dataclasses.dataclass(frozen=True)
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
    location: str = dataclasses.field(default="memory")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def has_test(self) -> bool:
        """Whether there is a test split (an image folder without ``test/`` has none)."""
        return len(self.test_labels) > 0

    def check_matches(self, num_classes: int, image_shape: Sequence[int], what: str = "test source",
                      option: str = "--test-source") -> None:
        """Refuse to pair this source with data of another shape or class count (e.g. a container).

        ``what`` names this source's role and ``option`` the command-line flag that picks it.
        """
        theirs = tuple(int(v) for v in image_shape)
        if theirs != self.image_shape or int(num_classes) != self.num_classes:
            raise InvalidInputError(
                f"{what} {self.name} is {_shape_text(self.image_shape)} with {self.num_classes} classes; "
                f"the container is {_shape_text(theirs)} with {num_classes} classes: "
                f"pass a matching {what} ({option})")

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
    """Fashion-MNIST: 60,000 train and 10,000 test images, 28x28x1, 10 classes (MIT licence).

    The four IDX files must hold Fashion-MNIST itself (checked by digest), so that another
    dataset in the same format is never loaded under its name; use :func:`idx_folder` for those.
    """
    candidates = [Path(root)] if root is not None else data_dirs("fashion-mnist")
    for folder in candidates:
        arrays = _read_idx_folder(folder)
        if arrays is None:
            continue
        differ = [_IDX_FILES[key] for key, digest in _FASHION_MNIST_SHA256.items()
                  if hashlib.sha256(arrays[key].data).hexdigest() != digest]
        if differ:
            raise InvalidInputError(
                f"{folder}: the IDX files are not Fashion-MNIST ({', '.join(differ)} differ from it); "
                "to load them as another dataset, pass name= (--source-name on the command line) to "
                "load_source, or use idx_folder(folder, name)")
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


def idx_folder(root: str | os.PathLike[str], name: str, *, class_names: Sequence[str] | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> SourceDataset:
    """Any dataset in MNIST's four IDX files (``.gz`` or raw), under the ``name`` the user gives.

    Class names default to "0".."K-1" and mean/std to the train split's.
    """
    folder = Path(root)
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"{folder}: an IDX source needs a non-empty name")
    arrays = _read_idx_folder(folder)
    if arrays is None:
        raise SourceNotFoundError(f"{folder}: no IDX files ({', '.join(_IDX_FILES.values())}, raw or .gz)")
    images = {}
    for split in ("train", "test"):
        x = arrays[f"{split}_images"]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or arrays[f"{split}_labels"].ndim != 1:
            raise InvalidInputError(f"{folder}: {split} IDX files must hold images [N, H, W(, C)] and labels [N]")
        images[split] = x
    num_classes = int(max(arrays["train_labels"].max(initial=0), arrays["test_labels"].max(initial=0))) + 1
    if class_names is not None:
        class_names = _checked_class_names(class_names, num_classes, name)
    return from_arrays(name, images["train"], arrays["train_labels"], images["test"], arrays["test_labels"],
                       class_names=class_names, mean=mean, std=std, location=str(folder))


def from_arrays(
    name: str, train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
    test_labels: np.ndarray, *, class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, location: str = "memory",
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
    channels = train_images.shape[-1]
    return SourceDataset(name, train_images, train_labels, test_images, test_labels, names,
                         _checked_stats(mean, channels, "mean"), _checked_stats(std, channels, "std"), location)


def image_folder(train_root: str | os.PathLike[str], test_root: str | os.PathLike[str] | None = None, *,
                 size: int | tuple[int, int] | None = None, name: str | None = None) -> SourceDataset:
    """Images in one sub-folder per class (sorted names are the classes).

    Without ``test_root`` a ``train/`` and ``test/`` pair below ``train_root`` is used when
    present; otherwise the test split is empty. Images are RGB unless every file is greyscale;
    ``size`` resizes (bilinear), otherwise all images must share one size. The name defaults to
    the folder given (the parent of a ``train/`` and ``test/`` pair, not ``train``).
    """
    root = Path(train_root)
    name = name or root.resolve().name
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
    return from_arrays(name, train_x, train_y, test_x, test_y, class_names=classes,
                       location=str(root))


def load_source(name_or_path: str | os.PathLike[str], *, name: str | None = None,
                class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> SourceDataset:
    """``"fashion-mnist"`` or a folder, named so that provenance never records the wrong dataset.

    A folder of IDX files is Fashion-MNIST only when its contents are (and ``name`` names no
    other dataset); anything else must be given a ``name``. A folder of class sub-folders is
    named after the folder unless ``name`` is given. ``class_names`` (one per class) and
    ``mean``/``std`` (one per channel) replace the source's own.
    """
    if str(name_or_path).lower() in _FASHION_MNIST_NAMES:
        return _replaced(fashion_mnist(), name, class_names, mean, std)
    folder = Path(name_or_path)
    if not folder.exists():
        raise SourceNotFoundError(f"{name_or_path}: no such file or folder (and not a known dataset name: "
                                  "fashion-mnist)")
    if not folder.is_dir():
        raise InvalidInputError(f"{name_or_path}: a source is a folder (IDX files or class sub-folders) "
                                "or fashion-mnist, not a file")
    if any(_find_idx(folder, stem) for stem in _IDX_FILES.values()):
        if name is None or name.lower() in _FASHION_MNIST_NAMES:
            return _replaced(fashion_mnist(folder), None, class_names, mean, std)
        return idx_folder(folder, name, class_names=class_names, mean=mean, std=std)
    return _replaced(image_folder(folder, name=name), None, class_names, mean, std)


def random_real(source: SourceDataset, ipc: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded "random real" selection: ``ipc`` train images per class.

    Returns (images, labels, train indices) class by class, each class in draw order: a prefix
    of a permutation seeded by (seed, class). Draws are therefore nested: the draw for a smaller
    ``ipc`` is exactly the first images of each class of a larger one, so IPC comparisons differ
    only in the images added. A stand-in for the output of an image-level distillation method,
    to be recorded as such in the provenance.
    """
    if isinstance(ipc, bool) or not isinstance(ipc, (int, np.integer)) or ipc < 1:
        raise InvalidInputError(f"ipc must be an integer >= 1, got {ipc!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be an integer >= 0, got {seed!r}")
    order = np.argsort(source.train_labels, kind="stable")
    bounds = np.searchsorted(source.train_labels[order], np.arange(source.num_classes + 1))
    picks = []
    for c, class_name in enumerate(source.class_names):
        pool = order[bounds[c]:bounds[c + 1]]
        if len(pool) < ipc:
            raise InvalidInputError(f"class {c} ({class_name!r}) has {len(pool)} train images, "
                                    f"fewer than ipc={ipc}")
        picks.append(np.random.default_rng([int(seed), c]).permutation(pool)[:ipc])
    index = np.concatenate(picks)
    return source.train_images[index], source.train_labels[index], index


def _replaced(source: SourceDataset, name: str | None, class_names: Sequence[str] | None,
              mean: Sequence[float] | None, std: Sequence[float] | None) -> SourceDataset:
    updates: dict = {}
    if name is not None:
        updates["name"] = name
    if class_names is not None:
        updates["class_names"] = _checked_class_names(class_names, source.num_classes, source.name)
    channels = source.image_shape[-1]
    if mean is not None:
        updates["mean"] = _checked_stats(mean, channels, "mean")
    if std is not None:
        updates["std"] = _checked_stats(std, channels, "std")
    return dataclasses.replace(source, **updates) if updates else source


def _checked_class_names(class_names: Sequence[str], num_classes: int, name: str) -> tuple[str, ...]:
    names = (class_names,) if isinstance(class_names, str) else tuple(str(c) for c in class_names)
    if len(names) != num_classes:
        raise InvalidInputError(f"{name} has {num_classes} classes but {len(names)} class names were given")
    return names


def _checked_stats(values: Sequence[float] | float, channels: int, what: str) -> tuple[float, ...]:
    try:
        array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be numbers, got {values!r}") from None
    if array.shape != (channels,) or not np.isfinite(array).all() or (what == "std" and (array <= 0).any()):
        rule = " > 0" if what == "std" else ""
        raise InvalidInputError(f"{what} must be {channels} finite number(s){rule}, one per channel; got {values!r}")
    return tuple(float(v) for v in array)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


def _read_idx_folder(folder: Path) -> dict[str, np.ndarray] | None:
    """The four IDX arrays, or None when the folder holds none of the files."""
    paths = {key: _find_idx(folder, stem) for key, stem in _IDX_FILES.items()}
    if not any(paths.values()):
        return None
    missing = [_IDX_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise SourceNotFoundError(f"{folder}: IDX file(s) missing: {', '.join(missing)} (raw or .gz)")
    return {key: _read_idx(path) for key, path in paths.items()}  # type: ignore[arg-type]


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
