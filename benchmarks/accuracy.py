"""Baseline vs baseline++ vs LADD on Fashion-MNIST at several IPCs, seeds and architectures.

    python benchmarks/accuracy.py --ipc 1 10 50 --seeds 3 --models convnet [--epochs 300] \\
        [--device cuda] [--json results.json] [--markdown table.md]

One labeler (ConvNet, SGD lr 0.01, batch 256, 10 epochs on the whole train split unless
--labeler-images) serves every IPC. The "distilled" images are a seeded random-real
selection; baseline and LADD use the first IPC of the IPC + 1 per class that baseline++ uses.
Every row is written to --json as soon as it is known, so a run cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from ladd_format.demo import DemoSettings, compare
from ladd_format.labeler import train_labeler
from ladd_format.sources import fashion_mnist


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| IPC | model | method | labels | test accuracy (%) | bytes | overhead |",
             "|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        acc = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        labels = "dense" if r["labels"] == "ladd" else r["labels"]
        lines.append(f"| {r['ipc_setting']} | {r['model']} | {r['method']} | {labels} | {acc} | "
                     f"{r['bytes']:,} | {r['overhead_percent']:+.1f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["convnet"])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--width", type=int, default=128, help="ConvNet width of the test models")
    ap.add_argument("--crops", default="all", help="crops per image per step: all or k")
    ap.add_argument("--labeler-width", type=int, default=128)
    ap.add_argument("--labeler-epochs", type=int, default=10)
    ap.add_argument("--labeler-images", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    started = time.perf_counter()
    source = fashion_mnist()
    labeler = train_labeler(source, width=args.labeler_width, epochs=args.labeler_epochs,
                            train_images=args.labeler_images, device=device, progress=not args.quiet)
    crops = args.crops if args.crops == "all" else int(args.crops)
    report = {"command": "python benchmarks/accuracy.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else " " + (" ".join(map(str, v)) if isinstance(v, list) else str(v)))
        for k, v in vars(args).items() if v not in (None, False) and k not in ("json", "markdown")),
        "device": card, "torch": torch.__version__, "labeler_sha256": labeler.checkpoint_sha256, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for ipc in args.ipc:
            for model in args.models:
                settings = DemoSettings.from_preset("paper", ipc=ipc, seeds=args.seeds,
                                                    train={"width": args.width, "epochs": args.epochs,
                                                           "crops_per_image": crops})
                rows, _ = compare(Path(tmp) / f"ipc{ipc}", source, labeler, settings, model=model,
                                  device=device, progress=not args.quiet)
                for row in rows:
                    row["ipc_setting"] = ipc
                    report["rows"].append(row)
                    print(f"IPC {ipc:3d} {model:9s} {row['method']:11s} "
                          f"{100 * row['accuracy_mean']:6.2f} +/- {100 * row['accuracy_std']:.2f}  "
                          f"{row['bytes']:>10,d} B  {row['overhead_percent']:+7.1f}%", flush=True)
                report["seconds"] = time.perf_counter() - started
                if args.json:
                    args.json.write_text(json.dumps(report, indent=1))
    header = (f"Fashion-MNIST, {args.seeds} seeds, {args.epochs} epochs, on {card} "
              f"({report['seconds']:.0f} s). Command: `{report['command']}`")
    table = markdown(report["rows"], header)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
