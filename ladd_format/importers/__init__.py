"""Import what dataset-distillation code bases save, turning it into a LADD container.

The field saves results in a few layouts (README "Import and export"), one module each: ``_mtt``
(MTT / TESLA / GLaD / DATM normalised float tensors ``images_best.pt``, ``labels_best.pt``),
``_dc`` (DC / DSA / DM ``res_*.pt`` dicts), ``_folders`` (SRe2L / RDED / any class folders).
``_common`` de-normalises tensors with a named dataset's statistics to uint8 and records every
choice (statistics, clipped values, soft labels, learned lr) in ``distillation.details``; this
module dispatches by kind, writes the container and holds ``ladd import`` / ``ladd export``.

``.pt`` files are read with ``torch.load(weights_only=True)`` only: a file that needs
arbitrary unpickling is refused, never executed. Results are downloaded from strangers, so
what a read may allocate is bounded before it starts (``max_bytes``, ``max_images``, README
"Importing files from strangers").
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._cli_args import add_labeling_options, finite_float, nonnegative_int, positive_float, positive_int
from .._write import write
from ..errors import InvalidInputError
from ..sources import MAX_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGES, InputTooLargeError, UnsafePathError, _Limits
from . import _dc, _folders, _mtt, _parquet
from ._common import (
    CLIP_MARGIN,
    DATASETS,
    KINDS,
    MAX_CLIPPED_FRACTION,
    NORMALIZATIONS,
    ZCA_WAYS_OUT,
    ClippingError,
    Distilled,
    InputNotFoundError,
    WhitenedImagesError,
    array_sha256,
    load_pt,
    normalization as _normalization,
    stats_record,
    to_uint8,
)

__all__ = [
    "CLIP_MARGIN", "DATASETS", "HARD_LABELS_PROVENANCE", "KINDS", "MAX_BYTES", "MAX_CLIPPED_FRACTION",
    "MAX_IMAGES", "MAX_IMAGE_PIXELS", "NORMALIZATIONS", "SOFT_LABELS_PROVENANCE", "ClippingError", "Distilled",
    "InputNotFoundError", "InputTooLargeError", "UnsafePathError", "WhitenedImagesError", "import_distilled",
    "import_parquet", "load_pt", "read_distilled", "register_cli", "write_distilled",
]

import_parquet = _parquet.import_parquet

HARD_LABELS_PROVENANCE = "hard-labels (one-hot, repeated per crop)"
SOFT_LABELS_PROVENANCE = "source-soft-labels (repeated per crop)"

_OPTIONS = {"labels": _mtt.READS, "lr": _mtt.READS, "experiment": _dc.READS,
            "zca": _mtt.READS + _dc.READS, "zca_inverse": _mtt.READS + _dc.READS}
"""The read options that only some layouts use, and the kinds that use each."""


def read_distilled(
    kind: str, src: str | os.PathLike[str], *,
    normalization: str | tuple[Sequence[float], Sequence[float]] | None = None, dataset: str | None = None,
    labels: str | os.PathLike[str] | None = None, lr: str | os.PathLike[str] | None = None,
    experiment: int = 0, zca: bool = False, zca_inverse: str | os.PathLike[str] | None = None,
    allow_clipping: bool = False, class_names: Sequence[str] | None = None, max_bytes: int = MAX_BYTES,
    max_images: int = MAX_IMAGES,
) -> Distilled:
    """Read a code base's result (``kind`` in :data:`KINDS`) into uint8 images and labels.

    Tensor kinds need ``normalization``: a name in :data:`NORMALIZATIONS` or explicit
    ``(mean, std)``. ``dataset`` (default: the normalisation's name) gives class names and
    the provenance's source dataset. ``zca_inverse`` un-whitens ZCA-whitened tensors; a run
    folder holding MTT's ``images_zca_*.pt`` copies refuses its whitened tensors without it,
    and ``zca=True`` says they are whitened where the folder does not show it. De-normalising
    that clips more than :data:`MAX_CLIPPED_FRACTION` of the values by more than
    :data:`CLIP_MARGIN` levels is refused unless ``allow_clipping``.

    Inputs are untrusted: each file may hold at most ``max_bytes``, a folder's images may
    decode to at most ``max_bytes`` and number at most ``max_images``, and files found in a
    folder must lie inside it (:class:`InputTooLargeError`, :class:`UnsafePathError`).
    """
    limits = _Limits(max_bytes, max_images, cli=True)
    if kind not in KINDS:
        raise InvalidInputError(f"unknown import kind {kind!r}; one of {', '.join(KINDS)}")
    given = {"labels": labels is not None, "lr": lr is not None, "experiment": experiment != 0, "zca": zca,
             "zca_inverse": zca_inverse is not None}
    for option, kinds in _OPTIONS.items():
        if given[option] and kind not in kinds:
            raise InvalidInputError(f"{option}= (--{option.replace('_', '-')} on the command line) does not apply "
                                    f"to {kind}; it is for {', '.join(kinds)}")
    src = Path(src)
    if not src.exists():
        raise InputNotFoundError(f"{src}: no such file or folder")
    stats = _normalization(normalization) if normalization is not None else None
    if dataset is None and isinstance(normalization, str):
        dataset = normalization.removesuffix("-mtt")
    if kind in _folders.READS:
        result = _folders.read(kind, src, limits)
        if stats is not None:
            result.mean, result.std = list(stats[1]), list(stats[2])
            result.distillation["details"]["normalization"] = stats_record(stats)
    else:
        if stats is None:
            raise InvalidInputError(
                f"{kind} saves normalised tensors: pass normalization= with a name ({', '.join(NORMALIZATIONS)}) "
                "or (mean, std) (--normalization NAME or --mean/--std on the command line)")
        if kind in _mtt.READS:
            result = _mtt.read(kind, src, labels, lr, zca, zca_inverse, limits)
        else:
            result = _dc.read(kind, src, experiment, limits)
        if zca and zca_inverse is None:
            raise WhitenedImagesError("zca=True (--zca) says the tensors are ZCA-whitened: "
                                      + ZCA_WAYS_OUT.format(copy="images_zca_<it>.pt"))
        result = to_uint8(result, stats, zca_inverse, allow_clipping, max_bytes)
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
            "kind": d.soft_kind, "shape": list(d.soft.shape), "sha256": array_sha256(d.soft),
            "stored_as": "not stored: dense labels come from the labeler" if labeler is not None
            else "dense labels, the image's soft label repeated per crop"}
    if labeler is not None:
        from ..labeler import Labeler, augment, load_labeler
        from ..sampler import UniformSampler

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
                                f"has {len(names)}; pass dataset= (--dataset on the command line) or class_names=")
    if d.labels.size and d.labels.max() >= len(names):
        raise InvalidInputError(f"label {d.labels.max()} is out of range for {len(names)} classes")
    return names


# -- command line -------------------------------------------------------------------------

_EXPORT_FORMATS = (
    "folder: a PNG per image in a sub-folder per class, labels.csv (index,file,label,class_name), classes.csv, "
    "dense_labels.npy (float32 [M, n*n, K]) and manifest.json; "
    "pt: a torch.save dict of tensors images (NCHW, uint8 or with --normalized float32), labels, dense_labels, "
    "mean, std, plus class_names (a list of str); torch.load(weights_only=True) reads it; "
    "npz: the same, class_names a str array; numpy.load(allow_pickle=False) reads it; "
    "parquet: data/train-*.parquet as the Hugging Face Hub shows it (PNG image, label, dense_labels) plus the "
    "stored arrays, so ladd import parquet rebuilds the container exactly")


def register_cli(subparsers: Any) -> None:
    """Add ``ladd import`` and ``ladd export`` to the ``ladd`` command's subparsers."""
    s = subparsers.add_parser("import", help="turn a distillation code base's result into a container")
    s.add_argument("kind", choices=[*KINDS, *_parquet.READS], help="mtt, tesla, glad, datm (images_best.pt ...), "
                   "dc, dsa, dm (res_*.pt), sre2l, rded, folder (class folders), parquet (ladd export --format "
                   "parquet: exact)")
    s.add_argument("src", help="the result folder, or the images / res_*.pt file")
    s.add_argument("out")
    s.add_argument("--normalization",
                   help=f"the statistics the tensors were normalised with: {', '.join(NORMALIZATIONS)}")
    s.add_argument("--mean", type=_numbers(finite_float),
                   help="explicit per-channel mean, e.g. 0.5,0.5,0.5 (with --std)")
    s.add_argument("--std", type=_numbers(positive_float), help="explicit per-channel std > 0 (with --mean)")
    s.add_argument("--dataset", help="class names and provenance (default: the normalisation's dataset)")
    s.add_argument("--labels", help="the labels file when SRC is an images file (default: images->labels)")
    s.add_argument("--lr", help="a learned-lr file to record (DATM: lr_best.pt is found by itself)")
    s.add_argument("--experiment", type=nonnegative_int, default=0, help="which experiment of a res_*.pt file")
    s.add_argument("--zca", action="store_true",
                   help="the tensors are ZCA-whitened though the folder holds no images_zca_*.pt (MTT saves "
                        "that un-whitened copy only below 50 images per class); needs --zca-inverse")
    s.add_argument("--zca-inverse", help="un-whiten with this .pt dict of kornia's transform_inv and mean_vector")
    s.add_argument("--allow-clipping", action="store_true",
                   help=f"import even when de-normalising clips more than {100 * MAX_CLIPPED_FRACTION:g}%% of "
                        f"the values by more than {CLIP_MARGIN} levels (a sign of wrong statistics)")
    s.add_argument("--labeler", help="label every crop with this checkpoint (from train-labeler)")
    s.add_argument("--max-bytes", type=_byte_size, default=MAX_BYTES,
                   help=f"the most bytes one input file may hold and a folder's images may decode to (default "
                        f"{MAX_BYTES >> 30}G; K, M, G, T suffixes are powers of 1024)")
    s.add_argument("--max-images", type=positive_int, default=MAX_IMAGES,
                   help=f"the most image files a folder import reads (default {MAX_IMAGES})")
    add_labeling_options(s)
    s.set_defaults(func=_cmd_import)

    s = subparsers.add_parser("export", help="write a container as a PNG folder, .pt, .npz or parquet")
    s.add_argument("path")
    s.add_argument("out")
    s.add_argument("--format", required=True, choices=["folder", "pt", "npz", "parquet"], help=_EXPORT_FORMATS)
    s.add_argument("--normalized", action="store_true",
                   help="pt/npz: float32 images normalised with the container's mean/std instead of uint8")
    s.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    s.set_defaults(func=_cmd_export)


def _cmd_import(args: argparse.Namespace) -> int:
    if args.kind in _parquet.READS:
        return _parquet.cmd(args)
    if (args.mean is None) != (args.std is None):
        raise InvalidInputError("--mean and --std go together")
    if args.mean is not None and args.normalization is not None:
        raise InvalidInputError("give --normalization or --mean/--std, not both")
    norm = (args.mean, args.std) if args.mean is not None else args.normalization
    labeler = None
    if args.labeler:
        from ..labeler import load_labeler

        labeler = load_labeler(args.labeler, device=args.device)
    d = read_distilled(args.kind, args.src, normalization=norm, dataset=args.dataset, labels=args.labels, lr=args.lr,
                       experiment=args.experiment, zca=args.zca, zca_inverse=args.zca_inverse,
                       allow_clipping=args.allow_clipping, max_bytes=args.max_bytes, max_images=args.max_images)
    out = write_distilled(d, args.out, labeler=labeler, n=args.n, ratio=args.ratio, temperature=args.temperature,
                          encoding=args.encoding, overwrite=args.overwrite, progress=labeler is not None)
    h, w, c = d.images.shape[1:]
    details = d.distillation["details"]
    print(f"read {len(d.labels)} images {h}x{w}x{c} ({d.num_classes} classes) from {args.kind} {args.src}")
    if "clipped_values" in details:
        allowed = " (allowed by --allow-clipping)" if details.get("clipping_allowed") else ""
        print(f"  de-normalised with {details['normalization']['name']} statistics; {d.clipped} values clipped "
              f"to 0..255 ({100 * details['clipped_fraction']:.4f}%){allowed}")
    dense = "labeler " + args.labeler if labeler is not None else (
        SOFT_LABELS_PROVENANCE if d.soft is not None else HARD_LABELS_PROVENANCE)
    print(f"  dense labels: {dense}")
    print(f"wrote {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export import export

    out = export(args.path, args.out, format=args.format, normalized=args.normalized, overwrite=args.overwrite)
    print(f"exported {args.path} -> {out} ({args.format})")
    return 0


def _byte_size(text: str) -> int:
    """An argparse type for a byte count such as 8G: K, M, G and T are powers of 1024."""
    scale = 1 << 10 * ("KMGT".index(text[-1].upper()) + 1) if text[-1:].upper() in ("K", "M", "G", "T") else 1
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        value = 0
    if not 1 <= value < 1 << 63:
        raise argparse.ArgumentTypeError(f"expected a size in bytes >= 1 such as 8G or 512M, got {text!r}")
    return int(value)


def _numbers(parse: Callable[[str], float]) -> Callable[[str], list[float]]:
    """An argparse type for comma-separated numbers, each checked by ``parse``."""
    def numbers(text: str) -> list[float]:
        return [parse(v) for v in text.split(",")]

    return numbers
