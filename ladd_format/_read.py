"""The reader: open a container read-only, check it is complete and intact, expose arrays."""

from __future__ import annotations

import copy
import os
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store

from ._encodings import Encoding, get_encoding
from ._store import array_digest, open_store, rows_per_block
from .errors import IncompleteContainerError, IntegrityError, InvalidInputError, LaddError, SchemaError, VersionError
from .manifest import ATTRIBUTE_KEY, FORMAT_NAME, FORMAT_VERSION, Manifest, manifest_digest, parse_manifest

SUPPORTED_MAJOR = int(FORMAT_VERSION.split(".")[0])


class LazyArray:
    """A read-only array read from storage on indexing; ``np.asarray`` reads it whole.

    Indexing along the first (image) axis reads only the chunks it touches; other axes are
    applied after decoding.
    """

    def __init__(self, read: Callable[[Any], np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._read = read
        self.shape = shape
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if first is Ellipsis:
            first, rest = slice(None), (Ellipsis, *rest)
        if isinstance(first, (int, np.integer)):
            index = int(first) + self.shape[0] if first < 0 else int(first)
            if not 0 <= index < self.shape[0]:
                raise IndexError(f"index {first} is out of range for {self.shape[0]} images")
            return self._read(slice(index, index + 1))[0][rest]
        if isinstance(first, slice):
            out = self._read(first)
        else:
            idx = np.asarray(first)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + self.shape[0], idx)
            if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
                raise IndexError(f"index out of range for {self.shape[0]} images")
            order, inverse = np.unique(idx, return_inverse=True)
            out = self._read(order)[inverse.reshape(idx.shape)] if order.size else \
                np.empty((0, *self.shape[1:]), self.dtype)
        return out[(slice(None), *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read(slice(None))
        return out if dtype is None else out.astype(dtype, copy=False)


class LaddDataset:
    """An open container. Arrays are read lazily; labels are small and read at open."""

    def __init__(self, store: Store, manifest: Manifest, arrays: dict[str, zarr.Array], location: str,
                 encoding: Encoding) -> None:
        self._store = store
        self._arrays = arrays
        self.manifest = manifest
        self.location = location
        self.encoding = encoding
        self._rows: np.ndarray | None = None  # a view's rows of the container; None: all of them
        m = manifest
        readers = {name: _zarr_reader(a) for name, a in arrays.items()}
        self.images = LazyArray(readers["images"], tuple(arrays["images"].shape), np.uint8)
        self.labels = readers["labels"](slice(None)).astype(np.int64)
        decode = encoding.decoder(readers)
        self._dense_values = LazyArray(decode, (m.num_images, m.sampler.num_crops, m.num_classes), np.float32)
        if m.dense_labels.values == "logits":
            temperature = m.dense_labels.temperature
            self.dense_labels = LazyArray(lambda sel: _softmax(decode(sel), temperature),
                                          self._dense_values.shape, np.float32)
        else:
            self.dense_labels = self._dense_values

    @property
    def dense_logits(self) -> LazyArray:
        """The stored logits (only for containers written with ``values="logits"``)."""
        if self.manifest.dense_labels.values != "logits":
            raise LaddError(f"{self.location} stores probabilities, not logits")
        return self._dense_values

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Any) -> LaddDataset:
        """A view of some of the images (e.g. ``ds.subset(ds.balanced_indices(10))``).

        It shares the store and the manifest; ``images``, ``labels`` and ``dense_labels``
        follow ``indices``. ``verify`` and ``stored_bytes`` still cover the whole container.
        """
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} images")
        view = copy.copy(self)
        view._rows = index if self._rows is None else self._rows[index]
        view.labels = self.labels[index]
        view.images = _follow(self.images, index)
        view._dense_values = _follow(self._dense_values, index)
        view.dense_labels = view._dense_values if self.dense_labels is self._dense_values \
            else _follow(self.dense_labels, index)
        return view

    def stored_dense(self) -> dict[str, LazyArray]:
        """The encoding's stored arrays, undecoded, for this dataset's (or view's) rows: what
        a loader keeps on a device instead of the decoded float32 labels."""
        out = {}
        for name in self.encoding.dimension_names():
            array = self._arrays[name]
            whole = LazyArray(_zarr_reader(array), tuple(array.shape), array.dtype)
            out[name] = whole if self._rows is None else _follow(whole, self._rows)
        return out

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, np.ndarray]:
        """(image uint8 [H, W, C], hard label, dense label float32 [n*n, K])."""
        return self.images[i], int(self.labels[i]), self.dense_labels[i]

    def __repr__(self) -> str:
        m = self.manifest
        return (f"LaddDataset({self.location!r}, images={len(self)}, classes={m.num_classes}, "
                f"{m.image.height}x{m.image.width}x{m.image.channels}, n={m.sampler.n}, "
                f"encoding={m.dense_labels.encoding})")

    @property
    def class_counts(self) -> np.ndarray:
        """Images per class, [K]."""
        return np.bincount(self.labels, minlength=self.num_classes)

    @property
    def ipc(self) -> int | None:
        """Images per class when every class has the same count, else ``None``."""
        counts = self.class_counts
        return int(counts[0]) if counts.min() == counts.max() else None

    def class_indices(self, label: int) -> np.ndarray:
        """Indices of the images of class ``label``, in stored order."""
        if not 0 <= label < self.num_classes:
            raise IndexError(f"class {label} is out of range for {self.num_classes} classes")
        return np.flatnonzero(self.labels == label)

    def balanced_indices(self, ipc: int) -> np.ndarray:
        """The first ``ipc`` images of every class, class by class (e.g. IPC 10 out of 11)."""
        counts = self.class_counts
        if ipc < 1 or ipc > counts.min():
            raise InvalidInputError(f"ipc must be in [1, {counts.min()}] for this container, got {ipc}")
        return np.concatenate([self.class_indices(c)[:ipc] for c in range(self.num_classes)])

    def stored_bytes(self) -> dict[str, int]:
        """Bytes each array occupies in the store (chunks and metadata, after compression).

        A zip's sizes come from its central directory, so nothing is read or decompressed.
        """
        if isinstance(self._store, zarr.storage.ZipStore):
            with zipfile.ZipFile(self._store.path) as zf:
                sizes = [(info.filename, info.file_size) for info in zf.infolist()]
            return {name: sum(size for key, size in sizes if key.startswith(f"{name}/")) for name in self._arrays}
        try:
            return {name: int(a.nbytes_stored()) for name, a in self._arrays.items()}
        except Exception as exc:  # an unreadable store entry
            raise IntegrityError(f"{self.location}: cannot measure the stored arrays: {exc}") from None

    def verify(self) -> None:
        """Recompute every array's sha256 and compare it with the manifest.

        The arrays are hashed concurrently, each reading its next block while hashing the
        current one, so verification uses the machine's cores.
        """
        with ThreadPoolExecutor(max_workers=len(self.manifest.arrays)) as pool:
            digests = {name: pool.submit(self._digest, name) for name in self.manifest.arrays}
            for name, record in self.manifest.arrays.items():
                digest = digests[name].result()
                if digest != record.sha256:
                    raise IntegrityError(
                        f"{self.location}: array {name!r} does not match its digest "
                        f"(stored sha256 {record.sha256[:12]}..., content {digest[:12]}...)")

    def _digest(self, name: str) -> str:
        array = self._arrays[name]
        try:
            return array_digest(array, rows_per_block(array.shape, array.dtype.itemsize))
        except LaddError:
            raise
        except Exception as exc:  # a corrupted chunk fails inside the codec pipeline
            raise IntegrityError(f"{self.location}: array {name!r} cannot be decoded: {exc}") from None

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> LaddDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(location: str | os.PathLike[str], *, verify: bool = True) -> LaddDataset:  # noqa: A001
    """Open a container (directory, ``.zip`` file, or fsspec URL) read-only.

    Structure, manifest and manifest digest are always checked; ``verify=True`` also
    recomputes every array digest (reads every byte once).
    """
    where = os.fspath(location)
    store = open_store(location)
    try:
        dataset = _open(store, where)
        if verify:
            dataset.verify()
    except BaseException:
        store.close()
        raise
    return dataset


