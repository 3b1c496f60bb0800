"""Crops per second: the device loader against the usual ways of feeding crops to a trainer.

Measured in one run, all delivering normalised crops on ``--device``:

- crop paths: ``UniformSampler.crops`` per path and dtype (what ``path="auto"`` picks);
- loader: ``DeviceLoader`` over a uint8-encoded container (all crops, k = 5, with DSA, bf16);
- PIL pipeline: a Dataset that crops and resizes each crop with PIL, through a
  ``torch.utils.data.DataLoader`` with worker processes;
- disk: the same crops pre-computed into a memory-mapped .npy (float32, page cache warm,
  so an upper bound for a real disk), gathered per shuffled batch and copied to the device;
- copy floor: a device copy of one batch's output bytes.

``--memory`` measures instead what opening and loading a top-5 container costs (4,000
images at 64 px, K = 1,000 by default): peak RSS of a fresh process after import, open and
load, and the bytes the loader holds against the stored arrays' bytes.

Prints everything (no assertions); ``--json PATH`` also writes the figures.
Usage: ``python benchmarks/loader.py --size 128 --images 256 --device cuda``;
``python benchmarks/loader.py --memory --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ladd_format  # noqa: E402
from ladd_format.loader import DeviceLoader  # noqa: E402
from ladd_format.sampler import PATHS, UniformSampler  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import device_name, peak_rss, sync  # noqa: E402  (benchmarks/_machine.py)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _dataset(folder, m, size, k_classes=10, seed=0, **write_kwargs):
    """A container of random images and dense labels, written to ``folder`` and opened."""
    rng = np.random.default_rng(seed)
    dense = rng.random((m, 25, k_classes), dtype=np.float32)
    dense /= dense.sum(-1, keepdims=True)
    path = ladd_format.write(Path(folder) / "bench.ladd", rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8),
                             rng.integers(0, k_classes, m), dense, mean=MEAN, std=STD, **write_kwargs)
    return ladd_format.open(path)


def measure_load(path, device):
    """Peak RSS after import, open and load of ``path`` in this (fresh) process, and the
    bytes the loader holds beside the stored arrays' bytes (uncompressed and compressed)."""
    figures = {"rss_import": peak_rss()}
    ds = ladd_format.open(path)
    figures["rss_open"] = peak_rss()
    loader = DeviceLoader(ds, batch_size=256, device=device, crops_per_image=5, augment=None)
    figures["rss_load"] = peak_rss()
    next(iter(loader))
    figures["rss_batch"] = peak_rss()
    figures["held"] = loader.memory()
    figures["stored"] = {name: a.nbytes for name, a in ds._arrays.items()}
    figures["stored_compressed"] = ds.stored_bytes()
    figures["decoded_dense"] = len(ds) * ds.manifest.sampler.num_crops * ds.num_classes * 4
    return figures


def bench_memory(args, device):
    """:func:`measure_load` of a top-5 container, in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        ds = _dataset(folder, args.memory_images, args.memory_size, k_classes=args.memory_classes,
                      encoding="topk", encoding_params={"k": 5, "rule": "smoothing"})
        ds.close()
        out = subprocess.run([sys.executable, __file__, "--measure-load", ds.location, "--device", str(device)],
                             check=True, capture_output=True, text=True).stdout
    figures = json.loads(out)
    held = sum(figures["held"]["device"].values()) + sum(figures["held"]["host"].values())
    stored = figures["stored"]
    figures["held_over_stored"] = held / (stored["images"] + stored["dense_labels"] + stored["dense_index"])
    print(f"top-5 container: {args.memory_images} images at {args.memory_size} px, K = {args.memory_classes}, "
          f"{sum(figures['stored_compressed'].values()) / 1e6:.1f} MB stored")
    for key in ("rss_import", "rss_open", "rss_load", "rss_batch"):
        print(f"  peak RSS after {key[4:]:<8} {figures[key] / 2**20:10.1f} MiB")
    print(f"  loader holds {held / 2**20:.1f} MiB = {figures['held_over_stored']:.3f} x the stored images and "
          f"dense arrays ({figures['held']}); decoded float32 labels would be "
          f"{figures['decoded_dense'] / 2**20:.1f} MiB")
    return figures


def _timed(fn, device, repeats):
    """Best seconds of ``repeats`` calls after one warm-up call (shared machines are noisy)."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def bench_paths(device, size, batch, repeats):
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    x = x.float()
    s = UniformSampler()
    rows = {}
    for dtype in (torch.float32, torch.bfloat16):
        for path in PATHS:
            for order in ("crop", "image"):
                t = _timed(lambda: s.crops(x, path=path, dtype=dtype, order=order), device,
                           repeats)
                rows[f"{path}/{str(dtype)[6:]}/{order}"] = batch * 25 / t
    return rows


