"""LADD's gain on Distribution Matching images against its gain on random real ones (issue 13).

    python benchmarks/distill.py [--ipc 1 10] [--seeds 3] [--iterations 150] [--batch-real 64]
        [--dm-width 64] [--clip] [--epochs 200] [--threads N] [--out [PATH]]

Fashion-MNIST. For each IPC, two image sets: the demo's seeded random-real draw
(``sources.random_real``, seed 0) and DM images distilled from that very draw
(``distill.distill_dm``, seed 0), so the two differ only by the DM iterations. One labeler
(the demo's ``cpu`` preset) labels both through ``labeler.augment``; each container trains
``--seeds`` ConvNets per mode ("hard": full images, hard labels; "ladd": images + crops with
dense labels) with the demo's ``measure`` (its ``cpu`` preset unless overridden), tested on the
10,000 test images. LADD's gain is ladd - hard per image set.

Rounding: DM optimises float pixels, the container stores uint8 (de-normalise, clamp, round).
Its cost is shown three ways: the DM matching loss (``distill.matching_loss``, 8 fixed random
ConvNets) of the float and the uint8 images; the share of pixels clamped; and hard-label
test accuracy of ConvNets trained on each (``_train_hard`` below, one loop for both arms,
because the library's trainer reads uint8 containers only).

``--clip`` distils with ``clip=True`` (pixels kept in 0..255 during DM). ``--out`` writes the
report to benchmarks/results/distill.md, or to the path given.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ladd_format._read import open as open_container
from ladd_format._torch import normalise
from ladd_format.demo import DemoSettings, measure
from ladd_format.distill import DistilledImages, distill_dm, matching_loss
from ladd_format.dsa import dsa
from ladd_format.labeler import augment, train_labeler
from ladd_format.models import build_model
from ladd_format.sources import SourceDataset, fashion_mnist, random_real
from ladd_format.train import evaluate

_OUT = Path(__file__).parent / "results" / "distill.md"
_MODES = ("hard", "ladd")


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_start, clock_start = time.perf_counter(), os.getloadavg()[0], time.strftime("%H:%M:%S")
    source = fashion_mnist()
    settings = DemoSettings.from_preset("cpu", seeds=args.seeds,
                                        train={"epochs": args.epochs} if args.epochs else None)
    lines = _settings_lines(args, settings, load_start)
    print("\n".join(lines), flush=True)
    labeler = train_labeler(source, **settings.labeler, out_dir=args.work / "labeler", progress=not args.quiet)
    rows, rounding = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for ipc in args.ipc:
            sets, dm, dm_seconds = _image_sets(source, ipc, args)
            rounding.append(_rounding(source, ipc, dm, settings, args, dm_seconds))
            print(_rounding_table(rounding[-1:]), flush=True)
            for name, (images, labels, provenance) in sets.items():
                path = augment(Path(tmp) / f"{name}_ipc{ipc}.ladd", images, labels, labeler,
                               distillation=provenance, class_names=list(source.class_names),
                               overwrite=True, progress=not args.quiet)
                with open_container(path) as ds:
                    for mode in _MODES:
                        row = measure(ds, source, settings, mode, progress=not args.quiet)
                        rows.append({"ipc": ipc, "images": name, **row})
                        print(f"IPC {ipc} {name:11s} {mode:4s} {_pm(row['accuracies'])} "
                              f"({time.perf_counter() - started:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    lines += [f"load (1-minute average): {load_start:.2f} at the start ({clock_start} UTC), "
              f"{os.getloadavg()[0]:.2f} at the end ({time.strftime('%H:%M:%S')} UTC); wall {seconds:.0f} s", ""]
    tables = "\n\n".join((_accuracy_table(rows), _gain_table(rows), _rounding_table(rounding)))
    print("\n".join(lines) + "\n" + tables)
    if args.out:
        args.out.write_text("# DM images vs random real images, with and without LADD\n\n"
                            + "  \n".join(lines) + "\n" + tables + "\n")
        print(f"written {args.out}")


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=150, help="DM iterations (the paper: 20,000)")
    ap.add_argument("--batch-real", type=int, default=64, help="real images per class per DM iteration (paper: 256)")
    ap.add_argument("--dm-width", type=int, default=64, help="width of DM's random ConvNets (paper: 128)")
    ap.add_argument("--epochs", type=int, default=None, help="test-model epochs (default: the cpu preset's)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--work", type=Path, default=Path("out/distill_bench"), help="where the labeler is kept")
    ap.add_argument("--clip", action="store_true", help="keep DM's pixels in 0..255 (not in the reference)")
    ap.add_argument("--out", type=Path, nargs="?", const=_OUT, default=None,
                    help=f"write the report (markdown) there; without a path {_OUT}")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args()


def _settings_lines(args: argparse.Namespace, settings: DemoSettings, load: float) -> list[str]:
    """What this run is, as printed before it starts and kept in the report."""
    cpu = platform.processor() or platform.machine()
    return [f"command: `python benchmarks/distill.py {' '.join(sys.argv[1:])}`",
            f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
            f"torch threads; device {'cuda' if torch.cuda.is_available() else 'cpu'}",
            f"DM (reduced CPU settings): iterations {args.iterations} (paper 20,000), batch_real "
            f"{args.batch_real} (paper 256), ConvNet width {args.dm_width} (paper 128), lr 1.0, momentum 0.5, "
            f"seed 0, initialised from the random-real draw (seed 0); pixels "
            + ("clipped to 0..255 after every step (clip=True, not in the reference)" if args.clip
               else "unbounded during DM, as in the reference (clip=False)"),
            f"test models: {args.seeds} seeds, demo preset {settings.preset}: "
            + ", ".join(f"{k} {v}" for k, v in settings.train.items()),
            "labeler: " + ", ".join(f"{k} {v}" for k, v in settings.labeler.items()),
            f"ipc {' '.join(map(str, args.ipc))}; 1-minute load average at the start {load:.2f}"]


def _image_sets(source: SourceDataset, ipc: int, args: argparse.Namespace) -> tuple[dict, DistilledImages, float]:
    """{"random real": ..., "DM": ...} as (images, labels, provenance); DM's whole result and seconds."""
    images, labels, index = random_real(source, ipc, seed=0)
    real = (images, labels, {"method": "random-real", "source_dataset": source.name, "ipc": ipc,
                             "details": {"seed": 0, "train_indices": index.tolist()}})
    t = time.perf_counter()
    dm = distill_dm(source, ipc, iterations=args.iterations, batch_real=args.batch_real, width=args.dm_width,
                    clip=args.clip, seed=0, progress=not args.quiet)
    seconds = time.perf_counter() - t
    return {"random real": real, "DM": (dm.images, dm.labels, dm.distillation)}, dm, seconds


