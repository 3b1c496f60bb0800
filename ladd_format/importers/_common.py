"""What every importer shares: the safe ``.pt`` loader, the tables of statistics and class names,
label checks, de-normalisation to uint8 (with ZCA un-whitening and the clipping rule) and the
provenance records.

Readers (``_mtt``, ``_dc``, ``_folders``) only find and check a layout's files; turning floats
into pixels happens here once, so every producer is de-normalised and recorded the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..sources import FASHION_MNIST_CLASSES, MAX_BYTES, InputTooLargeError, _checked_path, _Limits


class InputNotFoundError(InvalidInputError, FileNotFoundError):
    """A file or folder the import was pointed at does not exist."""


class WhitenedImagesError(InvalidInputError):
    """The tensors are ZCA-whitened and the user has not said how to get pixels back."""


class ClippingError(InvalidInputError):
    """De-normalising clipped so many values that the statistics are most likely wrong."""


NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    # MTT-family code normalises CIFAR-100 with the CIFAR-10 statistics: a separate name, so
    # the user states which one the file was written with.
    "cifar100-mtt": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tiny-imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # GLaD's ImageNet-subset branch (SVHN's mean with ImageNet's std).
    "glad-imagenet-subset": ((0.4377, 0.4438, 0.4728), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
"""Per-channel (mean, std) on the 0..1 scale, as the distillation code bases normalise."""

_CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm".split())
_DIGITS = tuple(str(i) for i in range(10))
DATASETS: dict[str, tuple[str, ...] | int] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "cifar100": _CIFAR100_CLASSES,
    "mnist": _DIGITS,
    "fashion-mnist": FASHION_MNIST_CLASSES,
    "svhn": _DIGITS,
    "imagenet": 1000,
    "tiny-imagenet": 200,
}
"""Class names (or only the class count) of the datasets the field distils."""

KINDS = {"mtt": "MTT", "tesla": "TESLA", "glad": "GLaD", "datm": "DATM", "dc": "DC", "dsa": "DSA",
         "dm": "DM", "sre2l": "SRe2L", "rded": "RDED", "folder": "unknown"}
"""Importer kinds and the method name each records in the provenance."""

CLIP_MARGIN = 32
"""How far outside 0..255 (in levels) a de-normalised value must land to count as far clipped."""

MAX_CLIPPED_FRACTION = 0.10
"""More than this fraction of values far clipped (beyond :data:`CLIP_MARGIN`) is refused unless
clipping is allowed.

Why a margin: distilled pixels are optimised freely, so correct statistics do clip many values,
but by little. DM-distilled Fashion-MNIST (ipc 10, image lr 1, 1000 iterations) de-normalised
with its own statistics clips 36% of the values, yet only 1.5% by more than 32 levels (0.09% by
more than 64; 1.1% at 500 iterations, so it grows slowly). Wrong statistics move whole regions
far out: the same images with MNIST's statistics put 29% more than 32 levels out, with
mean = std = 0.5 22%, with statistics on the 0..255 scale 97%. Statistics close to the right
ones clip little and pass: no clipping count can tell those apart.
"""

Stats = tuple[str, tuple[float, ...], tuple[float, ...]]
"""(name, mean, std) of a normalisation; name is ``"explicit"`` for a given mean and std."""

ZCA_WAYS_OUT = ("un-whiten them with zca_inverse= (--zca-inverse FILE.pt on the command line: a dict with "
                "kornia's 'transform_inv' [D, D] and 'mean_vector' [1, D]), or import MTT's un-whitened copy "
                "{copy} as the source instead")
"""The two ways out of whitened tensors, named by every message that refuses them."""


@dataclass
class Distilled:
    """A distilled set read from a code base's files, ready to write as a container.

    ``soft`` holds the source's own image-level soft labels [M, K] (TESLA probabilities
    or DATM logits, ``soft_kind`` says which), or ``None``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    mean: list[float] | None
    std: list[float] | None
    distillation: dict[str, Any]
    soft: np.ndarray | None = None
    soft_kind: str | None = None
    clipped: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_MAX_METADATA_BYTES = 1 << 20
"""Cap on a torch.save file's pickle and zip directory. They only describe tensors, whose bytes
lie in records of their own, so 1 MiB describes thousands; unpickling builds Python objects tens
of times the pickle's size, so this stays far below ``max_bytes``."""
_MAX_DEPTH = 16
"""Nesting a loaded file may have (DC's ``res_*.pt`` nests three deep)."""


