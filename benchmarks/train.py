"""Training throughput: the field's evaluation loop against the library, same data, same steps.

For each image size (ConvNetD3 at 32 px, ConvNetD5 at 128 px) and IPC, one LADD container is
built and every side trains S seeds on it, in this one run:

- **field loop**: how the field's code bases train a test model (MTT's ``evaluate_synset`` /
  DC's ``evaluate_synset`` + ``epoch``): the normalised float32 images and int64 labels put on
  the device, ``TensorDataset`` + ``DataLoader(batch_size=256, shuffle=True, num_workers=0)``,
  per-batch DSA (``ladd_format.dsa.dsa``, the port of the field's ``DiffAugment``: one family
  per batch, parameters per sample), fp32 eager, SGD lr 0.01 momentum 0.9 weight decay 5e-4,
  lr x0.1 after half the epochs (a new optimizer, as MTT makes one), the per-batch
  ``loss.item()`` and argmax-on-host accuracy of the field's ``epoch()``; one seed after another;
- **library, hard**: the library on the same full images and hard labels (``mode="hard"``),
  ``train_seeds(seeds=S, together=True)`` when the library has it, else ``train`` once per seed
  (the table says which);
- **library, ladd**: the library in ``mode="ladd"`` (images + k crops per image and their dense
  labels), to show what the crops cost.

Every side runs the same number of optimizer steps (``epochs x ceil(M / 256)``) from the same
initial weights (``torch.manual_seed(seed)`` before ``build_model``).

Figures:

- *s/seed*: wall seconds to train all S seeds (model build, data upload and the loop; no
  evaluation), divided by S;
- *inputs/s*: network inputs trained on by all S seeds, divided by the wall seconds of all S
  seeds. An input is one image (or one crop, for the ladd row): ``S x epochs x M x (1 + k)``.
  For one seed at a time that is each seed's own throughput; for seeds trained together it is
  the throughput a user gets per second of their time;
- *vs field*: inputs/s over the field loop's inputs/s at the same size and IPC (for the hard row,
  equal inputs: the field loop's wall time over the library's);
- *accuracy*: top-1 on a held-out test split of the same source (mean +/- std over seeds), so
  that no speed is bought with accuracy;
- *peak RSS*: the process's VmHWM while the row ran (reset before each row through
  ``/proc/self/clear_refs``); *device peak*: ``torch.cuda.max_memory_allocated`` (CUDA only).

Data: Fashion-MNIST (the only real set installed offline) upsampled bilinearly to the size and
repeated to 3 channels, so that the networks have the field's CIFAR/ImageNet-subset geometry
(3 x 32 x 32 for ConvNetD3, 3 x 128 x 128 for ConvNetD5); the distilled set is a seeded random-real
selection of IPC train images per class; the dense labels come from a ConvNet labeler trained
on a pool of train images of the same source (``train_labeler``); the test split is FM test
images put through the same transform.

Prints everything (no assertions on timing); ``--out`` writes the markdown report,
``--json`` the figures. Usage::

    python benchmarks/train.py --quick --device cpu --malloc-reuse --variants cpu-bf16,default \
        --out benchmarks/results/train.md   # on a CPU: bf16 (AMX) and float32 library rows
    python benchmarks/train.py --device cuda --out benchmarks/results/train_h100.md
    python benchmarks/train.py --device cuda --epochs 300,100 --crops 5,0 \
        --variants default,channels-last,separate,fp32,compile   # one fast-path switch per row
    python benchmarks/train.py --device cuda --ipc 10 --epochs 20,10 --profile 20   # where the time goes
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ladd_format  # noqa: E402
import ladd_format.train as ladd_train  # noqa: E402
from ladd_format._torch import normalise  # noqa: E402
from ladd_format.dsa import dsa  # noqa: E402
from ladd_format.labeler import augment, train_labeler  # noqa: E402
from ladd_format.models import build_model  # noqa: E402
from ladd_format.sources import fashion_mnist, from_arrays, random_real  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import device_name, load_average, peak_rss, sync  # noqa: E402  (benchmarks/_machine.py)

MiB = 1 << 20
MODELS = {32: "convnetd3", 128: "convnetd5"}
BATCH = 256
# the library's rows: its defaults, then one fast-path switch changed at a time (cpu-bf16:
# bfloat16 autocast on a CPU too, what the demo does on CPUs with AMX units)
VARIANTS = {"default": {}, "channels-last": {"channels_last": True}, "compile": {"compile": True},
            "compile-graphs": {"compile": "reduce-overhead"}, "separate": {"together": False}, "fp32": {"amp": False},
            "cpu-bf16": {"cpu_amp": True}}


def _side(variant: str) -> str:
    return "library" if variant == "default" else f"library {variant}"


# ------------------------------------------------------------------------------------------
# machine figures


def _reset_peaks(device: torch.device) -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs "5") and the device peak; whether the
    RSS peak could be reset (else the figure is the process's peak so far)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ------------------------------------------------------------------------------------------
# data


def _resize(images: np.ndarray, size: int, device: torch.device) -> np.ndarray:
    """uint8 [N, 28, 28, 1] -> uint8 [N, size, size, 3]: bilinear (align_corners=False), rounded,
    the grey channel repeated."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    step = max(1, (64 * MiB) // (size * size * 4))
    for lo in range(0, len(images), step):
        x = torch.from_numpy(np.array(images[lo:lo + step])).to(device).permute(0, 3, 1, 2).float()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        out[lo:lo + step] = x.expand(-1, -1, -1, 3).cpu().numpy()
    return out


