"""Source datasets as uint8 arrays: the real data a labeler learns from and models are tested on.

Built in: Fashion-MNIST (from the Debian package ``dataset-fashion-mnist`` or any folder with
its four IDX files, recognised by their contents), any other IDX folder under a name the user
gives, plain numpy arrays, and image folders with one sub-folder per class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import os
import stat
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._write import _channel_stats
from .errors import InputTooLargeError, InvalidInputError, LaddError, UnsafePathError  # noqa: F401 - re-exported

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
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
"""The only decoders image folders use: PIL otherwise tries every plugin by content, and some hand
the file to other programs (EPS to Ghostscript)."""
_GREY_MODES = ("L", "1", "I;16", "I")
_DAMAGED = (OSError, SyntaxError, ValueError, EOFError, struct.error)
"""What PIL raises for a file that is not an image or is truncated or damaged."""
_FILE_TYPES = {stat.S_IFDIR: "a folder", stat.S_IFREG: "a file", stat.S_IFIFO: "a FIFO",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}

MAX_IMAGE_PIXELS = 1 << 26
"""Pixels one image may declare (64 Mi, e.g. 8192 x 8192), checked from its header before decoding.
Distilled images are a few hundred pixels a side; PIL's own guard only warns above 89 M pixels
and refuses above 179 M."""
MAX_IMAGES = 1 << 20
"""Default cap on the image files one folder read opens (1 Mi: ImageNet-1k at 1000 per class)."""
MAX_BYTES = 4 << 30
"""Default cap (4 GiB) on each input file's size and on the bytes a folder's images decode to:
inputs come from strangers, so what a read may allocate is bounded before it starts."""


class SourceNotFoundError(LaddError, FileNotFoundError):
    """A source dataset is not installed where the library looks for it."""


@dataclasses.dataclass(frozen=True)
class _Limits:
    """The caps of one read; ``cli`` makes messages name the command-line options too."""

    max_bytes: int = MAX_BYTES
    max_images: int = MAX_IMAGES
    cli: bool = False

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")

    def over(self, name: str, what: str) -> InputTooLargeError:
        """The error for ``what`` exceeding limit ``name``, saying how to raise it."""
        flag = f" (--{name.replace('_', '-')} on the command line)" if self.cli else ""
        return InputTooLargeError(f"{what}, over the limit {name}={getattr(self, name)}; if you trust this "
                                  f"input, raise it with {name}={flag}")


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
                 size: int | tuple[int, int] | None = None, name: str | None = None, max_bytes: int = MAX_BYTES,
                 max_images: int = MAX_IMAGES) -> SourceDataset:
    """Images in one sub-folder per class (sorted names are the classes).

    Without ``test_root`` a ``train/`` and ``test/`` pair below ``train_root`` is used when
    present; otherwise the test split is empty. Images are RGB unless every file is greyscale;
    ``size`` resizes (bilinear), otherwise all images must share one size. The name defaults to
    the folder given (the parent of a ``train/`` and ``test/`` pair, not ``train``).

    Folders may come from strangers: links leading out of the folder given and special files
    are refused, and the image count (``max_images``), each image's declared size
    (:data:`MAX_IMAGE_PIXELS`) and the decoded bytes (``max_bytes``) are checked from the
    headers before any image is decoded.
    """
    limits = _Limits(max_bytes, max_images)
    root = within = Path(train_root)
    name = name or root.resolve().name
    test_within = within if test_root is None else Path(test_root)
    if test_root is None and (root / "train").is_dir() and (root / "test").is_dir():
        root, test_root = root / "train", root / "test"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise SourceNotFoundError(f"{root}: no class sub-folders found")
    train_files = _list_images(root, classes, within, limits)
    test_files = [] if test_root is None else _list_images(Path(test_root), classes, test_within, limits,
                                                           len(train_files))
    (train_x, train_y), (test_x, test_y) = _read_images([train_files, test_files], size, limits)
    return from_arrays(name, train_x, train_y, test_x, test_y, class_names=classes,
                       location=str(root))


def load_source(name_or_path: str | os.PathLike[str], *, name: str | None = None,
                class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, max_bytes: int = MAX_BYTES,
                max_images: int = MAX_IMAGES) -> SourceDataset:
    """``"fashion-mnist"`` or a folder, named so that provenance never records the wrong dataset.

    A folder of IDX files is Fashion-MNIST only when its contents are (and ``name`` names no
    other dataset); anything else must be given a ``name``. A folder of class sub-folders is
    named after the folder unless ``name`` is given, and read by :func:`image_folder` with
    ``max_bytes`` and ``max_images``. ``class_names`` (one per class) and ``mean``/``std``
    (one per channel) replace the source's own.
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
    return _replaced(image_folder(folder, name=name, max_bytes=max_bytes, max_images=max_images), None,
                     class_names, mean, std)


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


