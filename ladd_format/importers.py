"""Import what dataset-distillation code bases save, turning it into a LADD container.

The field saves results in a few layouts (see ``RESEARCH.md``): MTT / TESLA / GLaD / DATM
write normalised float tensors (``images_best.pt``, ``labels_best.pt``), DC / DSA / DM one
``res_*.pt`` dict, SRe2L / RDED JPEG class folders. Tensors are de-normalised with a named
dataset's statistics, scaled to 0..255 and rounded to uint8; every choice (statistics,
clipped values, soft labels, learned lr) goes into ``distillation.details``.

``.pt`` files are read with ``torch.load(weights_only=True)`` only: a file that needs
arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_args import add_labeling_options
from ._write import write
from .errors import InvalidInputError
from .sources import FASHION_MNIST_CLASSES

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

_TENSOR_KINDS = ("mtt", "tesla", "glad", "datm")
_RESULT_KINDS = ("dc", "dsa", "dm")
HARD_LABELS_PROVENANCE = "hard-labels (one-hot, repeated per crop)"
SOFT_LABELS_PROVENANCE = "source-soft-labels (repeated per crop)"


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


def read_distilled(
    kind: str, src: str | os.PathLike[str], *,
    normalization: str | tuple[Sequence[float], Sequence[float]] | None = None, dataset: str | None = None,
    labels: str | os.PathLike[str] | None = None, lr: str | os.PathLike[str] | None = None,
    experiment: int = 0, zca: bool = False,
    zca_inverse: str | os.PathLike[str] | None = None, class_names: Sequence[str] | None = None,
) -> Distilled:
    """Read a code base's result (``kind`` in :data:`KINDS`) into uint8 images and labels.

    Tensor kinds need ``normalization``: a name in :data:`NORMALIZATIONS` or explicit
    ``(mean, std)``. ``dataset`` (default: the normalisation's name) gives class names and
    the provenance's source dataset. ZCA cannot be detected from the tensors, so ``zca=True``
    must say so, with ``zca_inverse`` (see :func:`_unwhiten`).
    """
    if kind not in KINDS:
        raise InvalidInputError(f"unknown import kind {kind!r}; one of {', '.join(KINDS)}")
    src = Path(src)
    stats = _normalization(normalization) if normalization is not None else None
    if dataset is None and isinstance(normalization, str):
        dataset = normalization.removesuffix("-mtt")
    if kind in _TENSOR_KINDS or kind in _RESULT_KINDS:
        if stats is None:
            raise InvalidInputError(
                f"{kind} saves normalised tensors: name the normalisation ({', '.join(NORMALIZATIONS)}) "
                "or give mean and std")
        if kind in _TENSOR_KINDS:
            if experiment:
                raise InvalidInputError(f"experiment applies to res_*.pt files (dc, dsa, dm), not {kind}")
            result = _read_tensor_files(kind, src, labels, lr)
        else:
            if labels is not None or lr is not None:
                raise InvalidInputError(f"{kind}: labels live inside the res_*.pt file and no lr is saved")
            result = _read_result_file(kind, src, experiment)
        result = _to_uint8(result, stats, zca, zca_inverse)
    else:
        if zca:
            raise InvalidInputError(f"{kind} images are stored as image files; ZCA does not apply")
        result = _read_folder(kind, src)
        if stats is not None:
            result.mean, result.std = list(stats[1]), list(stats[2])
            result.distillation["details"]["normalization"] = _stats_record(stats)
    result.class_names = _class_names(result, dataset, class_names)
    result.distillation["source_dataset"] = dataset or "unknown"
    return result


def write_distilled(
    distilled: Distilled, out: str | os.PathLike[str], *, labeler: Any = None, n: int = 5, ratio: float = 0.625,
    temperature: float = 1.0, encoding: str | None = None, overwrite: bool = False, progress: bool = False,
) -> Path:
    """Write ``distilled`` as a container: dense labels from ``labeler`` when given.

    Without a labeler the source's soft labels, else one-hot hard labels, are repeated for
    every crop, and the ``labeler`` provenance says so. ``labeler`` is a
    :class:`ladd_format.labeler.Labeler` or a checkpoint path.
    """
    d = distilled
    details = d.distillation["details"]
    if d.soft is not None:
        details["soft_labels"] = {
            "kind": d.soft_kind, "shape": list(d.soft.shape), "sha256": _array_sha256(d.soft),
            "stored_as": "not stored: dense labels come from the labeler" if labeler is not None
            else "dense labels, the image's soft label repeated per crop"}
    if labeler is not None:
        from .labeler import Labeler, augment, load_labeler
        from .sampler import UniformSampler

        if not isinstance(labeler, Labeler):
            labeler = load_labeler(labeler)
        names = d.class_names if len(d.class_names) == labeler.config.num_classes else None
        return augment(out, d.images, d.labels, labeler, sampler=UniformSampler(n, ratio), temperature=temperature,
                       distillation=d.distillation, class_names=names, encoding=encoding, overwrite=overwrite,
                       progress=progress)
    per_image, values, source = _image_soft_labels(d)
    dense = np.repeat(per_image[:, None, :], n * n, axis=1)
    return write(out, d.images, d.labels, dense, class_names=d.class_names, mean=d.mean, std=d.std,
                 sampler={"n": n, "ratio": ratio}, encoding=encoding, values=values,
                 temperature=temperature if values == "logits" else 1.0,
                 labeler={"architecture": source, "source_dataset": d.distillation["source_dataset"]},
                 distillation=d.distillation, overwrite=overwrite)


def import_distilled(kind: str, src: str | os.PathLike[str], out: str | os.PathLike[str], *,
                     labeler: Any = None, n: int = 5, ratio: float = 0.625, temperature: float = 1.0,
                     encoding: str | None = None, overwrite: bool = False, **read_kwargs: Any) -> Path:
    """:func:`read_distilled` then :func:`write_distilled`: one call from result files to container."""
    distilled = read_distilled(kind, src, **read_kwargs)
    return write_distilled(distilled, out, labeler=labeler, n=n, ratio=ratio, temperature=temperature,
                           encoding=encoding, overwrite=overwrite)


def load_pt(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals arrive as the unpickler's own error type
        if type(exc).__name__ != "UnpicklingError":
            raise InvalidInputError(f"{path}: not a readable torch.save file ({exc})") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it references the Python object {found.group(1)}" if found else \
            "it is not a tensors-only torch.save file"
        raise InvalidInputError(
            f"{path}: needs arbitrary unpickling ({what}); it was refused and not executed. "
            "Re-save it as tensors, numbers, lists and dicts only.") from None


# -- readers ------------------------------------------------------------------------------


def _read_tensor_files(kind: str, src: Path, labels: Any, lr: Any) -> Distilled:
    """MTT / TESLA / GLaD / DATM: images_*.pt + labels_*.pt (+ DATM's lr_best.pt)."""
    images_path = src / "images_best.pt" if src.is_dir() else src
    # images_<it>.pt and MTT's un-whitened copy images_zca_<it>.pt pair with labels_<it>.pt
    labels_path = Path(labels) if labels is not None else \
        images_path.with_name(re.sub(r"^images(_zca)?", "labels", images_path.name))
    lr_path = Path(lr) if lr is not None else images_path.with_name(re.sub(r"^images(_zca)?", "lr", images_path.name))
    if lr is None and (kind != "datm" or not lr_path.is_file()):
        lr_path = None
    if labels_path == images_path:
        raise InvalidInputError(f"{src}: cannot tell the labels file; pass labels=")
    files = [images_path, labels_path] + ([lr_path] if lr_path is not None else [])
    images = _tensor(load_pt(images_path), images_path.name)
    raw_labels = _tensor(load_pt(labels_path), labels_path.name)
    details: dict[str, Any] = {"imported_from": _files_record(kind, files)}
    if lr_path is not None:
        details["learned_lr"] = _scalar(load_pt(lr_path), lr_path.name)
    return _split_labels(kind, images, raw_labels, details)


def _read_result_file(kind: str, src: Path, experiment: int) -> Distilled:
    """DC / DSA / DM: res_*.pt = {'data': [[images, labels], ...], 'accs_all_exps': ...}."""
    if src.is_dir():
        found = sorted(src.glob("res_*.pt"))
        if len(found) != 1:
            raise InvalidInputError(f"{src}: expected one res_*.pt file, found {len(found)}; name the file")
        src = found[0]
    body = load_pt(src)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, (list, tuple)) or not data:
        raise InvalidInputError(f"{src.name}: expected a dict with a non-empty 'data' list of [images, labels]")
    if not 0 <= experiment < len(data):
        raise InvalidInputError(f"{src.name}: experiment {experiment} out of range; it holds {len(data)}")
    pair = data[experiment]
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise InvalidInputError(f"{src.name}: data[{experiment}] is not an [images, labels] pair")
    details: dict[str, Any] = {"imported_from": _files_record(kind, [src]), "experiment": experiment,
                               "experiments": len(data)}
    accs = _json_numbers(body.get("accs_all_exps"))
    if accs is not None:
        details["accs_all_exps"] = accs
    return _split_labels(kind, _tensor(pair[0], f"{src.name} images"), _tensor(pair[1], f"{src.name} labels"),
                         details)


def _read_folder(kind: str, src: Path) -> Distilled:
    """Class folders: SRe2L (new000/...), RDED (00000/...), any folder per class, or ``ladd export``."""
    from .sources import _IMAGE_SUFFIXES, _all_greyscale, _load_images

    if not src.is_dir():
        raise InvalidInputError(f"{src}: not a folder")
    record = {"kind": kind, "folder": src.name}
    if kind == "folder" and (src / "labels.csv").is_file():
        files, names = _read_index(src, src / "labels.csv")
        record["index"] = "labels.csv"
    else:
        names = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
        files = [(f, label) for label, name in enumerate(names) for f in sorted((src / name).iterdir())
                 if f.suffix.lower() in _IMAGE_SUFFIXES]
        if kind in ("sre2l", "rded"):
            ids = [re.search(r"(\d+)$", name) for name in names]
            if not all(ids):
                raise InvalidInputError(f"{src}: class folder {names[ids.index(None)]!r} does not end in a "
                                        f"class number ({kind} layout)")
            files = [(f, int(ids[label].group(1))) for f, label in files]
            names = []  # numbered folders: names come from the dataset, else "0".."K-1"
    if not files:
        raise InvalidInputError(f"{src}: no images found in class sub-folders")
    images, labels = _load_images(files, _all_greyscale([f for f, _ in files]), None)
    return Distilled(images, labels, names, None, None,
                     {"method": KINDS[kind], "details": {"imported_from": record}})


def _read_index(src: Path, index: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """The files, labels and class names of a folder written by :func:`ladd_format.export.export`."""
    with index.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label", "class_name"} <= set(rows[0]):
        raise InvalidInputError(f"{index}: expected columns index,file,label,class_name")
    names: dict[int, str] = {}
    files = []
    for row in rows:
        try:
            label = int(row["label"])
        except ValueError:
            label = -1
        if label < 0:
            raise InvalidInputError(f"{index}: label {row['label']!r} is not an integer >= 0")
        path = (src / row["file"]).resolve()
        if src.resolve() not in path.parents or not path.is_file():
            raise InvalidInputError(f"{index}: {row['file']!r} is not a file inside {src}")
        names[label] = row["class_name"]
        files.append((path, label))
    classes = src / "classes.csv"
    if classes.is_file():
        with classes.open(newline="", encoding="utf-8") as f:
            try:
                names.update({int(row["label"]): row["class_name"] for row in csv.DictReader(f)})
            except (KeyError, ValueError):
                raise InvalidInputError(f"{classes}: expected integer labels in columns label,class_name") from None
    return files, [names.get(i, str(i)) for i in range(max(names) + 1)]


# -- conversion ---------------------------------------------------------------------------


def _split_labels(kind: str, images: np.ndarray, raw: np.ndarray, details: dict[str, Any]) -> Distilled:
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


def _to_uint8(d: Distilled, stats: tuple[str, tuple[float, ...], tuple[float, ...]], zca: bool,
              zca_inverse: Any) -> Distilled:
    """Un-whiten (ZCA), de-normalise, scale to 0..255, round and clip; count the clipped values."""
    name, mean, std = stats
    x = d.images.astype(np.float64)
    if not np.isfinite(x).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise InvalidInputError(f"images hold a non-finite value at {where}")
    if len(mean) != x.shape[1]:
        raise InvalidInputError(f"normalisation {name!r} has {len(mean)} channels, the images have {x.shape[1]}")
    details = d.distillation["details"]
    if zca:
        if zca_inverse is None:
            raise InvalidInputError(
                "the images are ZCA-whitened: pass zca_inverse (--zca-inverse FILE.pt, a dict with kornia's "
                "'transform_inv' [D, D] and 'mean_vector' [1, D]), or import MTT's un-whitened copy "
                "images_zca_<it>.pt without --zca")
        x, details["zca"] = _unwhiten(x, Path(zca_inverse))
    x = (x * np.array(std).reshape(1, -1, 1, 1) + np.array(mean).reshape(1, -1, 1, 1)) * 255
    x = np.rint(x)
    clipped = int(np.count_nonzero((x < 0) | (x > 255)))
    d.images = np.clip(x, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()
    d.mean, d.std, d.clipped = list(mean), list(std), clipped
    details["normalization"] = _stats_record(stats)
    details["clipped_values"] = clipped
    details["clipped_fraction"] = clipped / x.size
    return d


def _unwhiten(x: np.ndarray, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Undo kornia's ZCAWhitening: x = z @ transform_inv + mean_vector, per flattened image."""
    body = load_pt(path)
    if not isinstance(body, dict) or not {"transform_inv", "mean_vector"} <= set(body):
        raise InvalidInputError(f"{path}: expected a dict with 'transform_inv' [D, D] and 'mean_vector' [1, D]")
    inv = _tensor(body["transform_inv"], "transform_inv").astype(np.float64)
    mean = _tensor(body["mean_vector"], "mean_vector").astype(np.float64).reshape(-1)
    dim = int(np.prod(x.shape[1:]))
    if inv.shape != (dim, dim) or mean.shape != (dim,):
        raise InvalidInputError(f"{path}: ZCA inverse is {list(inv.shape)} / {list(mean.shape)}, "
                                f"the images need [{dim}, {dim}] / [{dim}]")
    out = (x.reshape(len(x), dim) @ inv + mean).reshape(x.shape)
    return out, {"unwhitened_with": path.name, "sha256": _file_sha256(path)}


def _image_soft_labels(d: Distilled) -> tuple[np.ndarray, str, str]:
    """Per-image label rows [M, K], their kind for the writer, and the provenance name."""
    if d.soft is not None:
        if d.soft.shape[1] != d.num_classes:
            raise InvalidInputError(f"soft labels have {d.soft.shape[1]} classes, expected {d.num_classes}")
        return d.soft, "logits" if d.soft_kind == "logits" else "probs", SOFT_LABELS_PROVENANCE
    return np.eye(d.num_classes, dtype=np.float32)[d.labels], "probs", HARD_LABELS_PROVENANCE


def _class_names(d: Distilled, dataset: str | None, given: Sequence[str] | None) -> list[str]:
    """Given names, else the source's own (folder names, labels.csv), else the dataset's, else numbers."""
    known = DATASETS.get(dataset or "")
    if given is not None:
        names = [str(n) for n in given]
    elif d.class_names:
        names = d.class_names
    elif isinstance(known, tuple):
        names = list(known)
    elif isinstance(known, int):
        names = [str(i) for i in range(known)]
    elif d.soft is not None:
        names = [str(i) for i in range(d.soft.shape[1])]
    else:
        names = [str(i) for i in range(int(d.labels.max(initial=-1)) + 1)]
    if d.soft is not None and d.soft.shape[1] != len(names):
        raise InvalidInputError(f"soft labels have {d.soft.shape[1]} classes, but {dataset or 'the names given'} "
                                f"has {len(names)}")
    if d.labels.size and d.labels.max() >= len(names):
        raise InvalidInputError(f"label {d.labels.max()} is out of range for {len(names)} classes")
    return names


def _normalization(value: Any) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
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


def _stats_record(stats: tuple[str, tuple[float, ...], tuple[float, ...]]) -> dict[str, Any]:
    return {"name": stats[0], "mean": list(stats[1]), "std": list(stats[2])}


def _tensor(value: Any, name: str) -> np.ndarray:
    if not hasattr(value, "detach"):
        raise InvalidInputError(f"{name}: expected a tensor, got {type(value).__name__}")
    return value.detach().cpu().numpy()


def _scalar(value: Any, name: str) -> float:
    number = _json_numbers(value)
    while isinstance(number, list) and len(number) == 1:
        number = number[0]
    if not isinstance(number, float):
        raise InvalidInputError(f"{name}: expected one finite number, got {type(value).__name__}")
    return number


def _json_numbers(value: Any) -> Any:
    """``accs_all_exps`` as JSON (dicts, lists, numbers), or ``None`` when it is something else."""
    if isinstance(value, dict):
        items = {str(k): _json_numbers(v) for k, v in value.items()}
        return None if any(v is None for v in items.values()) else items
    if isinstance(value, (list, tuple)):
        items = [_json_numbers(v) for v in value]
        return None if any(v is None for v in items) else items
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _json_numbers(value.tolist())
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    return None


def _files_record(kind: str, files: list[Path]) -> dict[str, Any]:
    return {"kind": kind, "files": {p.name: _file_sha256(p) for p in files}}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _array_sha256(a: np.ndarray) -> str:
    """sha256 of float32 little-endian C-order bytes (the digest rule of the container arrays)."""
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").tobytes()).hexdigest()


# -- command line -------------------------------------------------------------------------


def register_cli(subparsers: Any) -> None:
    """Add ``ladd import`` and ``ladd export`` to the ``ladd`` command's subparsers."""
    s = subparsers.add_parser("import", help="turn a distillation code base's result into a container")
    s.add_argument("kind", choices=list(KINDS), help="mtt, tesla, glad, datm (images_best.pt ...), "
                   "dc, dsa, dm (res_*.pt), sre2l, rded, folder (class folders)")
    s.add_argument("src", help="the result folder, or the images / res_*.pt file")
    s.add_argument("out")
    s.add_argument("--normalization",
                   help=f"the statistics the tensors were normalised with: {', '.join(NORMALIZATIONS)}")
    s.add_argument("--mean", type=_floats, help="explicit per-channel mean, e.g. 0.5,0.5,0.5 (with --std)")
    s.add_argument("--std", type=_floats, help="explicit per-channel std (with --mean)")
    s.add_argument("--dataset", help="class names and provenance (default: the normalisation's dataset)")
    s.add_argument("--labels", help="the labels file when SRC is an images file (default: images->labels)")
    s.add_argument("--lr", help="a learned-lr file to record (DATM: lr_best.pt is found by itself)")
    s.add_argument("--experiment", type=int, default=0, help="which experiment of a res_*.pt file")
    s.add_argument("--zca", action="store_true", help="the tensors are ZCA-whitened (cannot be detected)")
    s.add_argument("--zca-inverse", help="a .pt dict with kornia's transform_inv and mean_vector")
    s.add_argument("--labeler", help="label every crop with this checkpoint (from train-labeler)")
    add_labeling_options(s)
    s.set_defaults(func=_cmd_import)

    s = subparsers.add_parser("export", help="write a container as a PNG folder, .pt or .npz")
    s.add_argument("path")
    s.add_argument("out")
    s.add_argument("--format", required=True, choices=["folder", "pt", "npz"])
    s.add_argument("--normalized", action="store_true",
                   help="pt/npz: float32 images normalised with the container's mean/std instead of uint8")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_export)


def _cmd_import(args: argparse.Namespace) -> int:
    if (args.mean is None) != (args.std is None):
        raise InvalidInputError("--mean and --std go together")
    if args.mean is not None and args.normalization is not None:
        raise InvalidInputError("give --normalization or --mean/--std, not both")
    norm = (args.mean, args.std) if args.mean is not None else args.normalization
    d = read_distilled(args.kind, args.src, normalization=norm, dataset=args.dataset, labels=args.labels, lr=args.lr,
                       experiment=args.experiment, zca=args.zca, zca_inverse=args.zca_inverse)
    labeler = None
    if args.labeler:
        from .labeler import load_labeler

        labeler = load_labeler(args.labeler, device=args.device)
    out = write_distilled(d, args.out, labeler=labeler, n=args.n, ratio=args.ratio, temperature=args.temperature,
                          encoding=args.encoding, overwrite=args.overwrite, progress=labeler is not None)
    h, w, c = d.images.shape[1:]
    print(f"read {len(d.labels)} images {h}x{w}x{c} ({d.num_classes} classes) from {args.kind} {args.src}")
    if "clipped_values" in d.distillation["details"]:
        print(f"  de-normalised with {d.distillation['details']['normalization']['name']} statistics; "
              f"{d.clipped} values clipped to 0..255 ({100 * d.distillation['details']['clipped_fraction']:.4f}%)")
    dense = "labeler " + args.labeler if labeler is not None else (
        SOFT_LABELS_PROVENANCE if d.soft is not None else HARD_LABELS_PROVENANCE)
    print(f"  dense labels: {dense}")
    print(f"wrote {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    out = export(args.path, args.out, format=args.format, normalized=args.normalized, overwrite=args.overwrite)
    print(f"exported {args.path} -> {out} ({args.format})")
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
