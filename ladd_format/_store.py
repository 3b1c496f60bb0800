"""Where containers live: directory, packed ``.ladd.zip``, or an fsspec URL.

Also the two byte-level duties shared by writer and reader: content digests and the
durable, all-or-nothing placement of a finished container (fsync, then rename).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr
import zarr.core.sync as zarr_sync
from zarr.abc.store import Store

from .errors import ContainerExistsError, ContainerNotFoundError, IntegrityError, InvalidInputError

ZIP_SUFFIXES = (".zip",)
_DIGEST_BLOCK_BYTES = 8 << 20


def is_zip_path(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(ZIP_SUFFIXES)


def open_store(location: str | os.PathLike[str]) -> Store:
    """A read-only zarr store for a directory, a zip file, or an fsspec URL."""
    if isinstance(location, str) and "://" in location:
        try:
            return zarr.storage.FsspecStore.from_url(location, read_only=True)
        except ImportError as exc:
            raise ContainerNotFoundError(
                f"{location}: URLs need fsspec (pip install 'ladd_format[remote]'): {exc}"
            ) from None
    path = Path(location)
    if not path.exists():
        raise ContainerNotFoundError(f"{path}: no such container (file or directory)")
    if path.is_dir():
        return zarr.storage.LocalStore(path, read_only=True)
    if zipfile.is_zipfile(path):
        try:
            return zarr.storage.ZipStore(path, mode="r")
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise IntegrityError(f"{path}: a damaged zip file ({exc})") from None
    with path.open("rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise IntegrityError(f"{path}: a damaged or truncated zip file (its central directory is missing "
                                 "or unreadable)")
    raise ContainerNotFoundError(f"{path}: neither a container directory nor a zip file")


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
    if target.exists() and not overwrite:
        raise ContainerExistsError(f"{target} already exists; pass overwrite=True (--overwrite on the "
                                   "command line) to replace it")
    if target.exists() and not (target.is_dir() or zipfile.is_zipfile(target)):
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


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A fresh hidden sibling directory of ``target``; removed unless it was moved into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = sibling(target, "tmp")
    stage.mkdir()
    try:
        yield stage
    except BaseException:  # Ctrl-C included: zarr may still be writing into the stage
        _stop_zarr_io()
        _remove_settled(stage)
        raise
    finally:
        remove(stage)


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

    A replaced container is first renamed aside and deleted only after the new one is in
    place, so a crash in between leaves the old one intact beside the target.
    """
    aside = None
    if target.exists():
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


def pack_dir(source: Path, target: Path) -> None:
    """Pack a container directory into a zip: ZIP_STORED, sorted keys, each key once."""
    tmp = sibling(target, "tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for file in sorted(p for p in source.rglob("*") if p.is_file()):
                zf.write(file, file.relative_to(source).as_posix())
        _fsync(tmp)
        place(tmp, target)
    finally:
        remove(tmp)
