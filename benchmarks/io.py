"""Write/read speed of a container against np.save/np.load of the same raw arrays.

    python benchmarks/io.py [--images 10000] [--size 32] [--repeat 5] [--compression zstd|gzip|none]

Prints seconds (best of --repeat, warm page cache) and ratios to numpy in one run.
Default workload: 10,000 images of 32x32x3 uint8 with 25x10 float16 dense labels.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import ladd_format


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compression", default="zstd", choices=["zstd", "gzip", "none"])
    args = ap.parse_args()
    compression = None if args.compression == "none" else args.compression

    rng = np.random.default_rng(0)
    m, s, k = args.images, args.size, args.classes
    # Smooth-ish synthetic images (real distilled images compress a little, pure noise not at all).
    base = rng.integers(0, 256, (m, s // 4, s // 4, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)
    images = (images.astype(np.int16) + rng.integers(-8, 9, images.shape)).clip(0, 255).astype(np.uint8)
    labels = np.arange(m) % k
    logits = rng.normal(size=(m, 25, k)).astype(np.float32)
    dense = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    dense16 = dense.astype(np.float16)
    raw_bytes = images.nbytes + labels.astype(np.uint8).nbytes + dense16.nbytes

    root = Path(tempfile.mkdtemp(prefix="ladd-io-"))
    try:
        def np_save() -> None:
            for name, arr in (("images", images), ("labels", labels.astype(np.uint8)), ("dense", dense16)):
                np.save(root / f"{name}.npy", arr)

        def np_save_fsync() -> None:
            np_save()
            for name in ("images", "labels", "dense"):
                fd = os.open(root / f"{name}.npy", os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)

        def sha256_all() -> None:
            for arr in (images, labels.astype(np.uint8), dense16):
                hashlib.sha256(arr).hexdigest()

        def np_load() -> None:
            for name in ("images", "labels", "dense"):
                np.load(root / f"{name}.npy")

        target = root / "c.ladd"

        def ladd_write() -> None:
            ladd_format.write(target, images, labels, dense, encoding="float16",
                              compression=compression, overwrite=True)

        def ladd_read(verify: bool) -> None:
            with ladd_format.open(target, verify=verify) as ds:
                np.asarray(ds.images)
                np.asarray(ds.dense_labels)

        t_save = _best(np_save, args.repeat)
        t_save_sync = _best(np_save_fsync, args.repeat)
        t_sha = _best(sha256_all, args.repeat)
        t_load = _best(np_load, args.repeat)
        t_write = _best(ladd_write, args.repeat)
        t_read = _best(lambda: ladd_read(False), args.repeat)
        t_read_v = _best(lambda: ladd_read(True), args.repeat)
        t_open = _best(lambda: ladd_format.open(target, verify=False).close(), args.repeat)
        with ladd_format.open(target) as ds:
            stored = sum(ds.stored_bytes().values())
            t_images = _best(lambda: np.asarray(ds.images), args.repeat)
            t_dense = _best(lambda: np.asarray(ds.dense_labels), args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"workload: {m} images {s}x{s}x3 uint8 + {m}x25x{k} float16 dense labels, "
          f"{raw_bytes / 1e6:.1f} MB raw, {stored / 1e6:.1f} MB stored (compression={args.compression})")
    rows = [("np.save", t_save, None), ("np.save + fsync", t_save_sync, None),
            ("sha256 of the raw arrays", t_sha, None),
            ("ladd write", t_write, f"{t_write / t_save:5.2f}x np.save, {t_write / t_save_sync:5.2f}x np.save+fsync"),
            ("np.load", t_load, None), ("ladd read (verify=False)", t_read, f"{t_read / t_load:5.2f}x np.load"),
            ("  of which open", t_open, "metadata, manifest digest, chunk listing, labels"),
            ("  of which images", t_images, "uint8 as stored"),
            ("  of which dense labels", t_dense, "float16 decoded to float32"),
            ("ladd read (verify=True)", t_read_v, f"{t_read_v / t_load:5.2f}x np.load")]
    for name, t, note in rows:
        print(f"{name:26s} {t * 1e3:8.1f} ms  {raw_bytes / t / 1e6:8.0f} MB/s  {note or ''}")
    print(f"goals: read without verification <= 1.5x np.load ({t_read / t_load:.2f}x), "
          f"write <= 3x np.save ({t_write / t_save:.2f}x)")


if __name__ == "__main__":
    main()