def load_pt(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES,
            within: str | os.PathLike[str] | None = None) -> Any:
    """``torch.load(weights_only=True)`` of a file that cannot make it allocate more than it holds.

    The file must be a regular file of at most ``max_bytes`` (inside ``within`` when given: files
    found in a folder), a zip as torch >= 1.6 writes, with no compressed record; every tensor
    loaded must address no more than its storage holds. A file that needs arbitrary unpickling
    is refused, never executed.
    """
    import torch

    path = Path(path)
    if not os.path.lexists(path):
        raise InputNotFoundError(f"{path}: no such file")
    limits = _Limits(max_bytes=max_bytes, cli=True)
    _checked_path(path, None if within is None else Path(within), limits)
    _check_archive(path)
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals arrive as the unpickler's own error type
        if type(exc).__name__ != "UnpicklingError":
            raise InvalidInputError(f"{path}: not a readable torch.save file ({exc})") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it references the Python object {found.group(1)}" if found else \
            "it is not a tensors-only torch.save file"
        raise InvalidInputError(
            f"{path}: needs arbitrary unpickling ({what}); it was refused and not executed. "
            "Re-save it as tensors, numbers, lists and dicts only.") from None
    _check_tensors(body, path)
    return body


def _check_archive(path: Path) -> None:
    """Refuse what would let ``torch.load`` allocate more than the file holds: a legacy (pre-zip)
    file, whose pickle declares storage sizes before any data is read; compressed or overlapping
    records (a zip bomb); an oversized zip directory or pickle (see :data:`_MAX_METADATA_BYTES`)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise InvalidInputError(
                    f"{path}: not a zip-format torch.save file (what torch >= 1.6 writes); legacy torch files and "
                    "plain pickles are refused, since what loading them allocates is not bounded by their size")
            directory = _directory_size(f, size)
            if directory > _MAX_METADATA_BYTES:
                raise InputTooLargeError(f"{path}: its zip directory is {directory} bytes, more than the "
                                         f"{_MAX_METADATA_BYTES} a torch.save file needs")
            with zipfile.ZipFile(f) as archive:
                records = archive.infolist()
    except InvalidInputError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as exc:
        raise InvalidInputError(f"{path}: not a readable torch.save file ({exc})") from None
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED or record.compress_size != record.file_size:
            raise InvalidInputError(f"{path}: record {record.filename} is compressed; torch.save stores records "
                                    "as they are, and a compressed one can unpack to far more than the file holds")
        if record.filename.endswith(".pkl") and record.file_size > _MAX_METADATA_BYTES:
            raise InputTooLargeError(f"{path}: its pickle {record.filename} is {record.file_size} bytes, more than "
                                     f"the {_MAX_METADATA_BYTES} a torch.save file of tensors needs")
    if sum(record.file_size for record in records) > size:
        raise InvalidInputError(f"{path}: its records declare more bytes than the file holds (overlapping records)")


def _directory_size(f: Any, size: int) -> int:
    """The zip directory's size from the end record (zip64 too), read before ``zipfile`` parses
    the directory into objects many times its size."""
    f.seek(max(0, size - (1 << 16) - 22))
    tail = f.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) - end < 22:
        raise zipfile.BadZipFile("no end of central directory record")
    (directory,) = struct.unpack_from("<I", tail, end + 12)
    if end >= 20 and tail[end - 20:end - 16] == b"PK\x06\x07":
        (offset,) = struct.unpack_from("<Q", tail, end - 12)
        f.seek(offset)
        record = f.read(56)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            (directory,) = struct.unpack_from("<Q", record, 40)
    return directory


def _check_tensors(body: Any, path: Path) -> None:
    """Refuse nesting deeper than :data:`_MAX_DEPTH` and any tensor :func:`_check_tensor` refuses."""
    import torch

    stack = [(body, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, torch.Tensor):
            _check_tensor(value, path, where)
            continue
        if isinstance(value, dict):
            items = [(f"{where}[{k!r}]", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        if depth >= _MAX_DEPTH:
            raise InvalidInputError(f"{path}: nests deeper than {_MAX_DEPTH} levels at {where}")
        stack += [(v, w, depth + 1) for w, v in items]


def _check_tensor(t: Any, path: Path, where: str) -> None:
    """Refuse a tensor that addresses more than its storage holds.

    ``torch.load`` keeps the strides it reads, so a few bytes with zero (broadcast) or
    overlapping strides can declare any shape, which the first copy would allocate. Sorted by
    stride, each dimension must step past all the elements the smaller ones span; then the
    elements declared fit in the storage.
    """
    import torch

    what = f"the tensor at {where}" if where else "the tensor"
    if t.layout != torch.strided or t.is_quantized or t.is_nested or t.device.type != "cpu":
        raise InvalidInputError(f"{path}: {what} is not a dense CPU tensor ({t.layout}, {t.dtype}); only those "
                                "are read")
    if t.numel() == 0:
        return
    span = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n > 1):
        if stride < span:
            span = -1
            break
        span += stride * (size - 1)
    stored = t.untyped_storage().nbytes()
    if span < 0 or (t.storage_offset() + span) * t.element_size() > stored:
        raise InvalidInputError(
            f"{path}: {what} declares {list(t.shape)} {str(t.dtype).removeprefix('torch.')}, "
            f"{t.numel() * t.element_size()} bytes, with strides {list(t.stride())} over a storage of {stored} "
            "bytes; zero or overlapping strides (a broadcast) are refused: a file cannot hold more than it stores")


def split_labels(kind: str, images: np.ndarray, raw: np.ndarray, details: dict[str, Any]) -> Distilled:
    """Hard labels, or argmax of the source's soft labels (kept as ``soft``)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3) or not np.issubdtype(images.dtype, np.floating):
        raise InvalidInputError(f"images must be float [M, C, H, W] with C in (1, 3), got {images.dtype} "
                                f"{list(images.shape)}")
    m = images.shape[0]
    if raw.shape[:1] != (m,) or raw.ndim not in (1, 2):
        raise InvalidInputError(f"labels must be [M] or [M, K] with M = {m} images, got {list(raw.shape)}")
    soft = soft_kind = None
    if raw.ndim == 1:
        if raw.dtype == bool or not np.issubdtype(raw.dtype, np.integer):
            raise InvalidInputError(f"hard labels must be integers, got {raw.dtype}")
        if raw.size and raw.min() < 0:
            raise InvalidInputError(f"hard labels must be >= 0, found {raw.min()}")
        labels = raw.astype(np.int64)
    else:
        soft = raw.astype(np.float32)
        if not np.isfinite(soft).all():
            raise InvalidInputError("soft labels hold NaN or infinite values")
        soft_kind = "logits" if kind == "datm" else "probabilities"
        if soft_kind == "probabilities" and (soft.min() < 0 or np.abs(soft.sum(1) - 1).max() > 1e-3):
            raise InvalidInputError(f"{kind} soft labels must be probabilities (rows summing to 1); "
                                    "for logits use kind 'datm'")
        labels = soft.argmax(1).astype(np.int64)
    return Distilled(images, labels, [], None, None, {"method": KINDS[kind], "details": details},
                     soft=soft, soft_kind=soft_kind)


