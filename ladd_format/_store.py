"""Where containers live: directory, packed ``.ladd.zip``, or an fsspec URL.

Also the byte-level duties shared by writer and reader: listing what a store holds (refusing
entries a reader must not follow), reading chunks within their bounds, content digests, and the
durable, all-or-nothing placement of a finished container (fsync, then rename) with a sweep of
what killed writers leave beside it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import os
import re
import shutil
import time
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zarr
import zarr.core.sync as zarr_sync
from numcodecs import zstd
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from .errors import (
    ContainerExistsError,
    ContainerNotFoundError,
    CredentialsRefusedError,
    IncompleteContainerError,
    IntegrityError,
    InvalidInputError,
    LaddError,
    RemoteStoreError,
    SchemaError,
)

ZIP_SUFFIXES = (".zip",)
_DIGEST_BLOCK_BYTES = 8 << 20
_LOCAL_HEADER_BYTES = 30  # a zip local file header before its name and extra field


def is_zip_path(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(ZIP_SUFFIXES)


def open_store(location: str | os.PathLike[str],
               storage_options: dict[str, Any] | None = None) -> tuple[Store, dict[str, int]]:
    """A read-only zarr store for a directory, a zip file, or an fsspec URL, and the stored size
    of every key in it: one listing, made before anything is read, that refuses entries a
    reader must not follow (SPEC.md sections 8 and 12). ``storage_options`` go to fsspec
    and apply to URLs only."""
    where = os.fspath(location)
    if isinstance(location, str) and "://" in location and not location.startswith("file://"):
        return _open_url(location, storage_options)
    if storage_options:
        raise InvalidInputError(f"{where}: storage_options apply to URLs (such as s3://bucket/c.ladd), "
                                "not to local paths")
    path = Path(where.removeprefix("file://"))
    if not path.exists():
        raise ContainerNotFoundError(f"{path}: no such container (file or directory)")
    if path.is_dir():
        root = path.resolve()
        return zarr.storage.LocalStore(root, read_only=True), _dir_sizes(root, where)
    if not path.is_file():
        raise ContainerNotFoundError(f"{path}: neither a container directory nor a zip file (not a regular file)")
    if zipfile.is_zipfile(path):
        sizes = _zip_sizes(path)
        try:  # opened now, so that closing it after any later error is safe
            return zarr_sync.sync(zarr.storage.ZipStore.open(path, mode="r")), sizes
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise IntegrityError(f"{path}: a damaged zip file ({exc})") from None
    with path.open("rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise IntegrityError(f"{path}: a damaged or truncated zip file (its central directory is missing "
                                 "or unreadable)")
    raise ContainerNotFoundError(f"{path}: neither a container directory nor a zip file")


def _dir_sizes(root: Path, where: str) -> dict[str, int]:
    """Regular files below ``root`` by key. A symbolic link counts only when it resolves to a
    regular file inside the container; any other link or special file (a FIFO would block a
    read forever) is refused."""
    sizes: dict[str, int] = {}
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    key = prefix + entry.name
                    if entry.is_symlink():
                        target = Path(os.path.realpath(entry.path))
                        if not (target.is_relative_to(root) and target.is_file()):
                            raise SchemaError(f"{where}: {key} is a symbolic link to {target}, which is not a "
                                              "regular file inside the container")
                        sizes[key] = target.stat().st_size
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append((Path(entry.path), key + "/"))
                    elif entry.is_file(follow_symlinks=False):
                        sizes[key] = entry.stat(follow_symlinks=False).st_size
                    else:
                        raise SchemaError(f"{where}: {key} is not a regular file (a FIFO, socket or device)")
        except OSError as exc:
            raise IntegrityError(f"{where}: cannot list {directory}: {exc}") from None
    return sizes


def _zip_sizes(path: Path) -> dict[str, int]:
    """Entries of a single-file container by key, from its central directory alone (see
    :func:`_zip_entries`)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos, data_end = zf.infolist(), zf.start_dir
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise IntegrityError(f"{path}: a damaged zip file ({exc})") from None
    return {key: entry.size for key, entry in _zip_entries(infos, data_end, str(path)).items()}


