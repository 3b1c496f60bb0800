"""The writer: validate everything, stage a sibling directory, then move it into place."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from pydantic import ValidationError

from . import __version__
from ._encodings import Encoding, resolve_encoding, uint_dtype
from ._store import check_target, fsync_tree, is_zip_path, pack_dir, place, staging_dir
from ._read import MAX_CHUNK_BYTES
from ._read import open as open_container
from .errors import InvalidInputError, LaddError
from .manifest import (
    ATTRIBUTE_KEY,
    ArrayRecord,
    DenseLabelSpec,
    DistillationInfo,
    ImageInfo,
    LabelerInfo,
    Manifest,
    PublicationInfo,
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
    publication: PublicationInfo | Mapping[str, Any] | None = None,
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
    probabilities only). The container's ``format_version`` is the oldest that has every
    feature it uses: 1.0 for float32/float16, 1.1 for the others, 1.2 with labeler input
    size, normalisation or weights, so older readers keep reading it.
    Everything is validated before the first byte is written; a crash at any point leaves
    either no container at ``path`` or a complete one. For data that arrives in pieces,
    :class:`Writer` does the same one batch at a time (``write`` is one batch of it).
    """
    imgs = _as_numpy(images, "images")
    dense = _as_numpy(dense_labels, "dense_labels")
    _check_images(imgs, _model(SamplerSpec, sampler, "sampler"))
    if dense.ndim != 3:
        raise InvalidInputError(f"dense_labels must be [M, n*n, K], got {dense.shape}")
    writer = Writer(path, num_images=imgs.shape[0], image_shape=imgs.shape[1:], num_classes=dense.shape[2],
                    class_names=class_names, mean=mean, std=std, sampler=sampler, encoding=encoding,
                    encoding_params=encoding_params, values=values, temperature=temperature, labeler=labeler,
                    distillation=distillation, extra=extra, publication=publication, compression=compression,
                    overwrite=overwrite)
    with writer:
        writer.append(imgs, labels, dense)
    return writer.path