def bench_loader(ds, device, batch, repeats, **kwargs):
    loader = DeviceLoader(ds, batch_size=batch, device=device, seed=0, **kwargs)
    crops = []

    def epoch():
        crops.clear()
        for b in loader:
            crops.append(len(b.crops))

    t = _timed(epoch, device, repeats)
    return sum(crops) / t


class _PilCrops(torch.utils.data.Dataset):
    """The conventional pipeline: PIL crop + resize per crop, then to a normalised tensor."""

    def __init__(self, images, dense):
        self.images, self.dense = images, dense
        self.boxes = UniformSampler().boxes(images.shape[1], images.shape[2])
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        h, w = self.images.shape[1:3]
        crops = np.stack([np.asarray(img.crop((left, top, left + cw, top + ch))
                                     .resize((w, h), Image.BILINEAR))
                          for top, left, ch, cw in self.boxes])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
        return (x / 255 - self.mean) / self.std, torch.from_numpy(self.dense[i])


def bench_pil(ds, device, batch, workers, repeats):
    loader = torch.utils.data.DataLoader(
        _PilCrops(np.asarray(ds.images), np.asarray(ds.dense_labels)), batch_size=8, shuffle=True,
        num_workers=workers, persistent_workers=workers > 0,
        pin_memory=device.type == "cuda")
    count = []

    def epoch():
        count.clear()
        for crops, dense in loader:
            out = crops.to(device, non_blocking=True).flatten(0, 1)
            dense.to(device, non_blocking=True)
            count.append(len(out))

    t = _timed(epoch, device, repeats)
    return sum(count) / t


def bench_disk(ds, device, batch, repeats, folder):
    """Pre-computed float32 crops in a .npy, memory-mapped, gathered per shuffled batch."""
    s = UniformSampler()
    path = Path(folder) / "crops.npy"
    x = torch.from_numpy(np.asarray(ds.images)).permute(0, 3, 1, 2).float()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                      shape=(len(x), 25, *x.shape[1:]))
    for i in range(0, len(x), 64):
        store[i:i + 64] = s.crops((x[i:i + 64] / 255 - mean) / std).numpy()
    store.flush()
    del store
    arr = np.load(path, mmap_mode="r")
    dense = np.asarray(ds.dense_labels)
    rng = np.random.default_rng(0)
    count = []

    def epoch():
        count.clear()
        order = rng.permutation(len(arr))
        for i in range(0, len(order), batch):
            idx = np.sort(order[i:i + batch])
            crops = torch.from_numpy(np.ascontiguousarray(arr[idx]))
            if device.type == "cuda":
                crops = crops.pin_memory()
            out = crops.to(device, non_blocking=True).flatten(0, 1)
            torch.from_numpy(dense[idx]).to(device, non_blocking=True)
            count.append(len(out))

    t = _timed(epoch, device, repeats)
    return sum(count) / t, path.stat().st_size