class _ZipEntry(NamedTuple):
    offset: int  # of the local header
    size: int
    end: int  # where the next entry (or the central directory) starts
    name: bytes  # as stored


def _zip_entries(infos: list[zipfile.ZipInfo], data_end: int, where: str) -> dict[str, _ZipEntry]:
    """Entries of a single-file container by key: every entry stored (method 0), unencrypted,
    named as a key, once, its data inside the archive and apart from every other entry's
    (overlapping entries would multiply the stored bytes)."""
    entries: dict[str, _ZipEntry] = {}
    infos = sorted(infos, key=lambda i: i.header_offset)
    for info, following in zip(infos, [*(i.header_offset for i in infos[1:]), data_end]):
        name = info.orig_filename
        entry = f"{where}: zip entry {name!r}"
        if name.endswith("/") and info.file_size == 0 and _is_key(name[:-1]):
            continue  # a directory entry some zip tools add
        if not _is_key(name):
            raise SchemaError(f"{entry} is not a key (\"/\"-separated, relative, without empty, \".\" or \"..\" parts)")
        if name in entries:
            raise SchemaError(f"{entry} appears twice; each key is stored once")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise SchemaError(f"{entry} is compressed (method {info.compress_type}) or encrypted; entries "
                              "are stored as they are (method 0)")
        name_bytes = name.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        if info.compress_size != info.file_size or \
                info.header_offset + _LOCAL_HEADER_BYTES + len(name_bytes) + info.compress_size > following:
            raise IntegrityError(f"{entry} declares {info.file_size} bytes beyond its place in the archive "
                                 "(truncated, or overlapping another entry)")
        entries[name] = _ZipEntry(info.header_offset, info.file_size, following, name_bytes)
    return entries


def _is_key(name: str) -> bool:
    parts = name.split("/")
    return "\\" not in name and "\0" not in name and all(p not in ("", ".", "..") for p in parts)


# Object stores and other fsspec URLs. One listing per open, taken before anything is read;
# chunks then go through BoundedStore as from a local container. Errors of the back ends
# (botocore's, aiohttp's, the OSError kinds s3fs maps S3's codes to) become LaddErrors.

_ZIP_PROBE_BYTES = 64  # read past a local header's name, where a zip's extra field usually ends


def _url_fs(url: str, storage_options: dict[str, Any] | None, *, asynchronous: bool = True) -> tuple[Any, str]:
    """A fresh fsspec file system for ``url`` (never a cached one: this open's listing and
    credentials are its own, and closing it touches no one else's) and the path in it."""
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InvalidInputError(f"{url}: storage_options must be a dict, not {type(storage_options).__name__}")
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise RemoteStoreError(f"{url}: URLs need fsspec (pip install 'ladd_format[remote]', or "
                               "'ladd_format[s3]' for s3://)") from None
    options = {"skip_instance_cache": True, **(storage_options or {})}
    if asynchronous:
        options["asynchronous"] = True
    try:
        fs, path = url_to_fs(url, **options)
    except ImportError as exc:  # fsspec names the package the protocol needs
        hint = " (pip install 'ladd_format[s3]')" if url.startswith(("s3://", "s3a://")) else ""
        raise RemoteStoreError(f"{url}: {_one_line(exc)}{hint}") from None
    except (ValueError, TypeError) as exc:  # an unknown protocol, options the back end refuses
        raise InvalidInputError(f"{url}: not a URL fsspec can open with these storage_options: "
                                f"{_one_line(exc)}") from None
    if asynchronous and not fs.async_impl:
        from zarr.storage._fsspec import _make_async

        fs = _make_async(fs)
    return fs, path


