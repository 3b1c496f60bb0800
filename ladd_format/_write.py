"""The writer: validate everything, stage a sibling directory, then move it into place."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from pydantic import ValidationError

from . import __version__
from ._encodings import Encoding, resolve_encoding, uint_dtype
from ._store import array_digest, check_target, fsync_tree, is_zip_path, pack_dir, place, rows_per_block, staging_dir
from .errors import InvalidInputError
from .manifest import (
    ATTRIBUTE_KEY,
    ArrayRecord,
    DenseLabelSpec,
    DistillationInfo,
    ImageInfo,
    LabelerInfo,
    Manifest,
    SamplerSpec,
    _describe,
)

PROB_SUM_ATOL = 1e-3
"""Probability rows handed to the writer must sum to 1 within this absolute tolerance."""

CHUNK_BYTES = 4 << 20
"""Writers chunk every array along the image axis only, about this many bytes a chunk."""

DIMENSION_NAMES = {"images": ("image", "height", "width", "channel"), "labels": ("image",)}
"""Dimension names of the fixed arrays; the encoding names those of its own arrays."""

DEFAULT_ENCODING = "uint8"
"""The default for probabilities (logits default to float32): at 128x128x3, K = 10, N = 5 it
costs a quarter of float32's bytes (benchmarks/results/storage.md)."""

Compression = Literal["zstd", "gzip"] | None


def write(
    path: str | os.PathLike[str],
    images: Any,
    labels: Any,
    dense_labels: Any,
    *,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    sampler: SamplerSpec | Mapping[str, Any] | Any | None = None,
    encoding: str | None = None,
    encoding_params: Mapping[str, Any] | None = None,
    values: Literal["probs", "logits"] = "probs",
    temperature: float = 1.0,
    labeler: LabelerInfo | Mapping[str, Any] | None = None,
    distillation: DistillationInfo | Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    compression: Compression = "zstd",
    overwrite: bool = False,
) -> Path:
    """Write a LADD container to ``path`` (a directory, or a ``.zip`` file) and return it.

    ``images`` is uint8 [M, H, W, C] (C = 1 or 3), ``labels`` integers [M] in [0, K),
    ``dense_labels`` floats [M, n*n, K]: probabilities (rows sum to 1) or, with
    ``values="logits"``, logits that readers turn into softmax(logits / temperature).

    ``encoding`` (SPEC.md section 5) is how dense labels are stored: ``"float32"`` (exact),
    ``"float16"``, ``"uint8"`` / ``"uint16"`` (probabilities in steps of 1/255 or 1/65535,
    rows summing to 1), or ``"topk"`` with ``encoding_params={"k": 5, "rule": "smoothing"}``
    (or ``"renorm"``): the k largest classes per crop, for many classes. ``None`` means
    ``"uint8"`` for probabilities and ``"float32"`` for logits (the compact encodings take
    probabilities only). The container's ``format_version`` is the oldest that has the
    encoding: 1.0 for float32/float16, 1.1 otherwise, so 1.0 readers keep reading it.
    Everything is validated before the first byte is written; a crash at any point leaves
    either no container at ``path`` or a complete one.
    """
    target = Path(path)
    if compression not in ("zstd", "gzip", None):
        raise InvalidInputError(f"compression must be 'zstd', 'gzip' or None, not {compression!r}")
    imgs = _as_numpy(images, "images")
    labs = _as_numpy(labels, "labels")
    dense = _as_numpy(dense_labels, "dense_labels")
    sampler_spec = _model(SamplerSpec, sampler, "sampler")
    _check_images(imgs, sampler_spec)
    num_images = imgs.shape[0]
    num_classes = _check_dense(dense, num_images, sampler_spec, values)
    if encoding is None:
        encoding = DEFAULT_ENCODING if values == "probs" else "float32"
    enc = resolve_encoding(encoding, encoding_params, num_classes, values)
    labs = _check_labels(labs, num_images, num_classes)
    stored = {"images": imgs, "labels": labs.astype(_label_dtype(num_classes)), **enc.encode(dense)}
    _check_encoded(stored, enc)

    # Digests (and default statistics) run in threads, overlapping validation and writing:
    # hashlib and numpy release the GIL on large buffers.
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = {name: pool.submit(array_digest, a, rows_per_block(a.shape, a.itemsize))
                   for name, a in stored.items()}
        if mean is None or std is None:
            auto_mean, auto_std = _channel_stats(imgs)
            mean = auto_mean if mean is None else mean
            std = auto_std if std is None else std
        manifest = _manifest(imgs, labs, num_classes, class_names, mean, std, sampler_spec, enc, values,
                             temperature, labeler, distillation, extra, stored)
        check_target(target, overwrite)
        with staging_dir(target) as stage:
            _write_arrays(stage, stored, compression, {**DIMENSION_NAMES, **enc.dimension_names()})
            records = {name: ArrayRecord(dtype=str(a.dtype), shape=list(a.shape), sha256=digests[name].result())
                       for name, a in stored.items()}
            manifest = manifest.model_copy(update={"arrays": records})
            group = zarr.open_group(zarr.storage.LocalStore(stage), mode="r+", zarr_format=3)
            group.attrs.update({ATTRIBUTE_KEY: manifest.to_json()})  # last: marks the stage complete
            fsync_tree(stage)
            if is_zip_path(target):
                pack_dir(stage, target)
            else:
                place(stage, target)
    return target