class Writer:
    """Write a container in pieces: ``append(images, labels, dense_labels)`` batch by batch,
    then ``close()`` (or leave the ``with`` block) to commit it atomically.

    The number of images and their shape are stated up front, so the chunk layout (and so
    every stored byte) is the one :func:`write` gives for the same data. Metadata is
    validated at construction and every batch before any of it is stored; chunks are
    written as soon as they are full and hashed as they go, so memory holds at most one
    chunk of each array beyond the batch. An exception (Ctrl-C included) or a kill leaves
    nothing at the target; ``close`` refuses to commit fewer images than stated.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, num_images: int, image_shape: Sequence[int], num_classes: int,
        class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None, sampler: SamplerSpec | Mapping[str, Any] | Any | None = None,
        encoding: str | None = None, encoding_params: Mapping[str, Any] | None = None,
        values: Literal["probs", "logits"] = "probs", temperature: float = 1.0,
        labeler: LabelerInfo | Mapping[str, Any] | None = None,
        distillation: DistillationInfo | Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
        publication: PublicationInfo | Mapping[str, Any] | None = None,
        compression: Compression = "zstd", overwrite: bool = False,
    ) -> None:
        if "://" in os.fspath(path):
            raise InvalidInputError(f"{os.fspath(path)}: writers write local paths; write the container locally, "
                                    "then ladd_format.remote.upload(local, url)")
        self.path = Path(path)
        if compression not in ("zstd", "gzip", None):
            raise InvalidInputError(f"compression must be 'zstd', 'gzip' or None, not {compression!r}")
        if values not in ("probs", "logits"):
            raise InvalidInputError(f"values must be 'probs' or 'logits', not {values!r}")
        self._sampler = _model(SamplerSpec, sampler, "sampler")
        self.num_images = _count(num_images, "num_images", 1)
        self.num_classes = _count(num_classes, "dense_labels: number of classes K", 1)
        shape = tuple(int(v) for v in image_shape)
        if len(shape) != 3:
            raise InvalidInputError(f"image_shape must be (H, W, C), got {shape}")
        _check_images(np.zeros((1, *shape), np.uint8), self._sampler)
        self.image_shape = shape
        if encoding is None:
            encoding = DEFAULT_ENCODING if values == "probs" else "float32"
        self._enc = resolve_encoding(encoding, encoding_params, self.num_classes, values)
        self._values, self._compression = values, compression
        label_dtype = _label_dtype(self.num_classes)
        self._specs = {"images": ("uint8", (self.num_images, *shape)), "labels": (str(label_dtype), (self.num_images,)),
                       **self._enc.stored_specs(self.num_images, self._sampler.num_crops, self.num_classes)}
        for name, (dtype, dims) in self._specs.items():
            row_bytes = np.dtype(dtype).itemsize * int(np.prod(dims[1:], dtype=np.int64))
            if row_bytes > MAX_CHUNK_BYTES:
                raise InvalidInputError(f"{name}: one image takes {row_bytes} bytes, more than the {MAX_CHUNK_BYTES} "
                                        "a chunk may hold (SPEC.md section 12)")
        self._meta = dict(class_names=class_names, mean=mean, std=std, temperature=temperature,
                          labeler=labeler, distillation=distillation, extra=extra, publication=publication)
        self._manifest(mean=mean if mean is not None else [0.5] * shape[2],
                       std=std if std is not None else [1.0] * shape[2], digests={},
                       counts=np.ones(self.num_classes, np.int64))  # validates all metadata now
        check_target(self.path, overwrite)
        self._overwrite = overwrite
        self._stats = None if mean is not None and std is not None else _ChannelStats(shape[2])
        self._counts = np.zeros(self.num_classes, np.int64)
        self._hashes = {name: hashlib.sha256() for name in self._specs}
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in self._specs}
        self._written = {name: 0 for name in self._specs}  # rows stored: whole chunks until the end
        self._chunk_rows = {name: _chunk_rows(dims[0], np.dtype(dtype).itemsize * int(np.prod(dims[1:], dtype=np.int64)))
                            for name, (dtype, dims) in self._specs.items()}
        self.appended = 0
        self._stage_cm = self._stage = self._group = None
        self._done = False

    def append(self, images: Any, labels: Any, dense_labels: Any) -> None:
        """Validate a batch, then store it (full chunks now, the rest with the next batch)."""
        if self._done:
            raise InvalidInputError(f"{self.path}: the writer is closed")
        imgs = _as_numpy(images, "images")
        labs = _as_numpy(labels, "labels")
        dense = _as_numpy(dense_labels, "dense_labels")
        _check_images(imgs, self._sampler)
        if imgs.shape[1:] != self.image_shape:
            raise InvalidInputError(f"images are {imgs.shape[1:]}, the writer was opened for {self.image_shape}")
        b = imgs.shape[0]
        if self.appended + b > self.num_images:
            raise InvalidInputError(f"{self.appended} + {b} images is more than the {self.num_images} stated")
        labs = _check_labels(labs, b, self.num_classes)
        batch = {"images": imgs, "labels": labs.astype(self._specs["labels"][0]), **self._encode(dense, b)}
        if self._stage is None:
            self._open_stage()
        if self._stats is not None:
            self._stats.add(imgs)
        self._counts += np.bincount(labs, minlength=self.num_classes)
        for name, part in batch.items():
            self._pending[name].append(part)
        self.appended += b
        self._flush(final=self.appended == self.num_images)

    def close(self) -> Path:
        """Commit: check the count, write the manifest last, fsync, check the stage as a reader
        would, move into place. Any failure (Ctrl-C included) removes the stage."""
        if self._done:
            return self.path
        if self.appended != self.num_images:
            self.abort()
            raise InvalidInputError(f"{self.path}: {self.appended} of the {self.num_images} stated images were "
                                    "appended; nothing was written")
        try:
            mean, std = self._meta["mean"], self._meta["std"]
            if self._stats is not None:
                auto_mean, auto_std = self._stats.result()
                mean = auto_mean if mean is None else mean
                std = auto_std if std is None else std
            manifest = self._manifest(mean=mean, std=std, counts=self._counts,
                                      digests={name: h.hexdigest() for name, h in self._hashes.items()})
            self._group.attrs.update({ATTRIBUTE_KEY: manifest.to_json()})  # last: marks the stage complete
            fsync_tree(self._stage)
            _check_readable(self._stage, self.path)
            if is_zip_path(self.path):
                pack_dir(self._stage, self.path)
            else:
                place(self._stage, self.path)
        except BaseException as exc:
            self._finish(exc)
            raise
        self._finish(None)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the target is untouched."""
        if not self._done:
            self._finish(InvalidInputError("aborted"))

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        if kind is None:
            self.close()
        elif not self._done:
            self._done = True
            if self._stage_cm is not None:
                self._hasher.shutdown(wait=True)
                self._stage_cm.__exit__(kind, exc, tb)  # cancels zarr's writes, removes the stage

    # -- internals ------------------------------------------------------------------------

    def _open_stage(self) -> None:
        self._hasher = ThreadPoolExecutor(max_workers=1)
        self._stage_cm = staging_dir(self.path)
        self._stage = self._stage_cm.__enter__()
        codec = {"zstd": [zarr.codecs.ZstdCodec(level=3)], "gzip": [zarr.codecs.GzipCodec(level=5)],
                 None: None}[self._compression]
        names = {**DIMENSION_NAMES, **self._enc.dimension_names()}
        self._group = zarr.create_group(zarr.storage.LocalStore(self._stage), zarr_format=3)
        self._arrays = {}
        for name, (dtype, shape) in self._specs.items():
            self._arrays[name] = self._group.create_array(
                name, shape=shape, dtype=dtype, chunks=(self._chunk_rows[name], *shape[1:]),
                fill_value=0, compressors=codec, dimension_names=names[name], config={"write_empty_chunks": True})

    def _encode(self, dense: np.ndarray, b: int) -> dict[str, np.ndarray]:
        """Check ``b`` images' dense labels and encode them into the stored arrays."""
        _check_dense(dense, b, self._sampler, self._values)
        if dense.shape[2] != self.num_classes:
            raise InvalidInputError(f"dense_labels have {dense.shape[2]} classes, the writer was opened "
                                    f"for {self.num_classes}")
        parts = self._enc.encode(dense)
        _check_encoded(parts, self._enc)
        return parts

    def _join_stage(self, stage: Path) -> None:
        """Write into a stage another process (rank 0) opened; this writer never commits it."""
        self._hasher = ThreadPoolExecutor(max_workers=1)
        self._stage = stage
        self._group = zarr.open_group(zarr.storage.LocalStore(stage), mode="r+", zarr_format=3)
        self._arrays = {name: self._group[name] for name in self._specs}

    def _put(self, parts: Mapping[str, np.ndarray], *, final: bool) -> None:
        """Queue already validated rows for some arrays and store their complete chunks."""
        for name, part in parts.items():
            self._pending[name].append(part)
        self._flush(final=final)

    def _flush(self, final: bool) -> None:
        """Store every complete chunk row range that all pending parts cover."""
        hashing = []
        for name, parts in self._pending.items():
            if not parts:
                continue
            rows = self._arrays[name].chunks[0]
            data = parts[0] if len(parts) == 1 else np.concatenate(parts)
            start = self._written[name]
            ready = len(data) if final else len(data) // rows * rows
            if ready:
                block = np.ascontiguousarray(data[:ready])
                little = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).view(np.uint8)
                # hashed on the writer's thread (FIFO: each array's bytes in order) while zarr
                # compresses and stores the same block
                hashing.append(self._hasher.submit(self._hashes[name].update, little.reshape(-1)))
                self._arrays[name][start:start + ready] = block
            self._pending[name] = [data[ready:]] if ready < len(data) else []
            self._written[name] = start + ready
        for done in hashing:
            done.result()

    def _manifest(self, *, mean: Any, std: Any, digests: Mapping[str, str], counts: np.ndarray) -> Manifest:
        m = self._meta
        distill = _model(DistillationInfo, m["distillation"], "distillation")
        if distill.ipc is None and counts.min() == counts.max() and counts[0] > 0:
            distill = distill.model_copy(update={"ipc": int(counts[0])})
        labeler_info = _model(LabelerInfo, m["labeler"], "labeler")
        height, width, channels = self.image_shape
        pub = m["publication"]
        if isinstance(pub, Mapping):  # checked as publish() checks it: known license ids, UTF-8 text
            from .publish import publication_info

            pub = publication_info(**pub)
        version = max(self._enc.since, labeler_info.since, pub.since if pub is not None else "1.0",
                      key=lambda v: tuple(map(int, v.split("."))))
        names = m["class_names"]
        try:
            return Manifest(
                format_version=version, created_by=f"ladd_format {__version__}",
                num_images=self.num_images, num_classes=self.num_classes,
                class_names=[str(i) for i in range(self.num_classes)] if names is None else list(names),
                image=ImageInfo(height=height, width=width, channels=channels, mean=list(mean), std=list(std)),
                sampler=self._sampler,
                dense_labels=DenseLabelSpec(encoding=self._enc.name, params=self._enc.params, values=self._values,
                                            temperature=m["temperature"]),
                labeler=labeler_info, distillation=distill, extra=dict(m["extra"] or {}), publication=pub,
                arrays={name: ArrayRecord(dtype=dtype, shape=list(shape), sha256=digests.get(name, "0" * 64))
                        for name, (dtype, shape) in self._specs.items()},
            )
        except (ValidationError, TypeError, ValueError) as exc:
            detail = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
            raise InvalidInputError(f"metadata is invalid: {detail}") from None

    def _finish(self, error: BaseException | None) -> None:
        self._done = True
        if self._stage_cm is not None:
            self._hasher.shutdown(wait=True)
            if error is None:
                self._stage_cm.__exit__(None, None, None)
            else:
                self._stage_cm.__exit__(type(error), error, None)