def _open_url(url: str, storage_options: dict[str, Any] | None) -> tuple[Store, dict[str, int]]:
    """A container at an fsspec URL: a prefix (the directory form) or one object (the
    single-file form), told apart by the listing."""
    fs, path = _url_fs(url, storage_options)
    path = path.rstrip("/")
    try:
        found = zarr_sync.sync(fs._find(path, detail=True))
        if not found:
            raise ContainerNotFoundError(f"{url}: no such container (nothing stored at or below this URL)")
        if path in found:  # one object: the single-file form
            store, sizes = _open_url_zip(fs, path, found[path], url)
        else:
            store, sizes = zarr.storage.FsspecStore(fs, path=path, read_only=True), _fsspec_sizes(found, path, url)
    except LaddError:
        _close_fs(fs)
        raise
    except Exception as exc:  # the back end's own errors
        error = _remote_error(exc, url, fs, storage_options)
        _close_fs(fs)
        raise error from None
    return _RemoteStore(store, fs, url, storage_options), sizes


def _fsspec_sizes(found: dict[str, dict[str, Any]], path: str, where: str) -> dict[str, int]:
    sizes = {}
    for name, info in found.items():
        if info.get("type") == "directory":
            continue  # a "folder" marker some tools add to object stores; it holds nothing
        key = name.removeprefix(path + "/")
        if key == name or not _is_key(key):
            raise SchemaError(f"{where}: the listing holds {name!r}, not a key below the container")
        if info.get("type") != "file" or not isinstance(info.get("size"), int):
            raise SchemaError(f"{where}: {key} is not a file of known size")
        sizes[key] = info["size"]
    return sizes


def _open_url_zip(fs: Any, path: str, info: dict[str, Any], url: str) -> tuple[Store, dict[str, int]]:
    """The single-file form in one object: its central directory read with range requests and
    checked as a local zip's (section 8), then each entry read with one range request."""
    size = info.get("size")
    if info.get("type") != "file" or not isinstance(size, int):
        raise SchemaError(f"{url}: not an object of known size")
    with io.BufferedReader(_RangeFile(fs, path, size), buffer_size=1 << 16) as file:
        try:
            with zipfile.ZipFile(file) as zf:
                infos, data_end = zf.infolist(), zf.start_dir
        except (zipfile.BadZipFile, ValueError, EOFError) as exc:
            file.seek(0)
            if file.read(4) == b"PK\x03\x04":
                raise IntegrityError(f"{url}: a damaged or truncated zip file ({_one_line(exc)})") from None
            raise ContainerNotFoundError(f"{url}: one object that is not a zip file, so neither a container "
                                         "directory nor the single-file form") from None
    entries = _zip_entries(infos, data_end, url)
    return _ZipRangeStore(fs, path, entries, url), {key: entry.size for key, entry in entries.items()}


class _RangeFile(io.RawIOBase):
    """One object as a seekable file, each read one range request (for ``zipfile``)."""

    def __init__(self, fs: Any, path: str, size: int) -> None:
        super().__init__()
        self._fs, self._path, self._size, self._pos = fs, path, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self._size - self._pos)
        if count <= 0:
            return 0
        data = zarr_sync.sync(self._fs._cat_file(self._path, start=self._pos, end=self._pos + count))
        if len(data) != count:
            raise EOFError(f"the object changed while it was read ({len(data)} bytes, not {count})")
        buffer[:count] = data
        self._pos += count
        return count


