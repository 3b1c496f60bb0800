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
- **Labeler** (``--parts labeler``): the labeler trained with each ``--compare`` augmentation
  (``train_labeler(augmentation=...)``), in float32 and under bfloat16 autocast: its training
  time, how often its argmax on the 25 grid crops of 1,000 held-out test images is the image's
  class (and its mean top-1 probability there), and its test accuracy on whole images.

The ablation's labeler is trained with ``--labeler-augmentation`` (default: the preset's) and
``--labeler-amp`` (bfloat16 autocast, on a CPU too). Every training uses the ``cpu`` preset (width 64, 5 crops per image per step) with
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
import os
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ladd_format import keep_freed_memory  # noqa: E402
from ladd_format import open as open_container  # noqa: E402
from ladd_format.labeler import AUGMENTATIONS, augment, label_crops, load_labeler, train_labeler  # noqa: E402
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


def _crop_agreement(labeler, images, labels) -> tuple[float, float]:
    """Fraction of the grid crops whose argmax is the image's class, and the mean top-1 probability."""
    dense = label_crops(images, labeler, progress=False)  # [M, n*n, K]
    return float((dense.argmax(-1) == labels[:, None]).mean()), float(dense.max(-1).mean())


def _labelers(source, args: argparse.Namespace) -> list[dict]:
    """One freshly trained cpu-preset labeler per augmentation and precision, measured."""
    pick = np.sort(np.random.default_rng(0).choice(len(source.test_labels), 1000, replace=False))
    rows = []
    for aug in args.compare.split(","):
        for bf16 in (False, True):
            t = time.perf_counter()
            lab = train_labeler(source, preset="cpu", augmentation=aug, amp=bf16, cpu_amp=bf16, reuse=False,
                                device=args.device, progress=not args.quiet)
            seconds = time.perf_counter() - t
            agree, top = _crop_agreement(lab, source.test_images[pick], source.test_labels[pick])
            acc = evaluate(lab.model, source.test_images, source.test_labels, lab.config.mean, lab.config.std)
            rows.append({"augmentation": aug, "bf16": bf16, "seconds": seconds, "crop_agreement": agree,
                         "crop_top1_prob": top, "test_accuracy": acc, "load": os.getloadavg()})
            print(rows[-1], flush=True)
    return rows


def _containers(source, ages: list[int], parts: set[str], args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Train (or reuse) the labeler, then label the IPC images with each checkpoint the parts need:
    the containers and labeler test accuracies by age, and the labeler's training settings."""
    labeler_dir = args.work / "labeler"
    training = train_labeler(source, preset="cpu", epochs=max(ages), out_dir=labeler_dir, device=args.device,
                             augmentation=args.labeler_augmentation, cpu_amp=args.labeler_amp,
                             progress=not args.quiet).config.training
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
    return containers, labeler_acc, training


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="test-model epochs (default: the cpu preset's 200)")
    ap.add_argument("--ages", default="1,3,5,10", help="labeler checkpoints (epochs), comma-separated")
    ap.add_argument("--parts", default="ablation,age", help="comma-separated: ablation, age, labeler")
    ap.add_argument("--labeler-augmentation", choices=AUGMENTATIONS, default=None,
                    help="the ablation's labeler augmentation (default: the cpu preset's)")
    ap.add_argument("--labeler-amp", action="store_true",
                    help="train the ablation's labeler under bfloat16 autocast on a CPU too (always on CUDA)")
    ap.add_argument("--compare", default=",".join(AUGMENTATIONS), help="augmentations the labeler part compares")
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
    load = [os.getloadavg()]
    out = {"started": started, "settings": vars(args) | {"work": str(args.work), "out": str(args.out)}}
    lines = ["# Ablation (Table 6) and labeler age (Fig. 5), Fashion-MNIST", "",
             f"Command: `python benchmarks/ablation.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ",
             f"Run: {started}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"device {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}", ""]
    if "labeler" in parts:
        rows = _labelers(source, args)
        out["labeler"] = rows
        lines += ["## Labeler", "", "| augmentation | bf16 | training (s) | crop argmax = class | mean top-1 prob "
                  "(crops) | test accuracy, whole images (%) |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['augmentation']} | {r['bf16']} | {r['seconds']:.1f} | {100 * r['crop_agreement']:.1f}% | "
                  f"{r['crop_top1_prob']:.3f} | {100 * r['test_accuracy']:.2f} |" for r in rows]
        lines += ["", "cpu preset (width 64, 10 epochs, 6,000 train images). Crops: the 25 grid crops (n 5, ratio "
                      "0.625) of 1,000 test images (seeded pick).", ""]
    if parts & {"ablation", "age"}:
        containers, labeler_acc, training = _containers(source, ages, parts, args)
        lines += [f"Settings: IPC {args.ipc} random-real images (seed 0); ConvNet labeler, cpu preset (width 64, "
                  f"6,000 train images), {max(ages)} epochs, augmentation {json.dumps(training['augmentation'])}, "
                  f"bf16 {training['amp']}; test ConvNets with the cpu preset ({args.epochs or 200} epochs, 5 crops "
                  f"per image per step), {args.seeds} seeds; mean ± std test accuracy.", ""]
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
    load.append(os.getloadavg())
    lines.append(f"Wall time: {time.perf_counter() - t0:.0f} s. Load average (1, 5, 15 min) at the start "
                 f"{', '.join(f'{v:.2f}' for v in load[0])}, at the end {', '.join(f'{v:.2f}' for v in load[1])}.")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