def _check_readable(stage: Path, target: Path) -> None:
    """Refuse to publish what a reader refuses: the limits of SPEC.md section 12 depend on the
    stored (compressed) bytes, known only now."""
    try:
        open_container(stage, verify=False).close()
    except LaddError as exc:
        raise InvalidInputError(f"{target}: a reader would refuse this container, so nothing was written "
                                f"(blank data? write it with compression=None): {exc}") from None


def _count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


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
    """Exact per-channel mean and std on the 0..1 scale (1.0 for a constant channel)."""
    stats = _ChannelStats(imgs.shape[-1])
    stats.add(imgs)
    return stats.result()


class _ChannelStats:
    """Exact per-channel sums accumulated batch by batch, so streamed and whole-array
    statistics agree bit for bit.

    Pixel values minus 128 summed over runs of 1,024 in float32 stay integers below 2**24,
    so each run's sums are exact without a float64 copy of the images; runs and batches are
    combined in float64, exact below 2**53 (about 5e11 pixels per channel).
    """

    _RUN = 1024

    def __init__(self, channels: int) -> None:
        self._total = np.zeros(channels)
        self._squares = np.zeros(channels)
        self._count = 0

    def add(self, imgs: np.ndarray) -> None:
        run = self._RUN
        pixels = imgs.reshape(-1, imgs.shape[-1])
        ones = np.ones(run, dtype=np.float32)
        for start in range(0, len(pixels), run * 256):
            block = pixels[start:start + run * 256].astype(np.float32) - 128
            whole = len(block) // run * run
            for part in (block[:whole].reshape(-1, run, block.shape[1]), block[whole:][None]):
                if part.size:
                    self._total += (ones[:part.shape[1]] @ part).sum(axis=0, dtype=np.float64)
                    self._squares += (ones[:part.shape[1]] @ (part * part)).sum(axis=0, dtype=np.float64)
        self._count += len(pixels)

    def result(self) -> tuple[list[float], list[float]]:
        mean = self._total / self._count
        var = np.maximum(self._squares / self._count - mean**2, 0)
        return ([(float(v) + 128) / 255 for v in mean],
                [float(np.sqrt(v)) / 255 if v > 0 else 1.0 for v in var])
