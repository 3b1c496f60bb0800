"""Scale: ImageNet-shaped containers (K = 1,000) as the number of images M grows.

    python benchmarks/scale.py                 # M = 1,000 / 4,000 / 16,000 at 64 and 128 px (about 11 min, 2 cores)
    python benchmarks/scale.py --quick         # a smoke run of about a minute (M = 16 / 48 at 32 px)
    python benchmarks/scale.py --full --device cuda   # the issue's sizes: M up to 50,000, 64 / 128 / 224 px

Synthetic data: random pixels and peaked random probabilities (per crop a random row scaled to
1 - p plus a peak p ~ U(0.5, 0.95) on one class, the image's class for 70% of the crops),
generated and written batch by batch with ``ladd_format.Writer``. For each image size, M and
encoding (float32, float16, uint8, uint16, topk k=5 smoothing) it measures, each in a fresh
process so that its peak RSS (Linux VmHWM, not ru_maxrss) is its own:

- write: seconds, MB/s of the stored and of the logical bytes, peak RSS; against np.save +
  fsync + sha256 of the same stored arrays, streamed in the same blocks;
- read: ``open(verify=False)`` + the images + the stored dense arrays, ``open(verify=True)``
  and (where the library has it) ``open(verify="read")`` + the same reads, the decode to
  float32 (``np.asarray(ds.dense_labels)``), against ``np.load`` of those .npy files (page
  cache warm on both sides: the files were just written);
- ``DeviceLoader``: start-up seconds, bytes held (``loader.memory()``, host and device) and the
  peak RSS growth of a fresh process that opens, loads and renders one batch, against the
  stored images and dense arrays;
- labeling: ``label_batches`` and ``augment`` crops/s with the zoo ConvNet and a ResNet-18
  (torchvision's when importable, else the zoo's ``build_model("resnet18")``) against the bare
  ``model(x)`` forward on the same pre-cut crops at the same batch size; and the peak RSS of
  ``augment`` (labeling + writing) at every M, with a cheap pool+linear stand-in labeler so
  that the pipeline, not the network's arithmetic, sets the time, plus the zoo ConvNet at the
  library's default crops per pass.

Then how each figure grows with M (ratios between consecutive M) and the goals, met or not
with the measured ratio. The default run keeps to about 11 minutes: at M = 16,000 it runs
uint8 and topk at 128 px and float32 at 64 px (``--all-encodings`` or ``--full`` runs all).
GPU figures: ``--device cuda`` (device memory from ``torch.cuda.max_memory_allocated``). The tables are printed and written to ``--out``
(benchmarks/results/scale.md). The run waits (up to ``--wait`` s) for the 1-minute load average
to fall below 1.0 first, and records the load and other processes' CPU use before each case.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ladd_format  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROPS = 25  # N = 5
GiB, MiB = 1 << 30, 1 << 20
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
ENCODINGS = {"float32": None, "float16": None, "uint8": None, "uint16": None,
             "topk": {"k": 5, "rule": "smoothing"}}

# ------------------------------------------------------------------------------------------
# helpers shared by the parent and the workers


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmHWM: this process's peak resident set)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _batches(m: int, size: int, k: int, batch: int, seed: int = 0):
    """Seeded (images uint8 [b, s, s, 3], labels [b], peaked probabilities float32 [b, 25, k])."""
    for start in range(0, m, batch):
        b = min(batch, m - start)
        rng = np.random.default_rng([seed, start])
        images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, k, b)
        dense = rng.random((b, CROPS, k), dtype=np.float32)
        peak = rng.uniform(0.5, 0.95, (b, CROPS, 1)).astype(np.float32)
        dense *= (1 - peak) / dense.sum(-1, keepdims=True)
        cls = np.where(rng.random((b, CROPS)) < 0.7, labels[:, None], rng.integers(0, k, (b, CROPS)))[..., None]
        np.put_along_axis(dense, cls, np.take_along_axis(dense, cls, -1) + peak, -1)
        yield images, labels, dense


def _stored_specs(m: int, size: int, k: int, encoding: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The arrays a container stores (name -> dtype, shape), as SPEC.md section 5 defines them."""
    label = "uint8" if k <= 256 else "uint16" if k <= 65536 else "uint32"
    specs = {"images": ("uint8", (m, size, size, 3)), "labels": (label, (m,))}
    if encoding == "topk":
        shape = (m, CROPS, ENCODINGS["topk"]["k"])
        return {**specs, "dense_labels": ("uint8", shape), "dense_index": (label, shape)}
    return {**specs, "dense_labels": (encoding, (m, CROPS, k))}


def _nbytes(spec: tuple[str, tuple[int, ...]]) -> int:
    return np.dtype(spec[0]).itemsize * int(np.prod(spec[1], dtype=np.int64))


def _dense_bytes(specs) -> int:
    return sum(_nbytes(s) for name, s in specs.items() if name not in ("images", "labels"))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------
# workers: each runs in a fresh process and returns a dict of figures