def normalization(value: Any) -> Stats:
    """A name in :data:`NORMALIZATIONS` or explicit ``(mean, std)``, checked."""
    if isinstance(value, str):
        key = value.lower().replace("_", "-")
        if key not in NORMALIZATIONS:
            raise InvalidInputError(f"unknown normalisation {value!r}; one of {', '.join(NORMALIZATIONS)} "
                                    "or explicit mean and std")
        return (key, *NORMALIZATIONS[key])
    try:
        mean, std = (tuple(float(v) for v in part) for part in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"normalisation must be a name or (mean, std), got {value!r}") from None
    if len(mean) != len(std) or not mean or not np.isfinite(mean + std).all() or min(std) <= 0:
        raise InvalidInputError(f"mean and std need one finite value per channel and std > 0, got {mean}, {std}")
    return ("explicit", mean, std)


def stats_record(stats: Stats) -> dict[str, Any]:
    return {"name": stats[0], "mean": list(stats[1]), "std": list(stats[2])}


def to_uint8(d: Distilled, stats: Stats, zca_inverse: str | os.PathLike[str] | None,
             allow_clipping: bool, max_bytes: int = MAX_BYTES) -> Distilled:
    """Un-whiten (when given the ZCA inverse), de-normalise, scale to 0..255, round and clip.

    The clipped values are counted and recorded; more than :data:`MAX_CLIPPED_FRACTION` of them
    clipped by more than :data:`CLIP_MARGIN` levels is a :class:`ClippingError` unless
    ``allow_clipping``.
    """
    name, mean, std = stats
    x = d.images.astype(np.float64)
    if not np.isfinite(x).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise InvalidInputError(f"images hold a non-finite value at {where}")
    if len(mean) != x.shape[1]:
        raise InvalidInputError(f"normalisation {name!r} has {len(mean)} channels, the images have {x.shape[1]}")
    details = d.distillation["details"]
    if zca_inverse is not None:
        x, details["zca"] = _unwhiten(x, Path(zca_inverse), max_bytes)
    x = (x * np.array(std).reshape(1, -1, 1, 1) + np.array(mean).reshape(1, -1, 1, 1)) * 255
    x = np.rint(x)
    outside = np.maximum(-x, x - 255)  # levels outside 0..255; <= 0 inside
    clipped = int(np.count_nonzero(outside > 0))
    far = int(np.count_nonzero(outside > CLIP_MARGIN)) / x.size
    if far > MAX_CLIPPED_FRACTION:
        if not allow_clipping:
            raise ClippingError(
                f"de-normalising with {name} statistics (mean {list(mean)}, std {list(std)}) clips "
                f"{100 * clipped / x.size:.1f}% of the values ({clipped} of {x.size}) to 0..255, {100 * far:.1f}% "
                f"by more than {CLIP_MARGIN} levels; more than {100 * MAX_CLIPPED_FRACTION:g}% that far out means "
                "these are most likely not the statistics the tensors were normalised with. Check normalization= "
                "(--normalization or --mean/--std on the command line), or pass allow_clipping=True "
                "(--allow-clipping) to import them clipped anyway")
        details["clipping_allowed"] = True
    d.images = np.clip(x, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()
    d.mean, d.std, d.clipped = list(mean), list(std), clipped
    details["normalization"] = stats_record(stats)
    details["clipped_values"] = clipped
    details["clipped_fraction"] = clipped / x.size
    details["clipped_far_fraction"] = far
    return d


def _unwhiten(x: np.ndarray, path: Path, max_bytes: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Undo kornia's ZCAWhitening: x = z @ transform_inv + mean_vector, per flattened image."""
    body = load_pt(path, max_bytes=max_bytes)
    if not isinstance(body, dict) or not {"transform_inv", "mean_vector"} <= set(body):
        raise InvalidInputError(f"{path}: expected a dict with 'transform_inv' [D, D] and 'mean_vector' [1, D]")
    inv = tensor(body["transform_inv"], "transform_inv").astype(np.float64)
    mean = tensor(body["mean_vector"], "mean_vector").astype(np.float64).reshape(-1)
    dim = int(np.prod(x.shape[1:]))
    if inv.shape != (dim, dim) or mean.shape != (dim,):
        raise InvalidInputError(f"{path}: ZCA inverse is {list(inv.shape)} / {list(mean.shape)}, "
                                f"the images need [{dim}, {dim}] / [{dim}]")
    out = (x.reshape(len(x), dim) @ inv + mean).reshape(x.shape)
    return out, {"unwhitened_with": path.name, "sha256": file_sha256(path)}


def tensor(value: Any, name: str) -> np.ndarray:
    """A tensor from :func:`load_pt` as a numpy array; anything else is refused."""
    if not hasattr(value, "detach"):
        raise InvalidInputError(f"{name}: expected a tensor, got {type(value).__name__}")
    try:
        return value.detach().numpy()
    except (TypeError, RuntimeError) as exc:
        raise InvalidInputError(f"{name}: numpy cannot hold this {value.dtype} tensor ({exc}); re-save it as "
                                "float32") from None


def scalar(value: Any, name: str) -> float:
    """One finite number from a tensor, list or number (DATM's lr_best.pt)."""
    number = json_numbers(value)
    while isinstance(number, list) and len(number) == 1:
        number = number[0]
    if not isinstance(number, float):
        raise InvalidInputError(f"{name}: expected one finite number, got {type(value).__name__}")
    return number


_MAX_RECORDED = 1 << 12
"""Numbers one tensor may add to the provenance (accuracies, a learned lr): a record, not data."""


def json_numbers(value: Any) -> Any:
    """``value`` as JSON (dicts, lists, floats), or ``None`` when it holds anything else."""
    if isinstance(value, dict):
        items = {str(k): json_numbers(v) for k, v in value.items()}
        return None if any(v is None for v in items.values()) else items
    if isinstance(value, (list, tuple)):
        items = [json_numbers(v) for v in value]
        return None if any(v is None for v in items) else items
    if hasattr(value, "detach"):
        return json_numbers(value.detach().tolist()) if value.numel() <= _MAX_RECORDED else None
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    return None


def files_record(kind: str, files: list[Path]) -> dict[str, Any]:
    """The provenance of the files read: each name with its sha256."""
    return {"kind": kind, "files": {p.name: file_sha256(p) for p in files}}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def array_sha256(a: np.ndarray) -> str:
    """sha256 of float32 little-endian C-order bytes (the digest rule of the container arrays)."""
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").tobytes()).hexdigest()