def _byte_span(byte_range: ByteRequest | None, size: int) -> tuple[int, int]:
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        return min(byte_range.start, size), min(max(byte_range.start, byte_range.end), size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    if isinstance(byte_range, SuffixByteRequest):
        return max(0, size - byte_range.suffix), size
    raise ValueError(f"unexpected byte range {byte_range!r}")


class _ZipRangeStore(Store):
    """A read-only store over the entries of a zip object, each read by a range request that
    stays within the entry's place in the archive (local header, then data)."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, fs: Any, path: str, entries: dict[str, _ZipEntry], where: str) -> None:
        super().__init__(read_only=True)
        self._fs, self._path, self._entries, self._where = fs, path, entries, where
        self._data_at: dict[str, int] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ZipRangeStore) and (other._fs, other._path) == (self._fs, self._path)

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        start, stop = _byte_span(byte_range, entry.size)
        data_at = self._data_at.get(key)
        if data_at is None:  # the local header first, and with luck the data in the same request
            head_end = min(entry.end, entry.offset + _LOCAL_HEADER_BYTES + len(entry.name) + _ZIP_PROBE_BYTES + stop)
            head = await self._fs._cat_file(self._path, start=entry.offset, end=head_end)
            data_at = self._data_at[key] = self._local_header(key, entry, head)
            if data_at + stop <= entry.offset + len(head):
                return prototype.buffer.from_bytes(head[data_at - entry.offset + start:data_at - entry.offset + stop])
        data = await self._fs._cat_file(self._path, start=data_at + start, end=data_at + stop)
        if len(data) != stop - start:
            raise IntegrityError(f"{self._where}: zip entry {key!r} is truncated (the object changed since it "
                                 "was opened?)")
        return prototype.buffer.from_bytes(data)

    def _local_header(self, key: str, entry: _ZipEntry, head: bytes) -> int:
        what = f"{self._where}: zip entry {key!r}"
        fixed = head[:_LOCAL_HEADER_BYTES]
        if len(fixed) < _LOCAL_HEADER_BYTES or fixed[:4] != b"PK\x03\x04":
            raise IntegrityError(f"{what} has no local header where the central directory says")
        method, name_length, extra_length = (int.from_bytes(fixed[i:i + 2], "little") for i in (8, 26, 28))
        name = head[_LOCAL_HEADER_BYTES:_LOCAL_HEADER_BYTES + name_length]
        if method != zipfile.ZIP_STORED or name != entry.name:
            raise IntegrityError(f"{what}: its local header disagrees with the central directory")
        data_at = entry.offset + _LOCAL_HEADER_BYTES + name_length + extra_length
        if data_at + entry.size > entry.end:
            raise IntegrityError(f"{what}: its data runs beyond its place in the archive")
        return data_at

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Any) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key in self._entries

    async def set(self, key: str, value: Buffer) -> None:
        raise PermissionError(f"{self._where} is opened read-only")

    async def delete(self, key: str) -> None:
        raise PermissionError(f"{self._where} is opened read-only")

    async def list(self) -> AsyncIterator[str]:
        for key in self._entries:
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._entries:
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        seen = set()
        for key in self._entries:
            if key.startswith(prefix):
                child = key[len(prefix):].split("/", 1)[0]
                if child not in seen:
                    seen.add(child)
                    yield child


class _RemoteStore(WrapperStore[Store]):
    """A URL's store as the reader gets it: the back end's errors on reads become LaddErrors,
    and closing it closes the file system's connections."""

    def __init__(self, store: Store, fs: Any, where: str, storage_options: dict[str, Any] | None) -> None:
        super().__init__(store)
        self._fs, self._where, self._options = fs, where, storage_options

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        try:
            return await self._store.get(key, prototype, byte_range)
        except LaddError:
            raise
        except FileNotFoundError:
            raise IncompleteContainerError(f"{self._where}: {key} is gone (deleted or replaced since the "
                                           "container was opened)") from None
        except Exception as exc:  # the back end's own errors
            raise _remote_error(exc, self._where, self._fs, self._options) from None

    async def get_partial_values(self, prototype: BufferPrototype, key_ranges: Any) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))

    def close(self) -> None:
        super().close()
        _close_fs(self._fs)


def _close_fs(fs: Any) -> None:
    """Close the connections of a file system made for one open (s3fs holds an aiohttp session)."""
    client = getattr(fs, "_s3", None)
    if client is None:
        return
    try:
        zarr_sync.sync(client.close())
    except Exception:  # best effort: the connections go with the process anyway
        pass
    fs._s3 = None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "NoAuthTokenError", "TokenRetrievalError", "UnauthorizedSSOTokenError", "SSOTokenLoadError")