def _manifest(imgs, labs, num_classes, class_names, mean, std, sampler_spec, enc, values, temperature,
              labeler, distillation, extra, stored) -> Manifest:
    """The manifest with placeholder digests: validates all metadata before any write."""
    distill = _model(DistillationInfo, distillation, "distillation")
    if distill.ipc is None:
        counts = np.bincount(labs, minlength=num_classes)
        if counts.min() == counts.max():
            distill = distill.model_copy(update={"ipc": int(counts[0])})
    num_images, height, width, channels = imgs.shape
    try:
        return Manifest(
            format_version=enc.since,
            created_by=f"ladd_format {__version__}",
            num_images=num_images,
            num_classes=num_classes,
            class_names=[str(i) for i in range(num_classes)] if class_names is None else list(class_names),
            image=ImageInfo(height=height, width=width, channels=channels, mean=list(mean), std=list(std)),
            sampler=sampler_spec,
            dense_labels=DenseLabelSpec(encoding=enc.name, params=enc.params, values=values, temperature=temperature),
            labeler=_model(LabelerInfo, labeler, "labeler"),
            distillation=distill,
            extra=dict(extra or {}),
            arrays={name: ArrayRecord(dtype=str(a.dtype), shape=list(a.shape), sha256="0" * 64)
                    for name, a in stored.items()},
        )
    except ValidationError as exc:
        raise InvalidInputError(f"metadata is invalid: {_describe(exc)}") from None


def _write_arrays(stage: Path, arrays: Mapping[str, np.ndarray], compression: Compression,
                  dimension_names: Mapping[str, tuple[str, ...]]) -> None:
    codec = {"zstd": [zarr.codecs.ZstdCodec(level=3)], "gzip": [zarr.codecs.GzipCodec(level=5)],
             None: None}[compression]
    group = zarr.create_group(zarr.storage.LocalStore(stage), zarr_format=3)
    for name, data in arrays.items():
        rows = _chunk_rows(len(data), data[:1].nbytes)
        group.create_array(
            name,
            data=np.ascontiguousarray(data),
            chunks=(rows, *data.shape[1:]),
            compressors=codec,
            dimension_names=dimension_names[name],
            config={"write_empty_chunks": True},
        )