def work_write(spec: dict) -> dict:
    """Write a container batch by batch; then the np.save + fsync + sha256 baseline."""
    path, m, size, k, enc = Path(spec["path"]), spec["m"], spec["size"], spec["k"], spec["encoding"]
    rss_start = _status("VmRSS")
    t_gen = t_write = t_close = 0.0
    start = time.perf_counter()
    w = ladd_format.Writer(path, num_images=m, image_shape=(size, size, 3), num_classes=k, encoding=enc,
                           encoding_params=ENCODINGS[enc], mean=MEAN, std=STD)
    t_write += time.perf_counter() - start
    gen = _batches(m, size, k, spec["batch"])
    while True:
        start = time.perf_counter()
        item = next(gen, None)
        t_gen += time.perf_counter() - start
        if item is None:
            break
        start = time.perf_counter()
        w.append(*item)
        t_write += time.perf_counter() - start
        del item
    start = time.perf_counter()
    w.close()
    t_close = time.perf_counter() - start
    out = {"write_s": t_write + t_close, "close_s": t_close, "generate_s": t_gen,
           "rss_start": rss_start, "peak_rss": _status("VmHWM")}
    out.update(_split_estimate(enc, k, spec["batch"], m))  # after the peak is read
    # the baseline: the same stored arrays, streamed into .npy files a block at a time (read
    # back from the container, untimed), sha256 of the same bytes, fsync
    ds = ladd_format.open(path, verify=False)
    out["on_disk"] = sum(ds.stored_bytes().values())
    specs = _stored_specs(m, size, k, enc)
    out["stored"] = {name: _nbytes(spec) for name, spec in specs.items()}
    arrays = {"images": ds.images, "labels": ds.labels.astype(specs["labels"][0]), **ds.stored_dense()}
    t_save = t_sha = t_sync = 0.0
    for name, array in arrays.items():
        target = Path(spec["npy_dir"]) / f"{name}.npy"
        dtype, shape = specs[name]
        rows = max(1, (4 << 20) // max(1, _nbytes((dtype, shape[1:]))))  # about 4 MB, like the chunks
        with target.open("wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                     "fortran_order": False, "shape": shape})
            digest = hashlib.sha256()
            for first in range(0, shape[0], rows):
                block = np.ascontiguousarray(array[first:first + rows], dtype=dtype)
                start = time.perf_counter()
                f.write(memoryview(block).cast("B"))
                t_save += time.perf_counter() - start
                start = time.perf_counter()
                digest.update(memoryview(block).cast("B"))
                t_sha += time.perf_counter() - start
            start = time.perf_counter()
            f.flush()
            os.fsync(f.fileno())
            t_sync += time.perf_counter() - start
    ds.close()
    out.update(npsave_s=t_save, sha256_s=t_sha, fsync_s=t_sync, baseline_s=t_save + t_sha + t_sync)
    return out


def _split_estimate(enc: str, k: int, batch: int, m: int) -> dict:
    """The writer's validation and encoding seconds for M images, from one batch timed apart
    (the library's private helpers: an estimate that is left out if they change)."""
    try:
        from ladd_format._encodings import resolve_encoding
        from ladd_format._write import _check_dense
        from ladd_format.manifest import SamplerSpec

        _, _, dense = next(_batches(min(batch, m), 8, k, batch, seed=7))
        encoding = resolve_encoding(enc, ENCODINGS[enc], k, "probs")
        check = encode = float("inf")
        for _ in range(2):  # the better of two: the first call pays for fresh pages
            start = time.perf_counter()
            _check_dense(dense, len(dense), SamplerSpec(), "probs")
            check = min(check, time.perf_counter() - start)
            start = time.perf_counter()
            encoding.encode(dense)
            encode = min(encode, time.perf_counter() - start)
        return {"check_est_s": check * m / len(dense), "encode_est_s": encode * m / len(dense)}
    except Exception:  # noqa: BLE001 - an estimate only
        return {}


def work_read(spec: dict) -> dict:
    """Best of ``repeats``: np.load; open(verify=False) + images + stored dense arrays;
    open(verify=True) + the same; then one decode of the dense labels to float32."""
    path, npy = Path(spec["path"]), Path(spec["npy_dir"])
    names = [p.stem for p in sorted(npy.glob("*.npy"))]
    best: dict[str, float] = {}
    modes: list = [False, True]
    try:  # verify="read" (digests checked while the arrays are read in full), where the library has it
        ladd_format.open(path, verify="read").close()
        modes.append("read")
    except Exception:  # noqa: BLE001 - an older library: verify is True or False only
        pass
    checked: set = set()

    def keep(key: str, seconds: float) -> None:
        best[key] = min(best.get(key, float("inf")), seconds)

    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        for name in names:
            arr = np.load(npy / f"{name}.npy")
            del arr
        keep("npload_s", time.perf_counter() - start)
        for verify in modes:
            tag = {False: "", True: "v", "read": "r"}[verify]
            start = time.perf_counter()
            ds = ladd_format.open(path, verify=verify)
            t_open = time.perf_counter() - start
            start = time.perf_counter()
            np.asarray(ds.images)
            t_images = time.perf_counter() - start
            start = time.perf_counter()
            for array in ds.stored_dense().values():
                np.asarray(array)
            t_dense = time.perf_counter() - start
            if verify == "read":
                checked = set(ds.verified_arrays())
            ds.close()
            keep(f"open{tag}_s", t_open)
            keep(f"images{tag}_s", t_images)
            keep(f"stored_dense{tag}_s", t_dense)
            keep(f"read{tag}_s", t_open + t_images + t_dense)
    out = dict(best)
    if "read" in modes:
        out["read_verified"] = sorted(checked)
        out["read_all_verified"] = checked >= set(names)
    decoded = spec["m"] * CROPS * spec["k"] * 4
    if decoded <= spec["decode_cap"]:
        with ladd_format.open(path, verify=False) as ds:
            start = time.perf_counter()
            np.asarray(ds.dense_labels)
            out["decode_s"] = time.perf_counter() - start
    out["decoded_bytes"] = decoded
    out["peak_rss"] = _status("VmHWM")
    return out


def work_loader(spec: dict) -> dict:
    """Open, build a DeviceLoader (all crops, no DSA), render one batch: time and memory."""
    import torch

    from ladd_format.loader import DeviceLoader

    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.zeros(1, device=device)  # the CUDA context, outside the figures
        torch.cuda.reset_peak_memory_stats(device)
    from ladd_format.sampler import UniformSampler

    UniformSampler().crops(torch.zeros((1, 3, 32, 32), dtype=torch.uint8, device=device))  # torch's first-use costs
    rss_import = _status("VmRSS")
    ds = ladd_format.open(spec["path"], verify=False)
    rss_open = _status("VmHWM")
    start = time.perf_counter()
    loader = DeviceLoader(ds, batch_size=spec["batch"], device=device, crops_per_image="all", augment=None,
                          seed=0)
    _sync(device)
    startup = time.perf_counter() - start
    rss_load = _status("VmHWM")
    start = time.perf_counter()
    batch = next(iter(loader))
    _sync(device)
    t_batch = time.perf_counter() - start
    out = {"startup_s": startup, "batch_s": t_batch, "rss_import": rss_import, "rss_open": rss_open,
           "rss_load": rss_load, "peak_rss": _status("VmHWM"), "held": loader.memory(),
           "batch_bytes": sum(t.nbytes for t in (batch.images, batch.labels, batch.crops, batch.dense,
                                                 batch.index, batch.crop_image, batch.crop_id)),
           "stored": {name: _nbytes(v) for name, v in
                      _stored_specs(spec["m"], spec["size"], spec["k"], spec["encoding"]).items()}}
    if device.type == "cuda":
        out["device_peak"] = torch.cuda.max_memory_allocated(device)
    ds.close()
    return out


def _labeler(kind: str, size: int, k: int, device):
    """(labeler, bare network, description) for a zoo ConvNet, a ResNet-18 or the stand-in."""
    import torch

    from ladd_format.models import build_model
    from ladd_format.teachers import from_module

    torch.manual_seed(0)
    side = min(size, 128)  # the zoo's networks take 28..128 px; larger images are resized to 128
    if kind == "convnet":
        net, what = build_model("convnet", 3, k, side), f"zoo ConvNet (width 128) at {side} px"
    elif kind == "resnet18":
        try:
            import torchvision

            net = torchvision.models.resnet18(num_classes=k)
            what = f"torchvision ResNet-18 at {side} px"
        except ImportError:
            net = build_model("resnet18", 3, k, side)
            what = (f"zoo ResNet-18 at {side} px (stand-in: torchvision is not importable; "
                    "3x3 stride-1 stem, no max-pool: about 16x torchvision's FLOPs at the same input)")
    elif kind == "standin":
        side = 32
        net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, k))
        what = "stand-in pool+linear labeler at 32 px input"
    else:
        raise ValueError(kind)
    labeler = from_module(net, num_classes=k, input_size=(side, side), mean=MEAN, std=STD, device=device,
                          architecture=kind)
    return labeler, labeler.model, what