def bench_copy(device, size, batch, repeats, dtype=torch.float32):
    src = torch.rand(batch * 25, 3, size, size, device=device).to(dtype)
    dst = torch.empty_like(src)
    t = _timed(lambda: dst.copy_(src), device, repeats)
    return batch * 25 / t


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: all images on CUDA, 32 on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=None, help="PIL DataLoader workers")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats (and at most 64 images on CPU)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--memory", action="store_true", help="measure memory, not speed")
    parser.add_argument("--memory-images", type=int, default=4000)
    parser.add_argument("--memory-size", type=int, default=64)
    parser.add_argument("--memory-classes", type=int, default=1000)
    parser.add_argument("--measure-load", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.measure_load:
        print(json.dumps(measure_load(args.measure_load, device)))
        return 0
    if args.memory:
        figures = bench_memory(args, device)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(figures, indent=2))
        return 0
    cpu_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    images = min(args.images, 64) if args.quick and device.type == "cpu" else args.images
    batch = args.batch_size or (images if device.type == "cuda" else min(images, 32))
    repeats = 2 if args.quick else 5
    workers = args.workers if args.workers is not None else cpu_cores
    threads = torch.get_num_threads()
    folder = tempfile.TemporaryDirectory()
    ds = _dataset(folder.name, images, args.size, encoding="uint8")
    results = {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "size": args.size, "images": images, "encoding": "uint8", "batch_images": batch,
        "crops_per_batch": batch * 25,
        "cpu_cores": cpu_cores, "torch_threads": threads, "pil_workers": workers,
        "auto_path": UniformSampler.auto_path(device), "crops_per_s": {}, "errors": {},
    }
    print(f"device {device} ({results['device_name']}), torch {torch.__version__}, "
          f"{args.size} px, {images} images, {batch} images x 25 crops per batch, "
          f"{threads} torch threads, {workers} PIL workers", flush=True)

    def run(name, fn):
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # a benchmark reports a failed case and goes on
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"  {name:<34} FAILED {exc}", flush=True)
            traceback.print_exc(file=sys.stdout)
            return None
        shown = value if isinstance(value, (int, float)) else value[0]
        results["crops_per_s"][name] = shown
        print(f"  {name:<34} {shown:>12,.0f} crops/s   ({time.perf_counter() - start:.1f} s)",
              flush=True)
        return value

    paths = {}
    try:
        paths = bench_paths(device, args.size, batch, repeats)
    except Exception as exc:  # noqa: BLE001
        results["errors"]["paths"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stdout)
    results["paths"] = paths
    print("crop paths (UniformSampler.crops, float images in, per dtype and output order):")
    for key, value in sorted(paths.items(), key=lambda kv: -kv[1]):
        print(f"  {key:<34} {value:>12,.0f} crops/s")
    for dtype in ("float32", "bfloat16"):
        best = max((k for k in paths if f"/{dtype}/" in k), key=paths.get, default=None)
        if best:
            print(f"  fastest {dtype}: {best.split('/')[0]}; auto picks {results['auto_path']}")

    print("pipelines:")
    run("loader (all crops, float32)", lambda: bench_loader(ds, device, batch, repeats,
                                                            augment=None))
    run("loader (all crops, bfloat16)", lambda: bench_loader(ds, device, batch, repeats,
                                                             augment=None, dtype=torch.bfloat16))
    run("loader (k=5 crops per image)", lambda: bench_loader(ds, device, batch, repeats,
                                                              augment=None, crops_per_image=5))
    run("loader (all crops, DSA)", lambda: bench_loader(ds, device, batch, repeats,
                                                        augment="dsa"))
    run("PIL pipeline (DataLoader)", lambda: bench_pil(ds, device, batch, workers, repeats))
    disk = run("disk (mmap .npy, float32)", lambda: bench_disk(ds, device, batch, repeats, folder.name))
    if disk:
        results["disk_bytes"] = disk[1]
    run("copy floor (device copy)", lambda: bench_copy(device, args.size, batch, repeats))
    run("copy floor (bfloat16)", lambda: bench_copy(device, args.size, batch, repeats,
                                                    torch.bfloat16))

    c = results["crops_per_s"]
    loader, pil, floor = (c.get("loader (all crops, float32)"), c.get("PIL pipeline (DataLoader)"),
                          c.get("copy floor (device copy)"))
    ratios = {}
    if loader and floor:
        ratios["loader_time_over_copy_floor"] = floor / loader
    if c.get("loader (all crops, bfloat16)") and c.get("copy floor (bfloat16)"):
        ratios["loader_bf16_time_over_bf16_copy_floor"] = (c["copy floor (bfloat16)"]
                                                           / c["loader (all crops, bfloat16)"])
    if loader and pil:
        ratios["loader_over_pil"] = loader / pil
        ratios["loader_per_core_over_pil_per_core"] = (loader / threads) / (pil / max(workers, 1))
    if loader and c.get("disk (mmap .npy, float32)"):
        ratios["loader_over_disk"] = loader / c["disk (mmap .npy, float32)"]
    results["ratios"] = ratios
    print("ratios:")
    for key, value in ratios.items():
        print(f"  {key:<40} {value:8.2f}")
    if device.type == "cuda":
        goals = {"within 2x of the copy floor": ratios.get("loader_time_over_copy_floor", 1e9) <= 2,
                 ">= 20x the PIL pipeline": ratios.get("loader_over_pil", 0) >= 20}
    else:
        per_core = ratios.get("loader_per_core_over_pil_per_core", 0)
        goals = {"per core >= PIL per core": per_core >= 1}
    results["goals"] = goals
    for key, met in goals.items():
        print(f"goal {key}: {'met' if met else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    ds.close()
    folder.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