def make_source(fm, size: int, pool: int, test: int, device: torch.device, seed: int = 0):
    """FM at ``size`` px, 3 channels: ``pool`` seeded train images (for the labeler and the
    random-real selection) and the first ``test`` test images."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(fm.train_labels), size=min(pool, len(fm.train_labels)), replace=False))
    test = min(test, len(fm.test_labels))
    return from_arrays(f"fashion-mnist-{size}px-rgb", _resize(fm.train_images[pick], size, device),
                       fm.train_labels[pick], _resize(fm.test_images[:test], size, device),
                       fm.test_labels[:test], class_names=list(fm.class_names))


def make_container(folder: Path, source, ipc: int, labeler, size: int) -> Path:
    images, labels, index = random_real(source, ipc, seed=0)
    provenance = {"method": "random-real", "source_dataset": source.name, "ipc": ipc,
                  "details": {"seed": 0, "note": "benchmarks/train.py: FM upsampled, random real"}}
    return augment(folder / f"fm{size}_ipc{ipc}.ladd", images, labels, labeler, distillation=provenance,
                   class_names=list(source.class_names), overwrite=True, progress=False)


# ------------------------------------------------------------------------------------------
# the field's loop (MTT / DC evaluate_synset + epoch)


def field_train(images: torch.Tensor, labels: torch.Tensor, *, model: str, width: int, num_classes: int,
                epochs: int, lr: float, seed: int, device: torch.device) -> torch.nn.Module:
    """One test model as the field trains it; ``images`` are normalised float32 [M, C, H, W]."""
    torch.manual_seed(seed)
    net = build_model(model, images.shape[1], num_classes, tuple(images.shape[2:]), width=width).to(device)
    images_train, labels_train = images.to(device), labels.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    dst_train = torch.utils.data.TensorDataset(images_train, labels_train)
    trainloader = torch.utils.data.DataLoader(dst_train, batch_size=BATCH, shuffle=True, num_workers=0)
    generator = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        net.train()
        loss_avg, acc_avg, num_exp = 0.0, 0, 0
        for datum in trainloader:
            img = datum[0].float().to(device)
            lab = datum[1].long().to(device)
            img = dsa(img, generator=generator)  # DiffAugment(img, args.dsa_strategy, param=args.dsa_param)
            n_b = lab.shape[0]
            output = net(img)
            loss = criterion(output, lab)
            acc = np.sum(np.equal(np.argmax(output.cpu().data.numpy(), axis=-1), lab.cpu().data.numpy()))
            loss_avg += loss.item() * n_b
            acc_avg += acc
            num_exp += n_b
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if ep + 1 == epochs // 2:  # the library's milestone: epochs >= E // 2 run at lr x 0.1
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    net.eval()
    return net


def run_field(ds, seeds: int, *, model: str, width: int, epochs: int, lr: float, device: torch.device):
    info = ds.manifest.image
    pixels = torch.from_numpy(np.asarray(ds.images)).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
    sync(device)
    start = time.perf_counter()
    images = normalise(pixels, info.mean, info.std)  # as saved by MTT: normalised float32
    models = [field_train(images, labels, model=model, width=width, num_classes=ds.num_classes,
                          epochs=epochs, lr=lr, seed=s, device=device) for s in range(seeds)]
    sync(device)
    return time.perf_counter() - start, models, "TensorDataset + DataLoader, one seed after another"


# ------------------------------------------------------------------------------------------
# the library


def run_library(ds, seeds: int, *, mode: str, model: str, width: int, epochs: int, lr: float, crops,
                device: torch.device, amp: bool, together: bool = True, **fast):
    """``fast``: the library's fast-path switches (``channels_last``, ``compile``) where set."""
    kwargs = dict(mode=mode, model=model, width=width, epochs=epochs, lr=lr, batch_size=BATCH,
                  crops_per_image=crops if mode == "ladd" else None, device=device, amp=amp, progress=False,
                  **fast)
    sync(device)
    start = time.perf_counter()
    if hasattr(ladd_train, "train_seeds"):
        results = ladd_train.train_seeds(ds, seeds=seeds, together=together, **kwargs)
        api = f"train_seeds(seeds={seeds}, together={together})"
    else:
        results = [ladd_train.train(ds, seed=s, **kwargs) for s in range(seeds)]
        api = "train() per seed (no train_seeds in this library)"
    sync(device)
    return time.perf_counter() - start, [r.model for r in results], api