def work_label(spec: dict) -> dict:
    """crops/s: bare forward on pre-cut crops vs label_batches vs augment, same batch size."""
    import torch

    from ladd_format.labeler import augment, label_batches
    from ladd_format.sampler import UniformSampler

    device = torch.device(spec["device"])
    labeler, net, what = _labeler(spec["model"], spec["size"], spec["k"], device)
    n, size, b = spec["images"], spec["size"], spec["batch"]
    images, labels, _ = next(_batches(n, size, spec["k"], n, seed=1))
    side = labeler.input_size
    with torch.no_grad():
        crops = UniformSampler().crops(torch.from_numpy(images).permute(0, 3, 1, 2), flatten=True,
                                       size=side if side != (size, size) else None)
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (MEAN, STD))
        x = ((crops.float() / 255 - mean) / std).to(device)  # what Labeler.logits does
    del crops
    crops_n = len(x)

    @torch.no_grad()
    def bare():
        for first in range(0, crops_n, b):
            net(x[first:first + b])
        _sync(device)

    def labeled():
        for _ in label_batches(images, labeler, batch_size=b, progress=False):
            pass
        _sync(device)

    sampler = UniformSampler()
    per_image = max(1, b // CROPS)

    @torch.no_grad()
    def around():  # label_batches' work besides the network: cut + resize, normalise, softmax, to numpy
        for first in range(0, n, per_image):
            batch = torch.as_tensor(images[first:first + per_image]).permute(0, 3, 1, 2).to(device)
            cut = sampler.crops(batch, flatten=True, size=side if side != (size, size) else None)
            normed = (cut / 255 - mean.to(device)) / std.to(device)
            fake = normed.flatten(1)[:, :1].expand(-1, spec["k"]).contiguous()  # logits-sized
            torch.softmax(fake, dim=-1).cpu().numpy()
        _sync(device)

    folder = Path(spec["path"])

    def augmented():
        augment(folder, images, labels, labeler, encoding="uint8", batch_size=b, progress=False, overwrite=True)

    with torch.no_grad():
        net(x[:b])  # warm-up: first-call allocations and kernels
    times: dict[str, list[float]] = {"bare": [], "label": [], "around": [], "augment": []}
    for _ in range(spec["repeats"]):  # interleaved, best of: the machine is shared
        for key, fn in (("bare", bare), ("label", labeled), ("around", around)):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    start = time.perf_counter()
    augmented()  # once: it is compared for information only
    times["augment"].append(time.perf_counter() - start)
    shutil.rmtree(folder, ignore_errors=True)
    return {"what": what, "crops": crops_n, "threads": torch.get_num_threads(), "peak_rss": _status("VmHWM"),
            "around_share": min(times["around"]) / min(times["bare"]),
            **{f"{key}_crops_per_s": crops_n / min(v) for key, v in times.items() if key != "around"}}


def work_augment(spec: dict) -> dict:
    """Peak RSS of labeling + writing M images with ``augment`` (images held in memory)."""
    import torch

    from ladd_format.labeler import augment, crops_per_pass

    device = torch.device(spec["device"])
    labeler, _, what = _labeler(spec["model"], spec["size"], spec["k"], device)
    rss_ready = _status("VmRSS")
    m, size = spec["m"], spec["size"]
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, spec["k"], m)
    per_pass = spec["batch"] or crops_per_pass(labeler.input_size, labeler.device)
    start = time.perf_counter()
    augment(spec["path"], images, labels, labeler, encoding=spec["encoding"],
            encoding_params=ENCODINGS[spec["encoding"]], batch_size=spec["batch"], progress=False,
            overwrite=True)
    seconds = time.perf_counter() - start
    out = {"what": what, "seconds": seconds, "rss_ready": rss_ready, "peak_rss": _status("VmHWM"),
           "images_bytes": int(images.nbytes), "crops_per_pass": per_pass}
    if device.type == "cuda":
        out["device_peak"] = torch.cuda.max_memory_allocated(device)
    shutil.rmtree(spec["path"], ignore_errors=True)
    return out


def work_profile(spec: dict) -> dict:
    """cProfile (main thread) of one write, one read (verify off) and one open(verify=True)."""
    import cProfile
    import io
    import pstats

    path, m, size, k, enc = Path(spec["path"]), spec["m"], spec["size"], spec["k"], spec["encoding"]
    data = list(_batches(m, size, k, spec["batch"]))
    reports = {}

    def profiled(name, fn):
        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.enable()
        fn()
        prof.disable()
        seconds = time.perf_counter() - start
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
        lines = [line for line in text.getvalue().splitlines() if line.strip()]
        first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        reports[name] = {"seconds": seconds, "top": lines[first:first + 13]}

    def write():
        with ladd_format.Writer(path, num_images=m, image_shape=(size, size, 3), num_classes=k, encoding=enc,
                                encoding_params=ENCODINGS[enc], mean=MEAN, std=STD) as w:
            for item in data:
                w.append(*item)

    def read():
        with ladd_format.open(path, verify=False) as ds:
            np.asarray(ds.images)
            for array in ds.stored_dense().values():
                np.asarray(array)

    profiled("write", write)
    data.clear()
    profiled("read (verify=False)", read)
    profiled("open(verify=True)", lambda: ladd_format.open(path, verify=True).close())
    shutil.rmtree(path, ignore_errors=True)
    return reports


WORKERS = {"write": work_write, "read": work_read, "loader": work_loader, "label": work_label,
           "augment": work_augment, "profile": work_profile}

# ------------------------------------------------------------------------------------------
# the parent: plans the cases, runs each worker in a fresh process, prints and writes tables


def _busy_cores(seconds: float = 1.0) -> float:
    """CPU cores busy over ``seconds`` (the parent sleeps meanwhile, so: other processes)."""
    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    cores = os.cpu_count() or 1
    return cores * (1 - (idle1 - idle0) / max(1, total1 - total0))