def _chunk_rows(num_rows: int, row_bytes: int) -> int:
    # Equal chunks of at most CHUNK_BYTES: the padded edge chunk then wastes < 1 row a chunk.
    max_rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    num_chunks = -(-num_rows // max_rows)
    return -(-num_rows // num_chunks)


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{name}: not an array ({exc})") from None
    if value.dtype == object:
        raise InvalidInputError(f"{name}: object arrays are not allowed")
    return value


def _model(cls: type, value: Any, name: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if hasattr(value, "to_spec"):
        value = value.to_spec()
        if isinstance(value, cls):
            return value
    try:
        return cls.model_validate(dict(value) if isinstance(value, Mapping) else value)
    except ValidationError as exc:
        raise InvalidInputError(f"{name} is invalid: {_describe(exc)}") from None


def _check_images(imgs: np.ndarray, sampler: SamplerSpec) -> None:
    if imgs.dtype != np.uint8:
        raise InvalidInputError(f"images must be uint8, got {imgs.dtype} (scale to 0..255 and round first)")
    if imgs.ndim != 4:
        raise InvalidInputError(f"images must be [M, H, W, C], got {imgs.ndim} dimensions {imgs.shape}"
                                + (" (add a channel axis: images[..., None])" if imgs.ndim == 3 else ""))
    m, h, w, c = imgs.shape
    if c not in (1, 3):
        hint = " (this looks like NCHW: pass images.transpose(0, 2, 3, 1))" if h in (1, 3) else ""
        raise InvalidInputError(f"images must have 1 or 3 channels last, got shape {imgs.shape}{hint}")
    if m < 1:
        raise InvalidInputError("images: a container needs at least one image")
    if h < sampler.n or w < sampler.n:
        raise InvalidInputError(f"images are {h}x{w}, smaller than the sampler's n={sampler.n}")


def _check_dense(dense: np.ndarray, num_images: int, sampler: SamplerSpec, values: str) -> int:
    if values not in ("probs", "logits"):
        raise InvalidInputError(f"values must be 'probs' or 'logits', not {values!r}")
    if not np.issubdtype(dense.dtype, np.floating):
        raise InvalidInputError(f"dense_labels must be floating point, got {dense.dtype}")
    expected = (num_images, sampler.num_crops)
    if dense.ndim != 3 or dense.shape[:2] != expected:
        raise InvalidInputError(
            f"dense_labels must be [M, n*n, K] = [{num_images}, {sampler.num_crops}, K], got {dense.shape}")
    if dense.shape[2] < 1:
        raise InvalidInputError("dense_labels: need at least one class")
    finite = np.isfinite(dense)
    if not finite.all():
        where = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise InvalidInputError(f"dense_labels has a non-finite value at {where}: {dense[where]}")
    if values == "probs":
        if dense.min() < 0 or dense.max() > 1:
            raise InvalidInputError(
                f"dense_labels probabilities must lie in [0, 1], found [{dense.min()}, {dense.max()}]"
                " (pass values='logits' for logits)")
        sums = dense.sum(axis=2, dtype=np.float64)
        bad = np.abs(sums - 1) > PROB_SUM_ATOL
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad)[0])
            raise InvalidInputError(
                f"dense_labels[{i}, {j}] sums to {sums[i, j]:.6f}; probability rows must sum to 1 "
                f"within {PROB_SUM_ATOL}")
    return int(dense.shape[2])


def _check_labels(labs: np.ndarray, num_images: int, num_classes: int) -> np.ndarray:
    if labs.dtype == bool or not np.issubdtype(labs.dtype, np.integer):
        raise InvalidInputError(f"labels must be integers, got {labs.dtype}")
    if labs.shape != (num_images,):
        raise InvalidInputError(f"labels must be [M] = [{num_images}], got {labs.shape}")
    if labs.min() < 0 or labs.max() >= num_classes:
        raise InvalidInputError(
            f"labels must lie in [0, {num_classes}), found [{labs.min()}, {labs.max()}]")
    return labs.astype(np.int64)


def _check_encoded(stored: Mapping[str, np.ndarray], enc: Encoding) -> None:
    for name, arr in stored.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidInputError(f"{name} overflows the {enc.name} encoding (values too large)")


def _label_dtype(num_classes: int) -> np.dtype:
    try:
        return uint_dtype(num_classes - 1)
    except InvalidInputError:
        raise InvalidInputError(f"num_classes={num_classes} is too large") from None


def _channel_stats(imgs: np.ndarray) -> tuple[list[float], list[float]]:
    # Exact per-channel mean/std on the 0..1 scale without a float64 copy of the images:
    # pixel values minus 128 summed over runs of 1,024 in float32 stay integers below 2**24,
    # so each run's sums are exact; runs are combined in float64.
    run = 1024
    pixels = imgs.reshape(-1, imgs.shape[-1])
    total = np.zeros(pixels.shape[1])
    squares = np.zeros(pixels.shape[1])
    ones = np.ones(run, dtype=np.float32)
    for start in range(0, len(pixels), run * 256):
        block = pixels[start:start + run * 256].astype(np.float32) - 128
        whole = len(block) // run * run
        for part in (block[:whole].reshape(-1, run, block.shape[1]), block[whole:][None]):
            if part.size:
                total += (ones[:part.shape[1]] @ part).sum(axis=0, dtype=np.float64)
                squares += (ones[:part.shape[1]] @ (part * part)).sum(axis=0, dtype=np.float64)
    mean = total / len(pixels)
    var = np.maximum(squares / len(pixels) - mean**2, 0)
    return ([(float(v) + 128) / 255 for v in mean],
            [float(np.sqrt(v)) / 255 if v > 0 else 1.0 for v in var])
