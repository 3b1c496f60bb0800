"""Work under ``torchrun``: label augmentation split over the ranks of a process group, and
the collectives of data-parallel training (:func:`sum_gradients`) and of the evaluation grid
(:func:`all_sum`); see :func:`ladd_format.train.train` and :func:`ladd_format.train.cross_architecture`.

Labeling: each rank labels a contiguous range of whole dense-label chunks and stores those chunks into
one staged container that rank 0 opened (so the stage must be on a file system every rank
sees). Rank 0 also stores the images and hard labels, then, once every rank has reported
success, hashes the dense arrays in order (SHA-256 cannot be combined from parts, so it reads
them back), writes the manifest and commits atomically. The result is byte-identical to a
single process: the same chunk layout, the same labeler batches (chunk rows are a multiple of
the images per batch), so the same bytes. If any rank fails or dies, every surviving rank
raises, rank 0 removes the stage, and nothing appears at the target; a stage left by a
killed rank 0 is swept by the next writer (see :func:`ladd_format.sweep`).

Messages between ranks are tensors only (no pickled objects).
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import math
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ._store import rows_per_block
from .errors import LaddError

_PROGRESS_KEY = "ladd_format/labelled"


class DistributedError(LaddError):
    """Another rank of the process group failed or died; nothing was written."""


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(timeout_s: float = 1800, device: str | torch.device | None = None) -> torch.device | None:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1):
    NCCL with one GPU per local rank where CUDA is available, gloo otherwise or when ``device``
    is a CPU (the collectives must run where the tensors are). Returns the rank's device, or
    ``None`` outside ``torchrun``. SIGTERM (what ``torchrun`` sends the other ranks when one
    fails) becomes an exception, so that stages are cleaned up."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    signal.signal(signal.SIGTERM, _terminate)
    rank_device = torch.device("cpu")
    wanted = torch.device(device).type if device is not None else None
    if torch.cuda.is_available() and wanted in (None, "cuda"):
        rank_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(rank_device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if rank_device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
        atexit.register(_leave)
    return rank_device


def _leave() -> None:
    """Leave the group this process joined before the interpreter exits: left to the C++
    destructors at exit, gloo's threads sometimes abort the process after its work is done
    ("terminate called without an active exception", exit status -6: one rank of one
    two-rank test in a full suite run here)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _terminate(signum: int, frame: Any) -> None:
    raise DistributedError("terminated by SIGTERM (another rank failed)")


def shard(units: int, rank: int, world: int) -> range:
    """The contiguous share of ``units`` that ``rank`` takes (sizes differ by at most one)."""
    return range(units * rank // world, units * (rank + 1) // world)


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast_text(text: str) -> str:
    """Rank 0's ``text`` on every rank (a length, then UTF-8 bytes, as tensors)."""
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=_device())
    size = torch.tensor([len(data)], dtype=torch.int64, device=_device())
    dist.broadcast(size, 0)
    if dist.get_rank() != 0:
        data = torch.empty(int(size), dtype=torch.uint8, device=_device())
    dist.broadcast(data, 0)
    return bytes(data.cpu().tolist()).decode()


def _all_ok(ok: bool) -> bool:
    """True when every rank passed ``True``."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class _Rows:
    """Rows [start, stop) of an image array, indexable like one (slices only)."""

    def __init__(self, images: Any, start: int, stop: int) -> None:
        self.images, self.start, self.stop = images, start, stop
        self.shape = (stop - start, *tuple(images.shape)[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> Any:
        lo, hi, _ = rows.indices(self.shape[0])
        return self.images[self.start + lo:self.start + hi]


def _progress(total: int, enabled: bool) -> Callable[[int], None]:
    """A counter every rank adds to and rank 0 shows, through the group's key-value store."""
    rank, _ = rank_world()
    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private helper: without it, rank 0 shows its own share
        store = None
    bar = tqdm(total=total, desc="label crops (all ranks)", unit="img", disable=not enabled or rank != 0)

    def update(done: int) -> None:
        if store is None:
            bar.update(done)
            return
        seen = store.add(_PROGRESS_KEY, done)
        if rank == 0:
            bar.update(seen - bar.n)
        if seen >= total:
            bar.close()

    if store is not None and rank == 0:
        store.set(_PROGRESS_KEY, "0")
    return update