def wait_for_quiet(limit: float) -> tuple[float, float]:
    """Wait up to ``limit`` s for the 1-minute load average to fall below 1.0; (load, waited s)."""
    start = time.monotonic()
    while os.getloadavg()[0] >= 1.0 and time.monotonic() - start < limit:
        print(f"  load average {os.getloadavg()[0]:.2f} >= 1.0: waiting "
              f"({time.monotonic() - start:.0f} of {limit:.0f} s)", flush=True)
        time.sleep(15)
    return os.getloadavg()[0], time.monotonic() - start


class Runner:
    def __init__(self, args):
        self.args = args
        self.log: list[dict] = []  # every case: kind, spec, result or error, load
        self.wait_left = args.total_case_wait  # seconds all cases together may wait for other users

    def run(self, kind: str, spec: dict, timeout: float = 1800) -> dict | None:
        others = _busy_cores(1.0)
        waited = 0.0
        while others > 0.3 and waited < self.args.case_wait and self.wait_left > 0:  # another user is busy
            time.sleep(4)
            waited += 5
            self.wait_left -= 5
            others = _busy_cores(1.0)
        if waited:
            print(f"  (waited {waited:.0f} s for other processes: {others:.1f} cores busy now)", flush=True)
        load = os.getloadavg()[0]
        entry = {"kind": kind, "spec": spec, "load": load, "others_busy": others, "waited_s": waited}
        self.log.append(entry)
        start = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)]
        env = {**os.environ, **spec.get("env", {})}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1] if
                                   (proc.stderr or proc.stdout).strip() else f"exit {proc.returncode}")
            entry["result"] = json.loads(lines[-1][len("RESULT "):])
        except Exception as exc:  # a failed case is reported, the others still run
            entry["error"] = f"{type(exc).__name__}: {exc}"
            print(f"  {kind} {_case_name(spec)} FAILED: {entry['error']}", flush=True)
            return None
        finally:
            entry["wall_s"] = time.perf_counter() - start
        print(f"  {kind:<8} {_case_name(spec):<40} {entry['wall_s']:6.1f} s  (load {load:.2f}, "
              f"others {others:.1f} cores)", flush=True)
        return entry["result"]


def _case_name(spec: dict) -> str:
    parts = [f"{spec['size']}px" if "size" in spec else "", f"M={spec['m']:,}" if "m" in spec else "",
             spec.get("encoding", ""), spec.get("model", "")]
    return " ".join(p for p in parts if p)


def plan(args) -> dict:
    """Sizes, M values, K and the labeling cases (model, px, images, crops per pass, repeats)."""
    if args.quick:
        sizes, ms = [32], [16, 48]
        label = [("convnet", 32, 2, 25, 1), ("resnet18", 32, 2, 25, 1)]
        augment_sizes = [32]
    elif args.full:
        sizes, ms = [64, 128, 224], [1000, 4000, 16000, 50000]
        label = [(model, size, 64, 250, 2) for model in ("convnet", "resnet18") for size in (64, 128, 224)]
        augment_sizes = [64, 128, 224]
    else:
        # a ResNet-18 at 128 px runs at about 4 crops/s on 2 cores: two images there
        sizes, ms = [64, 128], [1000, 4000, 16000]
        label = [("convnet", 64, 16, 50, 3), ("convnet", 128, 4, 50, 3), ("resnet18", 64, 4, 50, 3),
                 ("resnet18", 128, 2, 50, 2)]
        augment_sizes = [128]
    if args.sizes:
        first = {}
        for model, _, n, b, r in label:
            first.setdefault(model, (n, b, r))
        label = [(model, size, *first[model]) for model in first for size in args.sizes]
        sizes, augment_sizes = args.sizes, args.sizes[-1:]
    if args.label_images or args.label_batch:
        label = [(model, size, args.label_images or n, args.label_batch or b, r) for model, size, n, b, r in label]
    return {"sizes": sizes, "ms": args.images or ms, "k": args.classes or 1000, "label": label,
            "augment_sizes": augment_sizes}