def _rounding(source: SourceDataset, ipc: int, dm: DistilledImages, settings: DemoSettings, args: argparse.Namespace,
              dm_seconds: float) -> dict:
    """What turning DM's float pixels into uint8 changes: matching loss, clamped pixels, accuracy."""
    raw = (dm.normalised * np.asarray(source.std) + np.asarray(source.mean)) * 255
    start = random_real(source, ipc, seed=0)[0]
    loss = {name: matching_loss(source, x, dm.labels, width=args.dm_width, batch_real=args.batch_real)
            for name, x in (("random real", start), ("DM float", dm.normalised), ("DM uint8", dm.images))}
    epochs, width = settings.train["epochs"], settings.train["width"]
    arms = {"float": torch.from_numpy(dm.normalised).permute(0, 3, 1, 2),
            "uint8": normalise(torch.from_numpy(dm.images).permute(0, 3, 1, 2), source.mean, source.std)}
    acc = {name: [_train_hard(x.contiguous(), dm.labels, source, seed, epochs, width) for seed in range(args.seeds)]
           for name, x in arms.items()}
    return {"ipc": ipc, "dm_seconds": dm_seconds, "loss": loss, "accuracy": acc,
            "below": float((raw < -0.5).mean()), "above": float((raw >= 255.5).mean()),
            "moved": float(np.abs(dm.images.astype(np.int16) - start).mean())}


def _train_hard(x: torch.Tensor, labels: np.ndarray, source: SourceDataset, seed: int, epochs: int,
                width: int) -> float:
    """Test accuracy of a ConvNet trained on normalised images x [M, C, H, W] with hard labels: the
    field's protocol (SGD 0.01, momentum 0.9, wd 5e-4, batch 256, lr x0.1 at half, DSA per batch)."""
    y = torch.from_numpy(labels)
    torch.manual_seed(seed)
    h, w, c = source.image_shape
    net = build_model("convnet", c, source.num_classes, (h, w), width=width)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        if epoch == epochs // 2:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 256):
            batch = order[start:start + 256]
            loss = F.cross_entropy(net(dsa(x[batch], generator=gen)), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return evaluate(net, source.test_images, source.test_labels, source.mean, source.std)


def _pm(values: list[float]) -> str:
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def _accuracy_table(rows: list[dict]) -> str:
    lines = ["| IPC | images | labels | test accuracy (%) | bytes |", "|---:|---|---|---:|---:|"]
    for r in rows:
        labels = "dense (LADD)" if r["labels"] == "ladd" else "hard"
        lines.append(f"| {r['ipc']} | {r['images']} | {labels} | {_pm(r['accuracies'])} | {r['bytes']:,} |")
    return "\n".join(lines)


def _gain_table(rows: list[dict]) -> str:
    """LADD - hard per IPC and image set; the ± adds the two stds in quadrature."""
    lines = ["| IPC | images | LADD gain (points) | DM - random real, same labels (points) |", "|---:|---|---:|---|"]
    by = {(r["ipc"], r["images"], r["labels"]): np.asarray(r["accuracies"]) * 100 for r in rows}
    for ipc, name in dict.fromkeys((r["ipc"], r["images"]) for r in rows):
        hard, ladd = by[(ipc, name, "hard")], by[(ipc, name, "ladd")]
        gain = f"{ladd.mean() - hard.mean():+.2f} ± {np.hypot(ladd.std(), hard.std()):.2f}"
        vs = ""
        if name == "DM" and (ipc, "random real", "hard") in by:
            vs = ", ".join(f"{mode} {by[(ipc, 'DM', mode)].mean() - by[(ipc, 'random real', mode)].mean():+.2f}"
                           for mode in _MODES)
        lines.append(f"| {ipc} | {name} | {gain} | {vs} |")
    return "\n".join(lines)


def _rounding_table(rounding: list[dict]) -> str:
    lines = ["| IPC | DM s | pixels moved (mean abs, levels) | clamped <0 / >255 | matching loss: random real "
             "/ DM float / DM uint8 | hard-label acc. (%), float pixels | uint8 pixels |",
             "|---:|---:|---:|---:|---|---:|---:|"]
    for r in rounding:
        loss = " / ".join(f"{v:.2f}" for v in r["loss"].values())
        lines.append(f"| {r['ipc']} | {r['dm_seconds']:.0f} | {r['moved']:.2f} | {100 * r['below']:.2f}% / "
                     f"{100 * r['above']:.2f}% | {loss} | {_pm(r['accuracy']['float'])} | "
                     f"{_pm(r['accuracy']['uint8'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