def _open(store: Store, where: str) -> LaddDataset:
    try:
        group = zarr.open_group(store, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError) as exc:
        raise IncompleteContainerError(f"{where}: no Zarr v3 group metadata (zarr.json): {exc}") from None
    except Exception as exc:
        raise SchemaError(f"{where}: root zarr.json is unreadable: {exc}") from None
    body = group.attrs.asdict().get(ATTRIBUTE_KEY)
    if body is None:
        raise IncompleteContainerError(f"{where}: no manifest (attribute {ATTRIBUTE_KEY!r}); the writer did not finish")
    _check_version(body, where)
    manifest = parse_manifest(body, where=f"{where}: manifest")
    if manifest.manifest_sha256 != manifest_digest(body):
        raise IntegrityError(f"{where}: the manifest was modified after writing (manifest_sha256 mismatch)")
    dense = manifest.dense_labels
    encoding = get_encoding(dense.encoding, dense.params, manifest.num_classes, dense.values)
    expected = {
        "images": ("uint8", (manifest.num_images, manifest.image.height, manifest.image.width,
                             manifest.image.channels)),
        "labels": (None, (manifest.num_images,)),
        **encoding.stored_specs(manifest.num_images, manifest.sampler.num_crops, manifest.num_classes),
    }
    if set(manifest.arrays) != set(expected):
        raise SchemaError(f"{where}: manifest lists arrays {sorted(manifest.arrays)}, expected {sorted(expected)}")
    arrays = {name: _open_array(group, name, manifest, dtype, shape, where)
              for name, (dtype, shape) in expected.items()}
    dataset = LaddDataset(store, manifest, arrays, where, encoding)
    labels = dataset.labels
    if labels.size and (labels.min() < 0 or labels.max() >= manifest.num_classes):
        raise SchemaError(f"{where}: hard labels outside [0, {manifest.num_classes})")
    return dataset