def _endpoint(fs: Any, storage_options: dict[str, Any] | None) -> str:
    """The endpoint a request went to, as far as it can be told."""
    client = getattr(fs, "_s3", None)
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
    options = storage_options or {}
    client_kwargs = options.get("client_kwargs") if isinstance(options.get("client_kwargs"), dict) else {}
    endpoint = endpoint or options.get("endpoint_url") or client_kwargs.get("endpoint_url")
    if not endpoint and type(fs).__module__.startswith("s3fs"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    return str(endpoint or type(fs).__name__)


def _remote_error(exc: BaseException, url: str, fs: Any, storage_options: dict[str, Any] | None) -> LaddError:
    """The LaddError that a back end's exception means, in one line naming ``url``."""
    if isinstance(exc, LaddError):
        return exc
    endpoint = _endpoint(fs, storage_options)
    message = _one_line(exc)
    if type(exc).__name__ in _CREDENTIAL_ERRORS:
        return CredentialsRefusedError(
            f"{url}: found no usable credentials for {endpoint} ({message}); pass key and secret in "
            "storage_options, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or anon=True for a public bucket")
    if isinstance(exc, PermissionError):
        return CredentialsRefusedError(
            f"{url}: {endpoint} refused the credentials ({message}); check the key and secret "
            "(storage_options or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and that they may read this bucket")
    if isinstance(exc, FileNotFoundError):
        return ContainerNotFoundError(f"{url}: no such container or bucket at {endpoint} ({message})")
    if isinstance(exc, TypeError) and "keyword argument" in message:  # s3fs hands unknown options on
        return InvalidInputError(f"{url}: storage_options the back end refuses: {message}")
    return RemoteStoreError(f"{url}: the object store at {endpoint} failed: {type(exc).__name__}: {message}")


def read_key(store: Store, key: str, limit: int) -> bytes | None:
    """The bytes of ``key`` (``None`` if absent), reading at most ``limit + 1`` of them."""
    buffer = zarr_sync.sync(store.get(key, default_buffer_prototype(), RangeByteRequest(0, limit + 1)))
    return None if buffer is None else buffer.to_bytes()


@dataclass(frozen=True)
class ChunkCodec:
    """How each chunk of one array is stored: ``size`` decoded bytes, compressed by
    ``compressor`` (``"zstd"``, ``"gzip"`` or ``None``)."""

    compressor: str | None
    size: int

    @property
    def max_stored(self) -> int:
        """The most bytes one chunk may occupy: beyond the worst case of zstd and gzip."""
        return self.size if self.compressor is None else self.size + self.size // 64 + 4096

    def decode(self, data: bytes | memoryview, what: str) -> bytes | bytearray | memoryview:
        """The chunk's decoded bytes; decompression stops at ``size``, so a chunk that would
        inflate further is refused without ever holding more."""
        if len(data) > self.max_stored:
            raise IntegrityError(f"{what} holds {len(data)} bytes, more than a chunk of {self.size} bytes can take")
        try:
            if self.compressor == "zstd":
                out = zstd.decompress(data, bytearray(self.size))
            elif self.compressor == "gzip":
                out = _gunzip(data, self.size)
            else:
                out = data
        except Exception as exc:  # zstd and zlib report damage as RuntimeError, ValueError, zlib.error
            raise IntegrityError(f"{what} cannot be decoded: {exc}") from None
        if len(out) != self.size:
            raise IntegrityError(f"{what} decodes to {len(out)} bytes, not the {self.size} of a chunk")
        return out


def _gunzip(data: bytes, size: int) -> bytearray:
    """gzip members (as the ``gzip`` codec reads them), stopping one byte past ``size``."""
    out = bytearray()
    while data:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += member.decompress(data, size + 1 - len(out))
        if len(out) > size or not member.eof:
            raise ValueError("the gzip stream is truncated or inflates beyond the chunk")
        data = member.unused_data
    return out


class BoundedStore(WrapperStore[Store]):
    """The store zarr reads a container through: array metadata as the reader checked it (its
    codecs cut to ``bytes``), and chunks read within their bound and decompressed here, so no
    stored entry and no codec makes zarr allocate more than a chunk declares. zarr reads whole
    keys here (sharding is refused), so byte ranges are not asked for."""

    def __init__(self, store: Store, *, metadata: dict[str, bytes], codecs: dict[str, ChunkCodec],
                 where: str) -> None:
        super().__init__(store)
        self._metadata, self._codecs, self._where = metadata, codecs, where

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if key in self._metadata:
            return prototype.buffer.from_bytes(self._metadata[key])
        name, _, rest = key.partition("/")
        codec = self._codecs.get(name)
        if codec is None or not rest.startswith("c/"):
            return None
        what = f"{self._where}: chunk {key}"
        data = await self._store.get(key, prototype, RangeByteRequest(0, codec.max_stored + 1))
        if data is None:
            raise IncompleteContainerError(f"{what} is missing; a missing chunk would read as zeros")
        decoded = await asyncio.to_thread(codec.decode, data.as_buffer_like(), what)
        return prototype.buffer.from_array_like(np.frombuffer(decoded, dtype=np.uint8))  # no copy


def array_digest(array: object, rows_per_block: int) -> str:
    """sha256 of an array's logical content: C order, little-endian, block by block.

    The next block is read (zarr decodes its chunks on its own threads) while this one is
    hashed (hashlib releases the GIL), so reading and hashing overlap.
    """
    h = hashlib.sha256()
    n, step = int(array.shape[0]), max(1, rows_per_block)  # type: ignore[attr-defined]

    def read(start: int) -> np.ndarray:
        block = np.asarray(array[start:start + step])  # type: ignore[index]
        return np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<"))

    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, 0) if n else None
        for start in range(0, n, step):
            block = pending.result()  # type: ignore[union-attr]
            if start + step < n:
                pending = reader.submit(read, start + step)
            h.update(block.view(np.uint8).reshape(-1))
    return h.hexdigest()