def _checked_path(path: Path, within: Path | None = None, limits: _Limits | None = None, *,
                  folder: bool = False) -> Path:
    """``path``, refused unless it resolves inside ``within`` to a regular file (``folder``: a
    folder) of at most ``limits.max_bytes``: a downloaded folder may link to system files, which
    would be read into the container, or hold FIFOs and devices, which block or never end."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise UnsafePathError(f"{path}: a link that cannot be followed ({exc})") from None
    shown = f"{path} (a link to {target})" if target != path.absolute() else str(path)
    if within is not None and not target.is_relative_to(within.resolve()):
        raise UnsafePathError(f"{shown} is not a {'folder' if folder else 'file'} inside {within}; refused")
    try:
        st = target.stat()
    except OSError as exc:
        raise InvalidInputError(f"{shown} cannot be read ({exc.strerror})") from None
    kind = stat.S_IFMT(st.st_mode)
    if kind != (stat.S_IFDIR if folder else stat.S_IFREG):
        raise UnsafePathError(f"{shown} is {_FILE_TYPES.get(kind, 'a special file')}, not a "
                              f"{'folder' if folder else 'regular file'}; refused")
    if limits is not None and not folder and st.st_size > limits.max_bytes:
        raise limits.over("max_bytes", f"{path} is {st.st_size} bytes")
    return path


def _list_images(root: Path, classes: list[str], within: Path, limits: _Limits,
                 listed: int = 0) -> list[tuple[Path, int]]:
    """The image files of each class folder, checked by :func:`_checked_path`; ``listed`` more
    were listed already and count towards ``limits.max_images``."""
    found: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        _checked_path(folder, within, folder=True)
        files = []
        for p in folder.iterdir():
            if p.suffix.lower() in _IMAGE_SUFFIXES:
                files.append((_checked_path(p, within, limits), label))
                if listed + len(found) + len(files) > limits.max_images:
                    raise limits.over("max_images", f"{within} holds more than {limits.max_images} images")
        found += sorted(files)
    return found


@contextlib.contextmanager
def _image(path: Path) -> Iterator[Any]:
    """``path`` opened by PIL once its declared size is checked; a file that is no image, or is
    damaged when decoded inside the block, is an :class:`InvalidInputError` naming it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_IMAGE_PIXELS is lower
            with Image.open(path, formats=_PIL_FORMATS) as im:
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputTooLargeError(f"{path}: declares {width} x {height} pixels, more than the "
                                             f"{MAX_IMAGE_PIXELS} pixels one image may have")
                yield im
    except LaddError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputTooLargeError(f"{path}: declares more than the {MAX_IMAGE_PIXELS} pixels one image may have "
                                 f"({exc})") from None
    except _DAMAGED as exc:
        raise InvalidInputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _read_images(splits: list[list[tuple[Path, int]]], size: int | tuple[int, int] | None,
                 limits: _Limits) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each split's files as uint8 [N, H, W, C] and labels [N]: RGB unless every file is greyscale.

    Every header is read first, so that a size mismatch and the decoded bytes (against
    ``limits.max_bytes``) are refused before any pixel is decoded.
    """
    headers = []
    for files in splits:
        split = []
        for path, _ in files:
            with _image(path) as im:
                split.append((im.mode, (im.height, im.width)))
        headers.append(split)
    grey = any(headers) and all(mode in _GREY_MODES for split in headers for mode, _ in split)
    channels = 1 if grey else 3
    if size is not None:
        target = (size, size) if isinstance(size, int) else (size[0], size[1])
        headers = [[(mode, target) for mode, _ in split] for split in headers]
    shapes = []
    for split in headers:
        found = sorted({hw for _, hw in split})
        if len(found) > 1:
            raise InvalidInputError(f"images differ in size (height, width) {found[:3]}...; pass size= to resize "
                                    "them")
        shapes.append(found[0] if found else None)
    total = channels * sum(h * w for split in headers for _, (h, w) in split)
    if total > limits.max_bytes:
        raise limits.over("max_bytes", f"the {sum(map(len, splits))} images decode to {total} bytes")
    fallback = next((s for s in shapes if s is not None), (1, 1))
    return [_decode(files, shape or fallback, channels, size is not None) for files, shape in zip(splits, shapes)]


def _decode(files: list[tuple[Path, int]], shape: tuple[int, int], channels: int,
            resize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Decode into one preallocated array, so that memory is what the headers declared."""
    from PIL import Image

    out = np.empty((len(files), *shape, channels), np.uint8)
    for i, (path, _) in enumerate(files):
        with _image(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if resize:
                im = im.resize((shape[1], shape[0]), Image.BILINEAR)
            pixels = np.asarray(im, dtype=np.uint8)
        if pixels.shape[:2] != shape:
            raise InvalidInputError(f"{path}: decoded to {pixels.shape[:2]}, its header said {shape}")
        out[i] = pixels.reshape(*shape, channels)
    return out, np.array([label for _, label in files], dtype=np.int64)