def _check_version(body: Any, where: str) -> None:
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise SchemaError(f"{where}: not a LADD manifest (format={body.get('format') if isinstance(body, dict) else body!r})")
    version = body.get("format_version")
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise SchemaError(f"{where}: format_version {version!r} is not MAJOR.MINOR") from None
    if major > SUPPORTED_MAJOR:
        raise VersionError(
            f"{where}: container format {version} is newer than this reader, which reads "
            f"{SUPPORTED_MAJOR}.x; upgrade ladd_format to open it")


def _open_array(group: zarr.Group, name: str, manifest: Manifest, dtype: str | None,
                shape: tuple[int, ...], where: str) -> zarr.Array:
    try:
        array = group[name]
    except KeyError:
        raise IncompleteContainerError(f"{where}: array {name!r} is missing") from None
    except Exception as exc:  # zarr raises JSON, Unicode and metadata errors of many types
        raise SchemaError(f"{where}: array {name!r} has unreadable metadata (zarr.json): {exc}") from None
    if not isinstance(array, zarr.Array):
        raise SchemaError(f"{where}: {name!r} is a group, expected an array")
    record = manifest.arrays[name]
    actual_dtype = str(array.dtype)
    if tuple(array.shape) != shape or list(shape) != record.shape:
        raise SchemaError(f"{where}: array {name!r} has shape {tuple(array.shape)}, manifest says {shape}")
    if actual_dtype != record.dtype or (dtype is not None and actual_dtype != dtype):
        raise SchemaError(f"{where}: array {name!r} has dtype {actual_dtype}, manifest says {record.dtype}")
    if dtype is None and array.dtype.kind not in "iu":
        raise SchemaError(f"{where}: array {name!r} must hold integers, has {actual_dtype}")
    if array.nchunks_initialized != array.nchunks:
        raise IncompleteContainerError(
            f"{where}: array {name!r} has {array.nchunks_initialized} of {array.nchunks} chunks; "
            "a missing chunk would read as zeros")
    return array


def _zarr_reader(array: zarr.Array) -> Callable[[Any], np.ndarray]:
    def read(selection: Any) -> np.ndarray:
        try:
            if isinstance(selection, slice):
                return np.asarray(array[selection])
            return np.asarray(array.get_orthogonal_selection((selection,)))
        except (IndexError, TypeError):
            raise
        except Exception as exc:  # a damaged chunk fails inside the codec pipeline
            raise IntegrityError(f"array {array.basename!r} cannot be decoded: {exc}") from None

    return read


def _follow(array: LazyArray, index: np.ndarray) -> LazyArray:
    return LazyArray(lambda sel: array[index[sel]], (len(index), *array.shape[1:]), array.dtype)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