def rows_per_block(shape: tuple[int, ...], itemsize: int) -> int:
    row_bytes = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    return max(1, _DIGEST_BLOCK_BYTES // max(1, row_bytes))


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that exists without ``overwrite`` or is not a container. Siblings that
    killed writers left are swept first, so a restored container counts as existing."""
    sweep(target)
    if target.exists() and not overwrite:
        raise ContainerExistsError(f"{target} already exists; pass overwrite=True (--overwrite on the "
                                   "command line) to replace it")
    if target.exists() and not (target.is_dir() or (target.is_file() and zipfile.is_zipfile(target))):
        raise InvalidInputError(f"{target} exists and is not a container; refusing to replace it")


def sibling(target: Path, kind: str) -> Path:
    """A unique hidden name beside ``target``: ``.NAME.KIND-RANDOM``."""
    return target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:12]}"


def remove(path: Path) -> None:
    """Delete a file or a directory tree, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def sweep(target: str | os.PathLike[str]) -> list[str]:
    """Clear what killed writers left beside the container ``target``; return what was done.

    Only names a writer makes for this target (``.NAME.tmp-`` or ``.NAME.old-`` and 12 hex
    digits) that no live writer holds (each holds an advisory lock on what it writes) are
    touched: a ``tmp`` stage is deleted; an ``old`` copy of a replaced container is deleted
    once ``target`` is a complete container, renamed back when ``target`` is missing and it is
    the one complete copy, and otherwise left (it may be the only copy).
    """
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}.") + r"(tmp|old)-[0-9a-f]{12}")
    found = []
    try:
        with os.scandir(target.parent) as entries:
            for entry in entries:
                match = pattern.fullmatch(entry.name)
                if match and not entry.is_symlink() and (entry.is_dir(follow_symlinks=False)
                                                         or entry.is_file(follow_symlinks=False)):
                    found.append((target.parent / entry.name, match[1]))
    except FileNotFoundError:
        return []
    done, olds, held = [], [], []
    try:
        for path, kind in sorted(found):
            fd = _try_lock(path)
            if fd is None:
                continue  # a live writer's, or gone
            held.append(fd)
            if kind == "tmp":
                remove(path)
                done.append(f"removed {path}")
            else:
                olds.append(path)
        return done + _settle_old(target, olds)
    finally:
        for fd in held:
            os.close(fd)


