"""The paper's ablation (Table 6) and labeler age (Fig. 5) on Fashion-MNIST.

    python benchmarks/ablation.py --ipc 10 --seeds 3 --out benchmarks/results/ablation.md

- **Ablation**: one LADD container (random-real IPC images labelled by the last labeler
  checkpoint), trained in each of the trainer's modes: full images with hard labels
  (``hard``), full images with soft labels (``soft``, each image's mean dense label), crops
  with dense labels (``crops-only``), and both (``ladd``, Eq. 5). The paper's ordering:
  crops-only > soft > hard.
- **Labeler age**: the same images labelled by the labeler's checkpoints after ``--ages``
  epochs of one training run (``train_labeler`` saves one a epoch), each trained in mode
  ``ladd``; the labeler's own test accuracy beside it, since the paper's point is that a
  better labeler is not always a better teacher.

Every training uses the ``cpu`` preset (width 64, 5 crops per image per step) with
``--epochs`` (default the preset's 200) and ``--seeds`` seeds; figures are mean ± std test
accuracy over the seeds on the Fashion-MNIST test split.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ladd_format import keep_freed_memory  # noqa: E402
from ladd_format import open as open_container  # noqa: E402
from ladd_format.labeler import augment, load_labeler, train_labeler  # noqa: E402
from ladd_format.sources import fashion_mnist, random_real  # noqa: E402
from ladd_format.train import cross_architecture, evaluate  # noqa: E402

MODES = ("hard", "soft", "crops-only", "ladd")


def _acc(row: dict) -> str:
    return f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}"


def _train(path: Path, source, mode: str, args: argparse.Namespace) -> dict:
    with open_container(path) as ds:
        return cross_architecture(ds, source.test_images, source.test_labels, models=("convnet",),
                                  seeds=args.seeds, mode=mode, preset="cpu", epochs=args.epochs,
                                  device=args.device, progress=not args.quiet)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="test-model epochs (default: the cpu preset's 200)")
    ap.add_argument("--ages", default="1,3,5,10", help="labeler checkpoints (epochs), comma-separated")
    ap.add_argument("--parts", default="ablation,age", help="ablation, age or both")
    ap.add_argument("--work", type=Path, default=Path("out/ablation"), help="labeler and containers (reused)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    keep_freed_memory()
    ages = sorted({int(a) for a in args.ages.split(",") if a})
    parts = {p.strip() for p in args.parts.split(",")}
    started, t0 = datetime.datetime.now().astimezone().isoformat(timespec="seconds"), time.perf_counter()
    source = fashion_mnist()
    labeler_dir = args.work / "labeler"
    train_labeler(source, preset="cpu", epochs=max(ages), out_dir=labeler_dir, device=args.device,
                  progress=not args.quiet)
    images, labels, _ = random_real(source, args.ipc, seed=0)
    containers, labeler_acc = {}, {}
    for age in ages if "age" in parts else [max(ages)]:
        labeler = load_labeler(labeler_dir / f"epoch_{age:02d}.pt", device=args.device)
        info = labeler.config
        labeler_acc[age] = evaluate(labeler.model, source.test_images, source.test_labels, info.mean, info.std)
        containers[age] = augment(args.work / f"ipc{args.ipc}_labeler{age:02d}.ladd", images, labels, labeler,
                                  distillation={"method": "random-real", "source_dataset": source.name,
                                                "ipc": args.ipc, "details": {"seed": 0}},
                                  overwrite=True, progress=not args.quiet)
    out = {"started": started, "settings": vars(args) | {"work": str(args.work), "out": str(args.out)}}
    lines = ["# Ablation (Table 6) and labeler age (Fig. 5), Fashion-MNIST", "",
             f"Command: `python benchmarks/ablation.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ",
             f"Run: {started}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"device {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}  ",
             f"Settings: IPC {args.ipc} random-real images (seed 0); ConvNet labeler, cpu preset (width 64, "
             f"6,000 train images), {max(ages)} epochs; test ConvNets with the cpu preset "
             f"({args.epochs or 200} epochs, 5 crops per image per step), {args.seeds} seeds; mean ± std test accuracy.", ""]
    if "ablation" in parts:
        rows = {mode: _train(containers[max(ages)], source, mode, args) for mode in MODES}
        out["ablation"] = rows
        lines += ["## Ablation", "", "| trained on | mode | test accuracy (%) |", "|---|---|---:|"]
        names = {"hard": "full images, hard labels", "soft": "full images, soft labels (mean dense label)",
                 "crops-only": "crops, dense labels", "ladd": "full images + crops (Eq. 5)"}
        lines += [f"| {names[m]} | {m} | {_acc(r)} |" for m, r in rows.items()]
        order = sorted(("hard", "soft", "crops-only"), key=lambda m: rows[m]["accuracy_mean"], reverse=True)
        lines += ["", f"Ordering measured: {' > '.join(order)} (the paper's: crops-only > soft > hard)", ""]
    if "age" in parts:
        rows = {age: _train(containers[age], source, "ladd", args) for age in ages}
        out["age"] = {str(a): {**r, "labeler_accuracy": labeler_acc[a]} for a, r in rows.items()}
        lines += ["## Labeler age", "", "| labeler epochs | labeler test accuracy (%) | LADD test accuracy (%) |",
                  "|---:|---:|---:|"]
        lines += [f"| {a} | {100 * labeler_acc[a]:.2f} | {_acc(r)} |" for a, r in rows.items()]
        best = max(rows, key=lambda a: rows[a]["accuracy_mean"])
        lines += ["", f"Best teacher: the labeler after {best} epochs; spread of the means "
                      f"{100 * (max(r['accuracy_mean'] for r in rows.values()) - min(r['accuracy_mean'] for r in rows.values())):.2f} "
                      f"points against a mean std of {100 * statistics.mean(r['accuracy_std'] for r in rows.values()):.2f}.", ""]
    lines.append(f"Wall time: {time.perf_counter() - t0:.0f} s.")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
