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
import os
import re
import shutil
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
import zarr.core.sync as zarr_sync
from numcodecs import zstd
from zarr.abc.store import ByteRequest, RangeByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from .errors import (
    ContainerExistsError,
    ContainerNotFoundError,
    IncompleteContainerError,
    IntegrityError,
    InvalidInputError,
    SchemaError,
)

ZIP_SUFFIXES = (".zip",)
_DIGEST_BLOCK_BYTES = 8 << 20
_LOCAL_HEADER_BYTES = 30  # a zip local file header before its name and extra field


def is_zip_path(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(ZIP_SUFFIXES)


def open_store(location: str | os.PathLike[str]) -> tuple[Store, dict[str, int]]:
    """A read-only zarr store for a directory, a zip file, or an fsspec URL, and the stored size
    of every key in it: one listing, made before anything is read, that refuses entries a
    reader must not follow (SPEC.md sections 8 and 12)."""
    where = os.fspath(location)
    if isinstance(location, str) and "://" in location and not location.startswith("file://"):
        try:
            store = zarr.storage.FsspecStore.from_url(location, read_only=True)
        except ImportError as exc:
            raise ContainerNotFoundError(
                f"{location}: URLs need fsspec (pip install 'ladd_format[remote]'): {exc}"
            ) from None
        return store, _fsspec_sizes(store, where)
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
    """Entries of a single-file container by key, from its central directory alone: every entry
    stored (method 0), unencrypted, named as a key, once, its data inside the archive and apart
    from every other entry's (overlapping entries would multiply the stored bytes)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos, data_end = zf.infolist(), zf.start_dir
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise IntegrityError(f"{path}: a damaged zip file ({exc})") from None
    sizes: dict[str, int] = {}
    infos.sort(key=lambda i: i.header_offset)
    for info, following in zip(infos, [*(i.header_offset for i in infos[1:]), data_end]):
        name = info.orig_filename
        entry = f"{path}: zip entry {name!r}"
        if name.endswith("/") and info.file_size == 0 and _is_key(name[:-1]):
            continue  # a directory entry some zip tools add
        if not _is_key(name):
            raise SchemaError(f"{entry} is not a key (\"/\"-separated, relative, without empty, \".\" or \"..\" parts)")
        if name in sizes:
            raise SchemaError(f"{entry} appears twice; each key is stored once")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise SchemaError(f"{entry} is compressed (method {info.compress_type}) or encrypted; entries "
                              "are stored as they are (method 0)")
        name_bytes = len(name.encode("utf-8" if info.flag_bits & 0x800 else "cp437"))
        if info.compress_size != info.file_size or \
                info.header_offset + _LOCAL_HEADER_BYTES + name_bytes + info.compress_size > following:
            raise IntegrityError(f"{entry} declares {info.file_size} bytes beyond its place in the archive "
                                 "(truncated, or overlapping another entry)")
        sizes[name] = info.file_size
    return sizes


def _is_key(name: str) -> bool:
    parts = name.split("/")
    return "\\" not in name and "\0" not in name and all(p not in ("", ".", "..") for p in parts)


def _fsspec_sizes(store: zarr.storage.FsspecStore, where: str) -> dict[str, int]:
    try:
        found = zarr_sync.sync(store.fs._find(store.path, detail=True))
    except Exception as exc:  # fsspec back ends raise their own errors
        raise IntegrityError(f"{where}: cannot list the store: {exc}") from None
    sizes = {}
    for path, info in found.items():
        key = path.removeprefix(store.path.rstrip("/") + "/")
        if info.get("type") != "file" or not isinstance(info.get("size"), int):
            raise SchemaError(f"{where}: {key} is not a file of known size")
        sizes[key] = info["size"]
    return sizes


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