# ------------------------------------------------------------------------------------------
# where a row's time goes (--profile)

_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def profile_side(fn, epochs: int, seeds: int, device: torch.device, top: int = 8) -> dict:
    """Run ``fn(epochs, seeds)`` again under torch.profiler (not the timed run: the profiler
    slows the host) and say where its time went: on CUDA the kernels' busy time against the
    wall time (far below it: the device waits for the host, launches or synchronisations),
    the launches, the host's blocking calls (memcpy from pageable memory blocks when the driver
    stages it) and the kernels that take most time; on a CPU the operators instead."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    sync(device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn(epochs, seeds)
        sync(device)
    wall = time.perf_counter() - start
    events = prof.key_averages()

    def calls(names):
        return sum(e.count for e in events if e.key in names), sum(e.cpu_time_total for e in events if e.key in names)

    if cuda:
        timed = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0]
        key = "self_device_time_total"
    else:
        timed = [e for e in events if e.key.startswith("aten::") and e.self_cpu_time_total > 0]
        key = "self_cpu_time_total"
    busy = sum(getattr(e, key) for e in timed) / 1e6
    launches, launch_us = calls(_LAUNCHES)
    syncs, sync_us = calls(_SYNCS)
    copies, copy_us = calls(("cudaMemcpyAsync", "cudaMemcpy"))
    heaviest = sorted(timed, key=lambda e: -getattr(e, key))[:top]
    return {"wall": wall, "busy": busy, "busy_what": "kernels" if cuda else "aten operators (self)",
            "calls": sum(e.count for e in timed), "launches": launches, "launch_s": launch_us / 1e6,
            "syncs": syncs, "sync_s": sync_us / 1e6, "copies": copies, "copy_s": copy_us / 1e6,
            "top": [{"name": e.key[:90], "count": e.count, "seconds": getattr(e, key) / 1e6} for e in heaviest]}


# ------------------------------------------------------------------------------------------
# one case


def run_case(ds, source, args, device: torch.device, size: int) -> list[dict]:
    info, m = ds.manifest.image, len(ds)
    model = MODELS[size]
    steps_per_epoch = math.ceil(m / BATCH)
    epochs, crops_arg = args.epochs_by_size[size], args.crops_by_size[size]
    k = ds.manifest.sampler.num_crops if crops_arg == "all" else crops_arg
    common = dict(model=model, width=args.width, lr=args.lr, device=device)
    lib = dict(common, amp=args.amp, together=args.together)
    sides = [("field loop", "hard", 0, lambda e, s: run_field(ds, s, epochs=e, **common))]
    for variant in args.variants:
        options = dict(lib, **VARIANTS[variant])
        sides.append((_side(variant), "hard", 0,
                      lambda e, s, o=options: run_library(ds, s, mode="hard", epochs=e, crops=None, **o)))
    if not args.no_ladd and k:
        options = dict(lib, **VARIANTS[args.variants[0]])
        sides.append((_side(args.variants[0]), "ladd", k,
                      lambda e, s: run_library(ds, s, mode="ladd", epochs=e, crops=crops_arg, **options)))
    rows = []
    for who, mode, crops, fn in sides:
        fn(1, 1)  # warm-up: one epoch of one seed (lazy initialisation, kernels, caches)
        rss_reset = _reset_peaks(device)
        load = load_average()
        seconds, models, api = fn(epochs, args.seeds)
        peak = peak_rss()
        dev_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        accs = [ladd_train.evaluate(net, source.test_images, source.test_labels, info.mean, info.std)
                for net in models]
        inputs = args.seeds * epochs * m * (1 + crops)
        profiled = None
        if args.profile:
            profiled = profile_side(fn, args.profile, args.seeds, device)
            profiled["steps"] = args.profile * steps_per_epoch
        row = {"size": size, "model": model, "ipc": ds.ipc, "images": m, "side": who, "mode": mode, "k": crops,
               "api": api, "seeds": args.seeds, "epochs": epochs, "steps": epochs * steps_per_epoch,
               "seconds": seconds, "s_per_seed": seconds / args.seeds, "inputs": inputs,
               "inputs_per_s": inputs / seconds, "accuracies": accs, "acc_mean": float(np.mean(accs)),
               "acc_std": float(np.std(accs)), "peak_rss": peak, "rss_reset": rss_reset,
               "device_peak": dev_peak, "load": load, "profile": profiled}
        rows.append(row)
        base = rows[0]["inputs_per_s"]
        print(f"  {size:>3} px {model} IPC {ds.ipc:>3} {who:<10} {mode:<4} k={crops:<2} {seconds:8.2f} s "
              f"({row['s_per_seed']:.2f} s/seed) {row['inputs_per_s']:10,.0f} inputs/s "
              f"{row['inputs_per_s'] / base:5.2f}x  acc {100 * row['acc_mean']:.2f} +/- {100 * row['acc_std']:.2f}  "
              f"peak RSS {peak / MiB:,.0f} MiB" + (f"  device peak {dev_peak / MiB:,.0f} MiB" if dev_peak else "")
              + f"  load {load:.2f}  [{api}]", flush=True)
        if profiled:
            print("    " + _profile_line(profiled), flush=True)
        del models
    return rows


def _profile_line(p: dict) -> str:
    per = max(1, p["steps"])
    return (f"profiled {p['steps']} steps: wall {p['wall']:.2f} s, {p['busy_what']} busy {p['busy']:.2f} s "
            f"({100 * p['busy'] / p['wall']:.0f}%), {p['calls'] / per:,.0f} calls a step, {p['launches'] / per:,.0f} "
            f"launches a step, syncs {p['syncs']} ({p['sync_s']:.3f} s), memcpy calls {p['copies']} "
            f"({p['copy_s']:.3f} s); heaviest: " + ", ".join(f"{t['name'][:40]} {t['seconds']:.3f} s" for t in p["top"][:3]))


# ------------------------------------------------------------------------------------------
# report


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 5 else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def report(info: dict, rows: list[dict]) -> str:
    out = ["# Training throughput: the field's loop against the library", "",
           f"Command: `{info['command']}`  ", f"Run: {info['started']} to {info['finished']}  ",
           f"Machine: {info['machine']}; device `{info['device']}` ({info['device_name']}); "
           f"{info['threads']} torch threads  ",
           f"Versions: python {info['python']}, torch {info['torch']}, ladd_format {info['ladd_format']}  ",
           f"Load: 1-minute load average {info['load_start']:.2f} at the start, {info['load_end']:.2f} at the end "
           f"({info['cores']} cores); each row's load at its start is in the table. "
           + ("The machine was shared with other processes during this run: wall times are upper bounds."
              if max([info["load_start"], info["load_end"]] + [r["load"] for r in rows]) > 0.5 * info["cores"]
              else ""),
           "",
           f"Settings: {info['settings']}", "",
           "Library API: " + "; ".join(sorted({r["api"] for r in rows if r["side"].startswith("library")})), "",
           "*inputs/s*: images (and crops, for the ladd row) trained on by all seeds / wall seconds of all "
           "seeds (model build, upload and training; no evaluation). *vs field*: inputs/s over the field "
           "loop's at the same size and IPC. *accuracy*: top-1 on the held-out test split, mean ± std over "
           "the seeds. *peak RSS*: VmHWM during the row; *device peak*: torch.cuda.max_memory_allocated.", ""]
    header = ["px", "model", "IPC", "side", "labels", "epochs", "steps", "seeds", "s/seed", "inputs/s", "vs field",
              "accuracy (%)", "peak RSS MiB", "device peak MiB", "load"]
    table = []
    for r in rows:
        base = next(b for b in rows if b["size"] == r["size"] and b["ipc"] == r["ipc"] and b["side"] == "field loop")
        labels = "hard" if r["mode"] == "hard" else f"images + {r['k']} crop{'s' if r['k'] != 1 else ''}, dense"
        table.append([r["size"], r["model"], r["ipc"], r["side"], labels, r["epochs"], r["steps"], r["seeds"],
                      f"{r['s_per_seed']:.2f}", f"{r['inputs_per_s']:,.0f}",
                      f"{r['inputs_per_s'] / base['inputs_per_s']:.2f}x",
                      f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f}", f"{r['peak_rss'] / MiB:,.0f}",
                      "-" if r["device_peak"] is None else f"{r['device_peak'] / MiB:,.0f}", f"{r['load']:.2f}"])
    out.append(_table(header, table))
    if any(not r["rss_reset"] for r in rows):
        out += ["", "Peak RSS could not be reset between rows here: each figure is the process's peak so far."]
    profiled = [r for r in rows if r.get("profile")]
    if profiled:
        out += ["", "## Where the time goes", "",
                "Each row run again for the steps shown under torch.profiler (slower than the timed run: the "
                "profiler adds host time). *busy*: the kernels' summed device time (CUDA), or the aten operators' "
                "self time (CPU), over the profiled wall time; well below 100% on a device means it waited for the "
                "host. *syncs*: cudaStreamSynchronize/DeviceSynchronize/EventSynchronize calls and the host "
                "time inside them; *memcpy*: cudaMemcpy(Async) calls and the host time inside them (a copy from "
                "pageable memory blocks while the driver stages it).", ""]
        header = ["px", "IPC", "side", "labels", "steps", "wall s", "busy", "calls/step", "launches/step",
                  "syncs (s)", "memcpy (s)", "heaviest (s)"]
        table = []
        for r in profiled:
            p, per = r["profile"], max(1, r["profile"]["steps"])
            labels = "hard" if r["mode"] == "hard" else f"+ {r['k']} crops"
            table.append([r["size"], r["ipc"], r["side"], labels, p["steps"], f"{p['wall']:.2f}",
                          f"{p['busy']:.2f} s ({100 * p['busy'] / p['wall']:.0f}%)", f"{p['calls'] / per:,.0f}",
                          f"{p['launches'] / per:,.0f}", f"{p['syncs']} ({p['sync_s']:.3f})",
                          f"{p['copies']} ({p['copy_s']:.3f})",
                          "; ".join(f"`{t['name'][:48]}` {t['seconds']:.3f}" for t in p["top"][:4])])
        out.append(_table(header, table))
    out += ["", f"Data: {info['data']}", "", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------


def _per_size(values: dict, sizes: list[int]) -> str:
    return ", ".join(f"{values[s]} at {s} px" for s in sizes)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _per_size_values(ap, flag: str, values: list | None, sizes: list[int]) -> dict:
    """One value for every size, or one per size in ``sizes`` order."""
    if not values:
        return {}
    if len(values) == 1:
        return {size: values[0] for size in MODELS}
    if len(values) != len(sizes):
        ap.error(f"{flag}: one value, or one per size ({len(sizes)}), got {len(values)}")
    return dict(zip(sizes, values))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--quick", action="store_true",
                    help="CPU-sized: width 16; 10 epochs at 32 px, 2 at 128 px; k = 5 crops at 32 px, 1 at "
                         "128 px; a 1,000-image labeler pool (2 epochs); 1,000 test images")
    ap.add_argument("--sizes", type=_ints, default=[32, 128], help="comma-separated, of 32,128 (default both)")
    ap.add_argument("--ipc", type=_ints, default=[10, 50], help="comma-separated (default 10,50)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=_ints, default=None,
                    help="one value for every size, or comma-separated per size in --sizes order "
                         "(default 300; --quick: 10 at 32 px, 2 at 128 px)")
    ap.add_argument("--width", type=int, default=None, help="ConvNet width (default 128, the field's; --quick: 16)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--crops", default=None,
                    help="crops per image of the ladd row: all or k, one for every size or comma-separated per "
                         "size in --sizes order; 0 skips the ladd row at that size (default all; --quick: 5 at "
                         "32 px, 1 at 128 px)")
    ap.add_argument("--variants", default="default",
                    help="comma-separated library hard-label rows, each one switch from the library's defaults: "
                         f"{', '.join(VARIANTS)} (default: default); the ladd row uses the first")
    ap.add_argument("--malloc-reuse", action="store_true",
                    help="before any work, ladd_format.keep_freed_memory() (what the ladd program does); "
                         "both sides alike")
    ap.add_argument("--no-ladd", action="store_true", help="skip the library's ladd row")
    ap.add_argument("--separate", dest="together", action="store_false",
                    help="library: train_seeds(together=False) in every row, one seed after another "
                         "(default: the library's choice; see --variants separate)")
    ap.add_argument("--no-amp", dest="amp", action="store_false",
                    help="library in float32 on CUDA too (default: its bf16 autocast on CUDA)")
    ap.add_argument("--pool", type=int, default=None,
                    help="train images the labeler learns from (default 10,000; --quick 1,000)")
    ap.add_argument("--test-images", type=int, default=None, help="test images (default 10,000; --quick 1,000)")
    ap.add_argument("--labeler-epochs", type=int, default=None, help="default 10 (--quick: 2)")
    ap.add_argument("--labeler-width", type=int, default=None, help="default 128 (--quick: 16)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--profile", type=int, default=0, metavar="EPOCHS",
                    help="after each row, run it again for EPOCHS epochs under torch.profiler and report where "
                         "the time goes (kernels' busy time, launches, synchronisations, heaviest kernels)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    q = args.quick
    if any(s not in MODELS for s in args.sizes):
        ap.error(f"--sizes must be among {sorted(MODELS)}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or any(v not in VARIANTS for v in args.variants):
        ap.error(f"--variants must be among {', '.join(VARIANTS)}")
    epochs = _per_size_values(ap, "--epochs", args.epochs, args.sizes)
    args.epochs_by_size = {size: epochs.get(size) or ((10 if size <= 32 else 2) if q else 300) for size in MODELS}
    args.width = args.width or (16 if q else 128)
    crops = _per_size_values(ap, "--crops", args.crops.split(",") if args.crops else None, args.sizes)
    args.crops_by_size = {size: "all" if c in (None, "all") else int(c)
                          for size, c in ((size, crops.get(size)) for size in MODELS)}
    if q and args.crops is None:
        args.crops_by_size = {32: 5, 128: 1}
    args.pool = args.pool or (1000 if q else 10000)
    args.test_images = args.test_images or (1000 if q else 10000)
    args.labeler_epochs = args.labeler_epochs or (2 if q else 10)
    args.labeler_width = args.labeler_width or (16 if q else 128)
    malloc = args.malloc_reuse and ladd_format.keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = {"command": "python benchmarks/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": f"{device_name(torch.device('cpu'))}, {_cores()} cores, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
            "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "cores": _cores(), "python": platform.python_version(), "torch": torch.__version__,
            "ladd_format": getattr(ladd_format, "__version__", "?"), "load_start": load_average(),
            "settings": f"seeds {args.seeds}, epochs {_per_size(args.epochs_by_size, args.sizes)}, batch {BATCH}, "
                        f"width {args.width}, lr {args.lr}, SGD momentum 0.9 wd 5e-4, lr x0.1 after half the epochs, "
                        f"DSA on every side; ladd row k = {_per_size(args.crops_by_size, args.sizes)} crops per image "
                        f"per step (0: no ladd row); library amp {'on (bf16 autocast on CUDA)' if args.amp else 'off'}, "
                        f"rows {', '.join(args.variants)}; "
                        f"malloc {'kept for reuse (keep_freed_memory)' if malloc else 'glibc defaults'}",
            "data": f"Fashion-MNIST, {args.pool:,} seeded train images and the first {args.test_images:,} test images, "
                    f"upsampled bilinearly to the size and repeated to 3 channels; random-real IPC per class "
                    f"from the {args.pool:,}; dense labels from a ConvNet labeler (width {args.labeler_width}, "
                    f"{args.labeler_epochs} epochs on the {args.pool:,} images)."}
    print(f"torch {torch.__version__}, device {device} ({info['device_name']}), {info['threads']} threads, "
          f"{info['cores']} cores, load {info['load_start']:.2f}; library "
          f"{'has train_seeds' if hasattr(ladd_train, 'train_seeds') else 'has no train_seeds: train() per seed'}")
    print(info["settings"])
    fm = fashion_mnist()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            t = time.perf_counter()
            source = make_source(fm, size, args.pool, args.test_images, device)
            labeler = train_labeler(source, epochs=args.labeler_epochs, width=args.labeler_width,
                                    out_dir=Path(tmp) / f"labeler{size}", device=device, progress=False)
            print(f"{size} px: source {source}, labeler trained in {time.perf_counter() - t:.1f} s")
            for ipc in args.ipc:
                path = make_container(Path(tmp), source, ipc, labeler, size)
                with ladd_format.open(path) as ds:
                    rows += run_case(ds, source, args, device, size)
                if args.json:
                    args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
            del source, labeler
    info["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    info["load_end"] = load_average()
    text = report(info, rows)
    print()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