def _not_run(args, p: dict, size: int, m: int, enc: str) -> str | None:
    """Why a write/read/loader case is left out of this run, or None. The default run keeps
    near 10 minutes on 2 cores: at the largest M it runs uint8 and topk at the largest size
    and float32 (a >= 1 GB case without quantisation) at the smallest; the quantising
    encodings cost about 2-3.5 ms per image to encode at K = 1,000."""
    if args.full or args.quick or args.all_encodings or len(p["ms"]) < 2 or m < max(p["ms"]):
        return None
    keep = {"uint8", "topk"} if size == max(p["sizes"]) else {"float32"} if size == min(p["sizes"]) else set()
    if enc in keep:
        return None
    return (f"{size} px, M = {m:,}, {enc}: left out of the default run for time (at the largest M it runs "
            f"uint8 and topk at {max(p['sizes'])} px, float32 at {min(p['sizes'])} px; "
            "--all-encodings or --full runs every one)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run of about a minute (tiny M; checks every path, measures nothing)")
    ap.add_argument("--full", action="store_true", help="the issue's full sizes (M up to 50,000, 224 px; a GPU machine)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=None, help="e.g. 64,128")
    ap.add_argument("--images", type=lambda s: [int(v) for v in s.split(",")], default=None,
                    help="the M values, e.g. 1000,4000,16000")
    ap.add_argument("--classes", type=int, default=None, help="K (default 1,000)")
    ap.add_argument("--encodings", default=",".join(ENCODINGS), help="comma-separated subset of " + ",".join(ENCODINGS))
    ap.add_argument("--all-encodings", action="store_true",
                    help="every encoding at every M (default: float32/float16/uint16 up to M = 4,000)")
    ap.add_argument("--batch", type=int, default=256, help="images per Writer.append (default 256)")
    ap.add_argument("--loader-batch", type=int, default=32, help="DeviceLoader batch (images; all 25 crops each)")
    ap.add_argument("--label-images", type=int, default=None, help="images labelled per labeling case")
    ap.add_argument("--label-batch", type=int, default=None, help="crops per forward pass when labeling")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: io,loader,label,augment")
    ap.add_argument("--profile", action="store_true", help="also cProfile one write / read / verify")
    ap.add_argument("--workdir", type=Path, default=None, help="where containers go (default: a temp dir)")
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for load < 1.0 at the start")
    ap.add_argument("--case-wait", type=float, default=None,
                    help="seconds to wait before a case while other processes keep > 0.3 cores busy "
                    "(default 120, 0 with --quick)")
    ap.add_argument("--total-case-wait", type=float, default=900, help="cap on all cases' waits together")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.md")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.case_wait is None:
        args.case_wait = 0.0 if args.quick else 120.0
    if args.worker:
        kind, spec = args.worker
        result = WORKERS[kind](json.loads(spec))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    import torch
    import zarr

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    p = plan(args)
    k = p["k"]
    encodings = [e for e in args.encodings.split(",") if e]
    unknown = set(encodings) - set(ENCODINGS)
    if unknown:
        ap.error(f"unknown encodings {sorted(unknown)}")
    skip = set(filter(None, args.skip.split(",")))
    started = datetime.datetime.now().astimezone()
    print("waiting for a quiet machine (1-minute load average < 1.0) ...", flush=True)
    load0, waited = wait_for_quiet(args.wait)
    info = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "started": started.isoformat(timespec="seconds"), "machine": _machine(device),
        "python": platform.python_version(), "torch": torch.__version__, "zarr": zarr.__version__,
        "numpy": np.__version__, "ladd_format": ladd_format.__version__, "device": device,
        "torch_threads": torch.get_num_threads(), "load_start": load0, "waited_s": waited,
        "k": k, "plan": p,
    }
    print(f"{info['machine']}; torch {torch.__version__}, zarr {zarr.__version__}, numpy {np.__version__}; "
          f"load {load0:.2f} after {waited:.0f} s", flush=True)
    runner = Runner(args)
    work = Path(tempfile.mkdtemp(prefix="ladd-scale-", dir=args.workdir))
    skipped: list[str] = []
    decode_cap = 4 * GiB
    try:
        if "io" not in skip or "loader" not in skip:
            for size in p["sizes"]:
                for m in p["ms"]:
                    for enc in encodings:
                        why = _not_run(args, p, size, m, enc)
                        if why:
                            skipped.append(why)
                            continue
                        specs = _stored_specs(m, size, k, enc)
                        need = 2 * sum(_nbytes(s) for s in specs.values()) + 2 * GiB
                        free = shutil.disk_usage(work).free
                        if need > free:
                            skipped.append(f"{size} px, M = {m:,}, {enc}: needs {need / 1e9:.1f} GB of disk, "
                                           f"{free / 1e9:.1f} GB free")
                            continue
                        case = work / f"{size}_{m}_{enc}"
                        npy = case / "npy"
                        npy.mkdir(parents=True)
                        base = {"path": str(case / "c.ladd"), "npy_dir": str(npy), "m": m, "size": size, "k": k,
                                "encoding": enc}
                        if runner.run("write", {**base, "batch": args.batch}) is not None:
                            if "io" not in skip:
                                runner.run("read", {**base, "repeats": 1 if m * size * size >= 4000 * 128 * 128 else 2,
                                                    "decode_cap": decode_cap})
                            if "loader" not in skip:
                                runner.run("loader", {**base, "device": device, "batch": args.loader_batch})
                                if (size, m, enc) == (p["sizes"][-1], p["ms"][len(p["ms"]) // 2], "uint8"):
                                    # a diagnostic: the same load with glibc's mmap threshold fixed, so
                                    # that freed read buffers go back to the system at once
                                    runner.run("loader", {**base, "device": device, "batch": args.loader_batch,
                                                          "env": MALLOC_ENV})
                        shutil.rmtree(case, ignore_errors=True)
        if args.profile:
            m, size = p["ms"][min(1, len(p["ms"]) - 1)], p["sizes"][-1]
            runner.run("profile", {"path": str(work / "profile.ladd"), "m": m, "size": size, "k": k,
                                   "encoding": "uint8", "batch": args.batch})
        if "label" not in skip:
            for model, size, n, b, repeats in p["label"]:
                runner.run("label", {"path": str(work / "label.ladd"), "model": model, "size": size, "k": k,
                                     "images": n, "batch": b, "repeats": repeats, "device": device})
        if "augment" not in skip:
            from ladd_format.labeler import crops_per_pass

            for size in p["augment_sizes"]:  # the pipeline's memory as M grows: the stand-in labeler
                for m in p["ms"]:
                    runner.run("augment", {"path": str(work / "aug.ladd"), "model": "standin", "size": size,
                                           "m": m, "k": k, "encoding": "topk", "batch": None, "device": device})
            convnet_sizes = sorted({c[1] for c in p["label"] if c[0] == "convnet"})
            for size in convnet_sizes if args.full else convnet_sizes[-1:]:
                # the zoo ConvNet at the library's default crops per pass: one full pass and a bit
                per_pass = crops_per_pass((min(size, 128),) * 2, torch.device(device))
                m = 2 if args.quick else max(2, per_pass // CROPS + 1)
                runner.run("augment", {"path": str(work / "aug.ladd"), "model": "convnet", "size": size, "m": m,
                                       "k": k, "encoding": "uint8", "batch": None, "device": device})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    info["load_end"] = os.getloadavg()[0]
    text = report(info, runner.log, skipped)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


def _machine(device: str) -> str:
    cpu = "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    text = f"{cpu}, {cores} cores, {mem / GiB:.0f} GiB RAM"
    if device.startswith("cuda"):
        import torch

        text += f"; GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


# ------------------------------------------------------------------------------------------
# the report


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def _mib(n: float) -> str:
    return f"{n / MiB:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _est(r: dict) -> str:
    if "encode_est_s" not in r:
        return "-"
    return f"{r['check_est_s']:.2f} + {r['encode_est_s']:.2f}"


def _results(log: list[dict], kind: str) -> list[tuple[dict, dict, dict]]:
    return [(e["spec"], e["result"], e) for e in log if e["kind"] == kind and "result" in e]


def report(info: dict, log: list[dict], skipped: list[str]) -> str:
    k = info["k"]
    out = [f"# Scale: ImageNet-shaped containers (K = {k:,}) as M grows", "",
           f"Command: `{info['command']}`  ", f"Run: {info['started']} to {info.get('finished', '?')}  ",
           f"Machine: {info['machine']}; device `{info['device']}`; {info['torch_threads']} torch threads  ",
           f"Versions: python {info['python']}, torch {info['torch']}, zarr {info['zarr']}, numpy {info['numpy']}, "
           f"ladd_format {info['ladd_format']}  ",
           f"Load: 1-minute load average {info['load_start']:.2f} at the start (after waiting "
           f"{info['waited_s']:.0f} s for < 1.0), {info.get('load_end', float('nan')):.2f} at the end; "
           "each case's load (this run's own previous case included) and the cores other processes kept busy "
           "just before it are in the last table.", "",
           "Data: random pixels; dense labels are peaked random probabilities (a random row scaled to 1 - p, "
           "plus p ~ U(0.5, 0.95) on one class). *Logical* bytes are what the writer is handed (uint8 images, "
           "int64 labels, float32 [M, 25, K] probabilities); *stored* bytes are the container's arrays in their "
           "stored dtypes before compression (what np.save writes); *on disk* is after zstd. Every case runs in "
           "a fresh process; peak RSS is that process's VmHWM. Reads run with a warm page cache on both sides "
           "(the files were just written). MB = 10^6 B, MiB = 2^20 B.", ""]
    if skipped:
        out += [f"Not run: {len(skipped)} cases (listed at the end).", ""]

    # write ------------------------------------------------------------------------------
    writes = _results(log, "write")
    rows, growth_src = [], {}
    for spec, r, _ in writes:
        specs = _stored_specs(spec["m"], spec["size"], k, spec["encoding"])
        stored = sum(_nbytes(s) for s in specs.values())
        logical = spec["m"] * (spec["size"] ** 2 * 3 + 8 + CROPS * k * 4)
        ratio = r["write_s"] / r["baseline_s"]
        rows.append([spec["size"], f"{spec['m']:,}", spec["encoding"], _mb(logical), _mb(stored), _mb(r["on_disk"]),
                     f"{r['write_s']:.2f}", _est(r), f"{stored / r['write_s'] / 1e6:,.0f}",
                     f"{logical / r['write_s'] / 1e6:,.0f}",
                     f"{r['baseline_s']:.2f} ({r['npsave_s']:.2f} + {r['sha256_s']:.2f} + {r['fsync_s']:.2f})",
                     f"{ratio:.2f}x", _mib(r["peak_rss"])])
        key = (spec["size"], spec["encoding"])
        growth_src.setdefault(("write", "s", key), []).append((spec["m"], r["write_s"]))
        growth_src.setdefault(("write peak RSS", "MiB", key), []).append((spec["m"], r["peak_rss"]))
    out += ["## Write (`Writer`, 256 images per append)", "",
            "Baseline: the same stored arrays streamed chunk by chunk into .npy files (np.save's format) + sha256 "
            "of those bytes + fsync (write + sha256 + fsync seconds in brackets). *Validate + encode* is an "
            "estimate: the writer's checks and the encoding timed apart on one batch, times M / 256.", "",
            _table(["px", "M", "encoding", "logical MB", "stored MB", "on disk MB", "write s",
                    "of which validate + encode s", "MB/s stored",
                    "MB/s logical", "baseline s", "write / baseline", "peak RSS MiB"], rows), ""]

    # read -------------------------------------------------------------------------------
    rows = []
    for spec, r, _ in _results(log, "read"):
        dec = (f"{r['decode_s']:.2f} ({_mb(r['decoded_bytes'])} MB)" if "decode_s" in r else "skipped")
        on_read = "-"
        if "readr_s" in r:
            on_read = f"{r['readr_s']:.3f} ({r['readr_s'] / r['npload_s']:.2f}x)" + (
                "" if r.get("read_all_verified") else " not all arrays checked")
        rows.append([spec["size"], f"{spec['m']:,}", spec["encoding"], f"{r['npload_s']:.3f}", f"{r['open_s']:.3f}",
                     f"{r['images_s']:.3f}", f"{r['stored_dense_s']:.3f}", f"{r['read_s']:.3f}",
                     f"{r['read_s'] / r['npload_s']:.2f}x", f"{r['openv_s']:.3f}", f"{r['readv_s']:.3f}",
                     f"{r['readv_s'] / r['npload_s']:.2f}x", on_read, dec])
        key = (spec["size"], spec["encoding"])
        growth_src.setdefault(("read (verify off)", "s", key), []).append((spec["m"], r["read_s"]))
        growth_src.setdefault(("open(verify=True)", "s", key), []).append((spec["m"], r["openv_s"]))
    out += ["## Read", "",
            "*read* = `open(verify=False)` + `np.asarray(ds.images)` + every stored dense array (`ds.stored_dense()`, "
            "undecoded); *read, verify on* = `open(verify=True)` (hashes every array) + the same reads; "
            "*verify='read'* = `open(verify=\"read\")` + the same reads, each array's digest checked as it is read "
            "in full (one pass; `ds.verified_arrays()` must then list every array); *decode* = "
            "`np.asarray(ds.dense_labels)` (float32 [M, 25, K]), measured apart. np.load reads the baseline's .npy "
            "files of the same stored arrays.", "",
            _table(["px", "M", "encoding", "np.load s", "open s", "images s", "stored dense s", "read s",
                    "read / np.load", "open(verify) s", "read, verify on s", "verify on / np.load",
                    "read, verify='read' s (/ np.load)", "decode s"], rows), ""]

    # loader -----------------------------------------------------------------------------
    rows = []
    for spec, r, _ in _results(log, "loader"):
        diag = bool(spec.get("env"))
        stored = r["stored"]
        data = stored["images"] + sum(v for n, v in stored.items() if n not in ("images", "labels"))
        held = sum(r["held"]["device"].values()) + sum(r["held"]["host"].values())
        grown = r["peak_rss"] - r["rss_import"]
        dev = f", device peak {_mib(r['device_peak'])}" if "device_peak" in r else ""
        enc_name = spec["encoding"] + (" (" + " ".join(f"{a}={b}" for a, b in spec["env"].items()) + ")"
                                       if diag else "")
        rows.append([spec["size"], f"{spec['m']:,}", enc_name, _mib(data), f"{r['startup_s']:.2f}",
                     f"{r['batch_s']:.2f}", _mib(held) + dev, f"{held / data:.3f}", _mib(r["batch_bytes"]),
                     _mib(grown), _mib(r["rss_load"] - r["rss_import"] - held),
                     _mib(r["peak_rss"] - r["rss_load"] - r["batch_bytes"]),
                     f"{(grown - r['batch_bytes']) / data:.2f}"])
        if diag:
            continue
        key = (spec["size"], spec["encoding"])
        growth_src.setdefault(("loader start-up", "s", key), []).append((spec["m"], r["startup_s"]))
        growth_src.setdefault(("loader peak RSS growth", "MiB", key), []).append((spec["m"], grown))
    batch = next((s["batch"] for s, _, _ in _results(log, "loader")), 32)
    out += [f"## DeviceLoader (batch of {batch} images, all 25 crops, no DSA)", "",
            "*stored* = images + dense arrays in their stored dtypes (uncompressed); *held* = `loader.memory()` "
            "(host + device); *RSS growth* = peak RSS after opening, loading and rendering one batch minus the RSS "
            "after `import torch, ladd_format` and one tiny crop call (a fresh process; on CPU the device is the host), "
            "split into what loading left beyond the held arrays (peak after the DeviceLoader is built) and what "
            "rendering the first batch added beyond the batch's own tensors; the last column is "
            "(RSS growth - one batch) / stored, the goal's ratio. The row with `MALLOC_MMAP_THRESHOLD_` repeats a case "
            "with glibc's mmap threshold fixed at 128 KiB (freed read buffers return to the system at once): a "
            "diagnostic, left out of the goals and the growth table.", "",
            _table(["px", "M", "encoding", "stored MiB", "start-up s", "1st batch s", "held MiB", "held / stored",
                    "batch MiB", "RSS growth MiB", "of which load beyond held", "of which batch beyond its tensors",
                    "(growth - batch) / stored"], rows), ""]

    # labeling ---------------------------------------------------------------------------
    rows, whats = [], []
    for spec, r, _ in _results(log, "label"):
        if r["what"] not in whats:
            whats.append(r["what"])
        rows.append([spec["model"], spec["size"], spec["images"], r["crops"], spec["batch"], spec["repeats"],
                     f"{r['bare_crops_per_s']:,.1f}", f"{r['label_crops_per_s']:,.1f}",
                     f"{r['label_crops_per_s'] / r['bare_crops_per_s']:.2f}",
                     f"{100 * r['around_share']:.1f}% ({1 / (1 + r['around_share']):.3f})", f"{r['augment_crops_per_s']:,.1f}",
                     f"{r['augment_crops_per_s'] / r['bare_crops_per_s']:.2f}", _mib(r["peak_rss"])])
    out += ["## Labeling throughput", "",
            "Bare = `model(x)` under `torch.no_grad` on the same crops, cut and normalised beforehand, in passes of "
            "the same number of crops; `label_batches` adds cutting, resizing, normalising, softmax and the copy to "
            "numpy; `augment` adds uint8 encoding and writing the container. Best of the interleaved repeats "
            "(`augment` runs once). *Work besides the network* times label_batches' own steps alone (cut + resize, "
            "normalise, a softmax of logits-sized rows, the copy to numpy) as a share of the bare forward, and the "
            "label / bare ratio that share predicts: a measured ratio well below it is the shared machine's noise. "
            "Networks: " + "; ".join(whats) + ".", "",
            _table(["labeler", "px", "images", "crops", "crops/pass", "best of", "bare crops/s", "label_batches crops/s",
                    "label / bare", "work besides the network (expected ratio)", "augment crops/s", "augment / bare", "peak RSS MiB"], rows), ""]

    # augment RSS ------------------------------------------------------------------------
    rows, aug_ratios = [], []
    for spec, r, _ in _results(log, "augment"):
        specs = _stored_specs(spec["m"], spec["size"], k, spec["encoding"])
        dense = _dense_bytes(specs)
        budget = r["images_bytes"] + dense + GiB
        aug_ratios.append((r["peak_rss"] / budget, spec, r))
        rows.append([spec["model"], spec["size"], f"{spec['m']:,}", spec["encoding"], r["crops_per_pass"],
                     f"{r['seconds']:.1f}", _mib(r["images_bytes"]), _mib(dense), _mib(budget),
                     _mib(r["rss_ready"]), _mib(r["peak_rss"]), f"{r['peak_rss'] / budget:.2f}"])
        if spec["model"] == "standin":
            growth_src.setdefault(("augment peak RSS", "MiB", (spec["size"], spec["encoding"])), []).append(
                (spec["m"], r["peak_rss"]))
    out += ["## Labeling + writing: peak RSS of `augment`", "",
            "Images are held in memory (uint8), as `augment` takes them; *budget* = images + stored dense bytes + "
            "1 GiB; *ready* = RSS after imports and building the labeler, before the images exist. The stand-in "
            "labeler (adaptive average pool to 4x4 + a linear layer, 32 px input) makes the sweep over M affordable "
            "on a CPU; the ConvNet rows use the library's default crops per pass (`crops_per_pass`).", "",
            _table(["labeler", "px", "M", "encoding", "crops/pass", "seconds", "images MiB", "stored dense MiB",
                    "budget MiB", "ready MiB", "peak RSS MiB", "peak / budget"], rows), ""]

    # growth -----------------------------------------------------------------------------
    rows = []
    for (figure, unit, (size, enc)), series in growth_src.items():
        series = sorted(series)
        if len(series) < 2:
            continue
        steps = [f"{b[1] / a[1]:.2f}x (M x{b[0] / a[0]:.0f})" if a[1] > 0 else "-" for a, b in zip(series, series[1:])]
        values = " -> ".join((f"{v:.2f}" if unit == "s" else f"{v / MiB:,.0f}") for _, v in series)
        rows.append([f"{figure} ({unit})", size, enc,
                     " -> ".join(f"{m:,}" for m, _ in series), values, ", ".join(steps)])
    out += ["## Growth with M", "",
            "Ratio of each figure between consecutive M: linear growth shows the M ratio (x4), flat shows x1.", "",
            _table(["figure", "px", "encoding", "M", "values", "step ratios"], rows), ""]

    # profile ----------------------------------------------------------------------------
    for spec, r, _ in _results(log, "profile"):
        out += [f"## Profile: {spec['size']} px, M = {spec['m']:,}, {spec['encoding']} (cProfile, main thread)", "",
                "zarr runs chunk encoding, decoding and file I/O on its own event-loop thread: the main thread "
                "waits for it in `threading.py:wait` / `lock.acquire`, so that row is zarr's share.", ""]
        for name, part in r.items():
            out += [f"{name}: {part['seconds']:.2f} s", "", "```", *part["top"], "```", ""]

    # goals ------------------------------------------------------------------------------
    out += ["## Goals", "", _table(["goal", "verdict", "measured", "why / where"], goals(log, k, aug_ratios)), ""]

    if skipped:
        out += ["## Not run", ""] + [f"- {s}" for s in skipped] + [""]
    failed = [e for e in log if "error" in e]
    if failed:
        out += ["## Failed cases", ""] + [f"- {e['kind']} {_case_name(e['spec'])}: {e['error']}" for e in failed] + [""]
    rows = [[e["kind"], _case_name(e["spec"]), f"{e['load']:.2f}", f"{e['others_busy']:.1f}",
             f"{e.get('waited_s', 0):.0f}", f"{e.get('wall_s', 0):.1f}"] for e in log]
    out += ["## Cases run (load before each)", "",
            _table(["worker", "case", "load avg (1 min)", "others' busy cores", "waited s", "wall s"], rows), ""]
    return "\n".join(out)


def goals(log: list[dict], k: int, aug_ratios) -> list[list[str]]:
    """Rows of the goals table: goal, verdict, measured ratios, why where not met."""
    rows = []

    def verdict(flags: list[bool]) -> str:
        return "met" if all(flags) else f"NOT met ({len(flags) - sum(flags)} of {len(flags)} cases miss)"

    # 1. labeling + writing
    if aug_ratios:
        ratio, spec, r = max(aug_ratios, key=lambda t: t[0])
        bad = [t for t in aug_ratios if t[0] > 1]
        why = "; ".join(
            f"{s['model']} {s['size']} px, M = {s['m']:,}: {_mib(x['peak_rss'])} MiB with {x['crops_per_pass']} "
            "crops per forward pass (crops_per_pass budgets input pixels, not the network's activations)"
            for _, s, x in bad[:3])
        fine = [t for t in aug_ratios if t[0] <= 1]
        measured = f"worst {ratio:.2f} of budget ({spec['model']}, {spec['size']} px, M = {spec['m']:,})"
        if fine and bad:
            best = max(fine, key=lambda t: t[0])
            measured += f"; within budget: up to {best[0]:.2f} ({best[1]['model']}, M = {best[1]['m']:,})"
        rows.append(["labeling + writing: peak RSS <= images + stored dense + 1 GiB",
                     verdict([t[0] <= 1 for t in aug_ratios]), measured, why])
    # 2. loader
    ratios = []
    for e in log:
        if e["kind"] == "loader" and "result" in e and not e["spec"].get("env"):
            r, s = e["result"], e["spec"]
            data = r["stored"]["images"] + sum(v for n, v in r["stored"].items() if n not in ("images", "labels"))
            grown = r["peak_rss"] - r["rss_import"]
            held = sum(r["held"]["device"].values()) + sum(r["held"]["host"].values())
            ratios.append(((grown - r["batch_bytes"]) / data, held / data, s, grown - r["batch_bytes"] - held))
    if ratios:
        worst = max(ratios, key=lambda t: t[0])
        s = worst[2]
        over = [t for t in ratios if t[0] > 1.1]
        why = ""
        if over:
            extra = sorted(t[3] for t in ratios)
            why = (f"RSS beyond the held arrays and the batch: {_mib(extra[0])} to {_mib(extra[-1])} MiB "
                   f"(median {_mib(extra[len(extra) // 2])}), so it weighs most where little is stored; "
                   f"over at: " + ", ".join(f"{t[2]['size']} px/{t[2]['m']:,}/{t[2]['encoding']} {t[0]:.2f}x"
                                            for t in over[:6]) + ("..." if len(over) > 6 else ""))
        rows.append(["DeviceLoader: memory <= 1.1 x stored images + dense + one batch",
                     verdict([t[0] <= 1.1 for t in ratios]),
                     f"peak RSS growth: worst {worst[0]:.2f}x ({s['size']} px, M = {s['m']:,}, {s['encoding']}), "
                     f"best {min(t[0] for t in ratios):.2f}x; loader.memory(): {min(t[1] for t in ratios):.3f}x to "
                     f"{max(t[1] for t in ratios):.3f}x", why])
    # 3. read / write with >= 1 GB
    def big(kind):
        return [(e["spec"], e["result"]) for e in log if e["kind"] == kind and "result" in e and
                sum(_nbytes(v) for v in _stored_specs(e["spec"]["m"], e["spec"]["size"], k,
                                                      e["spec"]["encoding"]).values()) >= 1e9]

    for item in big("read"):  # verify on: the faster of the modes that check every digest
        r = item[1]
        r["verify_best_s"], r["verify_best"] = r["readv_s"], "verify=True"
        if r.get("read_all_verified") and r["readr_s"] < r["readv_s"]:
            r["verify_best_s"], r["verify_best"] = r["readr_s"], "verify='read'"
    for label, items, key, base, limit in (
            ("read (verify off) <= 2 x np.load, >= 1 GB", big("read"), "read_s", "npload_s", 2.0),
            ("read, verify on <= 3 x np.load, >= 1 GB", big("read"), "verify_best_s", "npload_s", 3.0),
            ("write <= 2 x (np.save + fsync + sha256), >= 1 GB", big("write"), "write_s", "baseline_s", 2.0)):
        if not items:
            rows.append([label, "not measured", "no case with >= 1 GB of stored data", "run with larger M"])
            continue
        vals = [(r[key] / r[base], s, r) for s, r in items]
        cases = ", ".join(f"{s['size']} px/{s['m']:,}/{s['encoding']} {v:.2f}x" + (
            f" ({r['verify_best']}; verify=True {r['readv_s'] / r['npload_s']:.2f}x)" if key == "verify_best_s" else "")
            for v, s, r in vals)
        why = "; ".join(_why(label, s, r) for v, s, r in vals if v > limit)
        rows.append([label, verdict([v <= limit for v, _, _ in vals]), cases, why])
    # 4. labeling throughput
    vals = [(e["result"]["label_crops_per_s"] / e["result"]["bare_crops_per_s"], e["spec"])
            for e in log if e["kind"] == "label" and "result" in e]
    if vals:
        cases = ", ".join(f"{s['model']} {s['size']} px {v:.2f}" for v, s in vals)
        rows.append(["labeling >= 90% of the bare forward", verdict([v >= 0.9 for v, _ in vals]), cases,
                     "" if all(v >= 0.9 for v, _ in vals) else
                     "work besides the network, timed alone: " + ", ".join(
                         f"{s['model']} {s['size']} px {100 * e['result']['around_share']:.1f}%"
                         for e in log if e["kind"] == "label" and "result" in e for s in [e["spec"]])
                     + " of the bare forward; a larger gap is timing noise (see the others' busy cores column)"])
    return rows


def _why(label: str, spec: dict, r: dict) -> str:
    """One line on where the time goes in a case that misses a goal."""
    where = f"{spec['size']} px/{spec['m']:,}/{spec['encoding']}"
    if label.startswith("write"):
        enc = r.get("encode_est_s")
        split = f", of which encoding about {enc:.1f} s and validation {r.get('check_est_s', 0):.1f} s" if enc else ""
        return (f"{where}: write {r['write_s']:.1f} s{split}, vs np.save {r['npsave_s']:.1f} + sha256 "
                f"{r['sha256_s']:.1f} + fsync {r['fsync_s']:.1f} s; zstd and the chunk writes run on zarr's thread")
    if "verify on" in label:
        text = (f"{where}: open(verify=True) alone {r['openv_s']:.2f} s (decodes and hashes every array), then "
                f"the arrays are read again ({r['readv_s'] - r['openv_s']:.2f} s)")
        if "readr_s" in r:
            text += f"; verify='read' {r['readr_s']:.2f} s vs {r['read_s']:.2f} s unverified"
        return text
    return (f"{where}: images {r['images_s']:.2f} s + stored dense {r['stored_dense_s']:.2f} s vs np.load "
            f"{r['npload_s']:.2f} s (zstd decode + zarr's chunk assembly)")


if __name__ == "__main__":
    sys.exit(main())