def _settle_old(target: Path, olds: list[Path]) -> list[str]:
    if not olds:
        return []
    if not target.exists():
        complete = [old for old in olds if _is_complete(old)]
        if len(complete) != 1:
            return [f"kept {old}: {target} is missing and {len(complete)} copies beside it are complete"
                    for old in olds]
        _restore(complete[0], target)
        olds = [old for old in olds if old != complete[0]]
        done = [f"restored {complete[0]} to {target}"]
    else:
        done = []
    if not _is_complete(target):
        return done + [f"kept {old}: {target} is not a complete container" for old in olds]
    for old in olds:
        remove(old)
    return done + [f"removed {old}" for old in olds]


def _restore(old: Path, target: Path) -> None:
    """Rename ``old`` onto the missing ``target`` without replacing anything that appeared there."""
    if old.is_dir():
        os.rename(old, target)  # fails if target is now a non-empty directory
    else:
        os.link(old, target)  # fails if target now exists
        old.unlink()
    _fsync(target.parent)


def _is_complete(path: Path) -> bool:
    from ._read import open as open_container  # the reader imports this module

    try:
        open_container(path, verify=False).close()
    except Exception:  # any failure to open means incomplete here
        return False
    return True


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its advisory lock, or ``None`` when another
    process holds the lock or ``path`` went away."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _claim(target: Path, kind: str, *, directory: bool) -> tuple[Path, int]:
    """A fresh sibling of ``target`` (a directory or an empty file), created and locked, so
    that :func:`sweep` leaves it alone while this process lives."""
    while True:
        path = sibling(target, kind)
        try:
            if directory:
                path.mkdir()
                fd = os.open(path, os.O_RDONLY)
            else:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileNotFoundError:
            continue  # swept between mkdir and open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return path, fd
        except OSError:  # a sweep locked it first and deletes it
            pass
        os.close(fd)


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A fresh hidden sibling directory of ``target``, locked while it is used; removed unless
    it was moved into place. What killed writers left beside ``target`` is swept first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target)
    stage, lock = _claim(target, "tmp", directory=True)
    try:
        yield stage
    except BaseException:  # Ctrl-C included: zarr may still be writing into the stage
        _stop_zarr_io()
        _remove_settled(stage)
        raise
    finally:
        remove(stage)
        os.close(lock)


def _stop_zarr_io(timeout: float = 10.0) -> None:
    """Cancel the chunk writes zarr still runs on its event-loop thread and wait for them.

    An interrupt reaches the main thread while zarr's loop keeps writing; without this the
    tasks recreate files in a removed stage and die noisily at exit ("Task was destroyed").
    """
    loop = getattr(zarr_sync, "loop", [None])[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout)
    except BaseException:  # best effort: removal below still runs
        pass


def _remove_settled(path: Path, timeout: float = 10.0) -> None:
    """Remove ``path`` until it stays removed (a file write already running may land late)."""
    deadline = time.monotonic() + timeout
    while True:
        remove(path)
        time.sleep(0.05)
        if not path.exists() or time.monotonic() > deadline:
            return


def fsync_tree(root: Path) -> None:
    """Flush every file and directory below ``root`` (directories last) to the disk."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place(source: Path, target: Path) -> None:
    """Move a finished ``source`` onto ``target`` so that readers see old or new, never half.

    A replaced container is first renamed aside, locked so that no sweep takes it, and deleted
    only after the new one is in place, so a crash in between leaves the old one intact beside
    the target.
    """
    aside = lock = None
    try:
        if target.exists():
            lock = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
            fcntl.flock(lock, fcntl.LOCK_EX)
            aside = sibling(target, "old")
            os.rename(target, aside)
        try:
            os.rename(source, target)
        except OSError:
            if aside is not None:
                os.rename(aside, target)
            raise
        _fsync(target.parent)
        if aside is not None:
            remove(aside)
    finally:
        if lock is not None:
            os.close(lock)


def pack_dir(source: Path, target: Path) -> None:
    """Pack a container directory into a zip: ZIP_STORED, sorted keys, each key once."""
    tmp, lock = _claim(target, "tmp", directory=False)
    try:
        with os.fdopen(os.dup(lock), "r+b") as file, \
                zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                zf.write(path, path.relative_to(source).as_posix())
        _fsync(tmp)
        place(tmp, target)
    finally:
        remove(tmp)
        os.close(lock)
