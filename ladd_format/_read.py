"""The reader: open a container read-only, check it is complete and intact, expose arrays."""

from __future__ import annotations

import codecs
import copy
import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store

from ._encodings import Encoding, get_encoding
from ._store import BoundedStore, ChunkCodec, array_digest, open_store, read_key, rows_per_block
from .errors import (
    IncompleteContainerError,
    IntegrityError,
    InvalidInputError,
    LaddError,
    LimitExceededError,
    SchemaError,
    VersionError,
)
from .manifest import (
    ATTRIBUTE_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    VERSION_PATTERN,
    Manifest,
    manifest_digest,
    parse_manifest,
)

SUPPORTED_MAJOR = int(FORMAT_VERSION.split(".")[0])

# Limits on what a container may declare for what it stores (SPEC.md section 12), checked
# before any chunk is read, so that work and memory follow the stored bytes.
MAX_METADATA_BYTES = 1 << 22
"""A zarr.json may take 4 MiB (a manifest with 100,000 long class names fits)."""
MAX_CHUNK_BYTES = 1 << 25
"""A chunk may decode to 32 MiB: eight times the 4 MiB writers aim at, an image of 3,300 x 3,300 RGB."""
FREE_ARRAY_BYTES = 1 << 24
"""An array may decode to 16 MiB whatever it stores, and beyond that ..."""
MAX_EXPANSION = 1 << 10
"""... to at most 1024 times the bytes its chunks occupy (about gzip's ceiling)."""
FREE_IMAGES = 1 << 20
"""A container may declare 2**20 images, and beyond that one per byte its chunks occupy: a
reader holds every hard label in memory."""
INTEGER_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


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
                 encoding: Encoding, sizes: dict[str, int], verify_on_read: bool = False) -> None:
        self._store = store
        self._arrays = arrays
        self._sizes = sizes
        self.manifest = manifest
        self.location = location
        self.encoding = encoding
        self._rows: np.ndarray | None = None  # a view's rows of the container; None: all of them
        m = manifest
        self._read_digests = {name: _ReadDigest(name, m.arrays[name].sha256, a.shape[0], location)
                              for name, a in arrays.items()} if verify_on_read else {}
        self._readers = readers = {name: _zarr_reader(a, location, self._read_digests.get(name))
                                   for name, a in arrays.items()}
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

    def verified_arrays(self) -> list[str]:
        """Arrays whose digest a ``verify="read"`` dataset has checked so far."""
        return [name for name, digest in self._read_digests.items() if digest.verified]

    def stored_dense(self) -> dict[str, LazyArray]:
        """The encoding's stored arrays, undecoded, for this dataset's (or view's) rows: what
        a loader keeps on a device instead of the decoded float32 labels."""
        out = {}
        for name in self.encoding.dimension_names():
            array = self._arrays[name]
            whole = LazyArray(self._readers[name], tuple(array.shape), array.dtype)
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
        """Bytes each array occupies in the store (chunks and metadata, after compression),
        from the listing made at open (a zip's central directory): nothing is read."""
        return {name: sum(size for key, size in self._sizes.items() if key.startswith(f"{name}/"))
                for name in self._arrays}

    def verify(self) -> None:
        """Recompute every array's sha256 and compare it with the manifest (stored floats must
        also be finite).

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
        whole = LazyArray(self._readers[name], tuple(array.shape), array.dtype)
        rows = array.chunks[0]  # whole chunks a block, so that each chunk is decoded once
        return array_digest(whole, max(rows, rows_per_block(array.shape, array.dtype.itemsize) // rows * rows))

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> LaddDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(location: str | os.PathLike[str], *, verify: bool | str = True,  # noqa: A001
         storage_options: dict[str, Any] | None = None) -> LaddDataset:
    """Open a container (directory, ``.zip`` file, or fsspec URL) read-only.

    A URL (``s3://bucket/path/c.ladd``, ``s3://bucket/c.ladd.zip``, ``memory://...``, or
    ``hf://datasets/USER/REPO/c.ladd.zip`` with huggingface_hub installed) names a
    prefix (the directory form) or one object (the single-file form); ``storage_options`` go
    to fsspec (for S3: ``key``, ``secret``, ``endpoint_url``, ``anon``, ...; without them the
    AWS environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``).
    A store that refuses the credentials raises ``ladd_format.remote.CredentialsRefusedError``,
    one that cannot be reached ``ladd_format.remote.RemoteStoreError``.

    Structure, manifest and manifest digest are always checked; ``verify=True`` also
    recomputes every array digest now (reads every byte once). ``verify="read"`` checks each
    array's digest while it is read in full instead (``np.asarray(ds.images)``, a
    ``DeviceLoader`` upload): one pass instead of two, an :class:`IntegrityError` from the
    read that completes a damaged array; rows read piecemeal are not checked.
    ``ds.verified_arrays()`` lists the arrays checked so far.
    """
    if verify not in (True, False, "read"):
        raise InvalidInputError(f"verify must be True, False or 'read', not {verify!r}")
    where = os.fspath(location)
    store, sizes = open_store(location, storage_options)
    try:
        dataset = _open(store, sizes, where, verify_on_read=verify == "read")
        if verify is True:
            dataset.verify()
    except BaseException:
        store.close()  # safe: open_store hands over an opened store
        raise
    return dataset


def _open(store: Store, sizes: dict[str, int], where: str, verify_on_read: bool = False) -> LaddDataset:
    """Section 7 of the spec, with every size checked against what is stored before zarr
    (which trusts declared shapes) sees the arrays."""
    root = _read_json(store, sizes, "zarr.json", where)
    if not isinstance(root, dict) or root.get("zarr_format") != 3 or root.get("node_type") != "group":
        raise SchemaError(f"{where}: the root zarr.json is not Zarr v3 group metadata")
    attributes = root.get("attributes", {})
    body = attributes.get(ATTRIBUTE_KEY) if isinstance(attributes, dict) else None
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
    metadata, chunk_codecs, occupied = {}, {}, 0
    for name, (dtype, shape) in expected.items():
        meta = _read_json(store, sizes, f"{name}/zarr.json", where, missing=f"array {name!r} is missing")
        chunk_codecs[name], stored = _check_array(meta, name, manifest, dtype, shape, sizes, where)
        metadata[f"{name}/zarr.json"] = json.dumps({**meta, "codecs": meta["codecs"][:1]}).encode()
        occupied += stored
    if manifest.num_images > max(FREE_IMAGES, occupied):
        raise LimitExceededError(f"{where}: {manifest.num_images} images for {occupied} bytes of chunks; beyond "
                                 f"{FREE_IMAGES} images a container stores at least one byte per image")
    bounded = BoundedStore(store, metadata=metadata, codecs=chunk_codecs, where=where)
    try:
        arrays = {name: zarr.open_array(bounded, path=name, mode="r", zarr_format=3) for name in expected}
    except Exception as exc:  # zarr's own checks of the metadata
        raise SchemaError(f"{where}: array metadata (zarr.json) that zarr refuses: {exc}") from None
    dataset = LaddDataset(bounded, manifest, arrays, where, encoding, sizes, verify_on_read)
    labels = dataset.labels
    if labels.size and (labels.min() < 0 or labels.max() >= manifest.num_classes):
        raise SchemaError(f"{where}: hard labels outside [0, {manifest.num_classes})")
    return dataset


def _read_json(store: Store, sizes: dict[str, int], key: str, where: str, *,
               missing: str = "no Zarr v3 group metadata (zarr.json)") -> Any:
    """A metadata document: at most MAX_METADATA_BYTES of UTF-8 JSON without a byte-order
    mark, duplicate member names or non-finite numbers, which readers would disagree on."""
    if key not in sizes:
        raise IncompleteContainerError(f"{where}: {missing}")
    if sizes[key] > MAX_METADATA_BYTES:
        raise LimitExceededError(f"{where}: {key} is {sizes[key]} bytes, more than the {MAX_METADATA_BYTES} "
                                 "a metadata document may take")
    try:
        data = read_key(store, key, MAX_METADATA_BYTES)
    except LaddError:  # a remote store's own typed error (credentials, endpoint)
        raise
    except Exception as exc:  # a damaged entry, or one that vanished since the listing
        raise IntegrityError(f"{where}: {key} cannot be read: {exc}") from None
    if data is None or len(data) > MAX_METADATA_BYTES:
        raise IntegrityError(f"{where}: {key} changed while the container was opened")
    if data.startswith(codecs.BOM_UTF8):
        raise SchemaError(f"{where}: {key} starts with a byte-order mark; metadata is UTF-8 without one")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique_members,
                          parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise SchemaError(f"{where}: {key} is not UTF-8 (metadata is UTF-8 JSON)") from None
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"{where}: {key} is not valid JSON: {exc}") from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for key, value in pairs:
        if key in members:
            raise ValueError(f"member {key!r} appears twice in one object")
        members[key] = value
    return members


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond binary64")
    return value


def _check_version(body: Any, where: str) -> None:
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise SchemaError(f"{where}: not a LADD manifest (format={body.get('format') if isinstance(body, dict) else body!r})")
    version = body.get("format_version")
    if not isinstance(version, str) or not re.fullmatch(VERSION_PATTERN, version):
        raise SchemaError(f"{where}: format_version {version!r} is not MAJOR.MINOR (such as \"1.2\", no leading "
                          "zeros, major 1 or later)")
    if int(version.split(".")[0]) > SUPPORTED_MAJOR:
        raise VersionError(
            f"{where}: container format {version} is newer than this reader, which reads "
            f"{SUPPORTED_MAJOR}.x; upgrade ladd_format to open it")


def _check_array(meta: Any, name: str, manifest: Manifest, dtype: str | None, shape: tuple[int, ...],
                 sizes: dict[str, int], where: str) -> tuple[ChunkCodec, int]:
    """Check one array's zarr.json against the manifest and section 2, and its chunks against
    the listing; return how its chunks are stored and the bytes they occupy. Nothing here
    grows with declared sizes."""
    what = f"{where}: array {name!r}"
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise SchemaError(f"{what}: zarr.json is not Zarr v3 array metadata")
    record = manifest.arrays[name]
    declared, data_type = meta.get("shape"), meta.get("data_type")
    if not _ints(declared) or tuple(declared) != shape or list(shape) != record.shape:
        raise SchemaError(f"{what} has shape {declared}, manifest says {shape}")
    if data_type != record.dtype or (dtype is not None and data_type != dtype):
        raise SchemaError(f"{what} has dtype {data_type}, manifest says {record.dtype}")
    if dtype is None and data_type not in INTEGER_TYPES:
        raise SchemaError(f"{what} must hold integers, has {data_type}")
    grid = meta.get("chunk_grid")
    rows = grid.get("configuration", {}).get("chunk_shape") if isinstance(grid, dict) else None
    if not (isinstance(grid, dict) and grid.get("name") == "regular" and _ints(rows) and len(rows) == len(shape)
            and rows[0] >= 1 and tuple(rows[1:]) == shape[1:]):
        raise SchemaError(f"{what}: chunks must be a regular grid of whole images, got {grid}")
    if meta.get("chunk_key_encoding") not in ({"name": "default", "configuration": {"separator": "/"}},
                                              {"name": "default"}):
        raise SchemaError(f"{what}: the chunk key encoding must be 'default' with separator '/'")
    if meta.get("storage_transformers", []) != []:
        raise SchemaError(f"{what}: storage transformers are not allowed")
    itemsize = np.dtype(data_type).itemsize
    chunk = ChunkCodec(_compressor(meta.get("codecs"), itemsize, what), itemsize * math.prod(rows))
    if chunk.size > MAX_CHUNK_BYTES:
        raise LimitExceededError(f"{what}: a chunk decodes to {chunk.size} bytes, more than the {MAX_CHUNK_BYTES} "
                                 "a reader accepts")
    count = -(-shape[0] // rows[0])
    present, stored = _stored_chunks(sizes, name, len(shape), count)
    if present < count:
        raise IncompleteContainerError(f"{what} has {present} of {count} chunks; a missing chunk would read as zeros")
    for key, size in stored:
        if size > chunk.max_stored:
            raise IntegrityError(f"{where}: chunk {key} holds {size} bytes, more than a chunk of {chunk.size} "
                                 "bytes can take")
    decoded, occupied = count * chunk.size, sum(size for _, size in stored)
    if decoded > FREE_ARRAY_BYTES and decoded > MAX_EXPANSION * occupied:
        raise LimitExceededError(f"{what} decodes to {decoded} bytes from {occupied} stored, more than "
                                 f"{MAX_EXPANSION} times as many")
    return chunk, occupied


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _compressor(chain: Any, itemsize: int, what: str) -> str | None:
    """The compressor of a codec chain of section 2.5: ``bytes`` (little-endian) and at most
    one of ``zstd`` and ``gzip``."""
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    allowed = [little] if itemsize > 1 else [little, {"name": "bytes"}, {"name": "bytes", "configuration": {}}]
    if (isinstance(chain, list) and 1 <= len(chain) <= 2 and chain[0] in allowed
            and (len(chain) == 1 or (isinstance(chain[1], dict) and chain[1].get("name") in ("zstd", "gzip")
                                     and isinstance(chain[1].get("configuration", {}), dict)))):
        return chain[1]["name"] if len(chain) == 2 else None
    raise SchemaError(f"{what}: codecs {chain} are not the little-endian bytes codec and at most one of zstd, gzip")


def _stored_chunks(sizes: dict[str, int], name: str, ndim: int, count: int) -> tuple[int, list[tuple[str, int]]]:
    """How many of the ``count`` declared chunks the listing holds, and their keys and sizes:
    one pass over what exists, never over what is declared."""
    prefix, suffix = f"{name}/c/", "/0" * (ndim - 1)
    found = []
    for key, size in sizes.items():
        if key.startswith(prefix) and key.endswith(suffix):
            index = key[len(prefix):len(key) - len(suffix)]
            if index.isascii() and index.isdigit() and str(int(index)) == index and int(index) < count:
                found.append((key, size))
    return len(found), found


class _ReadDigest:
    """Checks an array's sha256 while it is read: slices that continue where the last one
    ended (a full read, or a loader's block after block) are hashed, and reaching the last row
    compares the digest, so one pass both reads and verifies. A read from row 0 starts over."""

    def __init__(self, name: str, sha256: str, rows: int, where: str) -> None:
        self._name, self._sha256, self._rows, self._where = name, sha256, rows, where
        self._lock = threading.Lock()
        self._hash, self._next, self.verified = hashlib.sha256(), 0, False

    def feed(self, selection: Any, block: np.ndarray) -> None:
        if self.verified or not isinstance(selection, slice):
            return
        start, stop, step = selection.indices(self._rows)
        with self._lock:
            if step != 1 or start not in (0, self._next) or stop <= start:
                return
            if start == 0:
                self._hash, self._next = hashlib.sha256(), 0
            self._hash.update(np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).view(np.uint8).reshape(-1))
            self._next = stop
            if stop < self._rows:
                return
            digest = self._hash.hexdigest()
        if digest != self._sha256:
            raise IntegrityError(f"{self._where}: array {self._name!r} does not match its digest (stored sha256 "
                                 f"{self._sha256[:12]}..., content {digest[:12]}...)")
        self.verified = True


def _zarr_reader(array: zarr.Array, where: str, digest: _ReadDigest | None = None) -> Callable[[Any], np.ndarray]:
    """Reads along the image axis; every failure is typed, and stored floats must be finite
    (NaN or infinity in a stored label is a schema error: writers refuse them). With
    ``digest``, what is read is also checked against the manifest (``verify="read"``)."""
    name, floats = array.basename, array.dtype.kind == "f"

    def read(selection: Any) -> np.ndarray:
        try:
            if isinstance(selection, slice):
                out = np.asarray(array[selection])
            else:
                out = np.asarray(array.get_orthogonal_selection((selection,)))
        except (IndexError, TypeError, LaddError):
            raise
        except Exception as exc:  # a damaged chunk fails inside the codec pipeline
            raise IntegrityError(f"{where}: array {name!r} cannot be decoded: {exc}") from None
        if floats and not np.isfinite(out).all():
            raise SchemaError(f"{where}: array {name!r} holds a non-finite value (NaN or infinity)")
        if digest is not None:
            digest.feed(selection, out)
        return out

    return read


def _follow(array: LazyArray, index: np.ndarray) -> LazyArray:
    return LazyArray(lambda sel: array[index[sel]], (len(index), *array.shape[1:]), array.dtype)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