def augment_ranks(writer: Any, images: Any, labels: np.ndarray,
                  batches: Callable[[Any], Iterator[tuple[slice, np.ndarray]]], *, progress: bool) -> Path:
    """Store the container of ``writer`` (a :class:`~ladd_format.Writer` every rank built
    with the same arguments) with each rank labelling its share through ``batches(rows)``."""
    rank, world = rank_world()
    m = writer.num_images
    dense_names = [n for n in writer._specs if n not in ("images", "labels")]
    unit = writer._chunk_rows[dense_names[0]]
    mine = shard(math.ceil(m / unit), rank, world)
    lo, hi = min(m, mine.start * unit), min(m, mine.stop * unit)
    failure: BaseException | None = None
    stage = ""
    if rank == 0:
        try:
            writer._open_stage()
            stage = str(writer._stage)
        except BaseException as exc:  # noqa: BLE001 - reported on every rank below
            failure = exc
    update = _progress(m, progress)
    stage = _broadcast_text(stage)
    if not stage:
        raise failure if rank == 0 and failure else DistributedError("rank 0 could not stage the container")
    try:
        if rank != 0:
            writer._join_stage(Path(stage))
        writer._written.update({name: lo for name in dense_names})
        for rows, dense in batches(_Rows(images, lo, hi)):
            writer._put(writer._encode(dense, rows.stop - rows.start), final=lo + rows.stop == hi)
            update(rows.stop - rows.start)
        if rank == 0:
            _store_inputs(writer, images, labels)
        writer._hasher.shutdown(wait=True)
        ok = True
    except BaseException as exc:  # noqa: BLE001 - every rank must learn of it
        failure, ok = exc, False
    try:
        everyone = _all_ok(ok)
    except BaseException as exc:  # a rank died: the collective fails
        everyone, failure = False, failure or exc
    if not everyone:
        if rank == 0:
            writer.abort()
        if isinstance(failure, LaddError):
            raise failure
        raise DistributedError(f"{writer.path}: another rank failed while labelling; nothing was written"
                               + (f" ({type(failure).__name__}: {failure})" if failure else "")) from None
    committed = False
    if rank == 0:
        try:
            for name in dense_names:
                writer._hashes[name] = _rehash(writer._arrays[name])
            writer.appended = m
            writer.close()
            committed = True
        except BaseException as exc:  # noqa: BLE001
            failure = exc
    committed = _all_ok(committed if rank == 0 else True)
    if not committed:
        if rank == 0 and failure is not None:
            raise failure
        raise DistributedError(f"{writer.path}: rank 0 could not commit the container; nothing was written")
    return writer.path


def _store_inputs(writer: Any, images: Any, labels: np.ndarray) -> None:
    """Rank 0's share beside its labels: every image and hard label, in blocks, hashed in order."""
    m = writer.num_images
    step = max(writer._chunk_rows["images"], 1)
    label_dtype = writer._specs["labels"][0]
    for start in range(0, m, step):
        stop = min(m, start + step)
        block = np.asarray(images[start:stop])
        if block.dtype != np.uint8 or block.shape[1:] != writer.image_shape:
            raise LaddError(f"images[{start}:{stop}] are {block.dtype} {block.shape[1:]}, the writer was opened "
                            f"for uint8 {writer.image_shape}")
        if writer._stats is not None:
            writer._stats.add(block)
        writer._put({"images": block, "labels": labels[start:stop].astype(label_dtype)}, final=stop == m)
    writer._counts += np.bincount(labels, minlength=writer.num_classes)


def _rehash(array: Any) -> Any:
    """SHA-256 of a stored array's logical content, read back whole chunks at a time."""
    digest = hashlib.sha256()
    rows = array.chunks[0]
    step = max(1, rows_per_block(array.shape, array.dtype.itemsize) // rows) * rows
    for start in range(0, array.shape[0], step):
        block = np.ascontiguousarray(array[start:start + step])
        digest.update(np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).view(np.uint8).reshape(-1))
    return digest



def _collective(op: Callable[..., Any], tensor: torch.Tensor, *args: Any) -> None:
    """Run one collective; a rank that died or failed becomes a :class:`DistributedError`
    rather than a hang (gloo sees the closed connection; otherwise the group's timeout)."""
    try:
        op(tensor, *args)
    except RuntimeError as exc:  # DistBackendError and gloo's connection errors
        raise DistributedError(f"another rank failed or died ({type(exc).__name__}: {str(exc)[:200]})") from None


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place."""
    _collective(dist.all_reduce, tensor, dist.ReduceOp.SUM)
    return tensor


def broadcast_from_first(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` with rank 0's values (one flattened message): data-parallel
    training starts every rank from rank 0's initialisation, whatever the ranks built."""
    if not tensors:
        return
    flat = torch.cat([t.detach().flatten() for t in tensors])
    _collective(dist.broadcast, flat, 0)
    with torch.no_grad():
        for t, value in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(value.view_as(t))


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` over the ranks as one flattened bucket, one all-reduce
    a step: what DDP does (in several buckets, overlapped with the backward pass) for the
    stacked [S, ...] leaves of :mod:`ladd_format.seeds`, which DDP cannot wrap. A parameter
    without a gradient (a rank with no rows in the step) adds zeros and gets the sum."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    all_sum(flat)
    for p, grad in zip(params, flat.split([p.numel() for p in params])):
        p.grad = grad.view_as(p)
