"""Baseline vs baseline++ vs LADD on Fashion-MNIST at several IPCs, seeds and architectures.

    python benchmarks/accuracy.py --ipc 1 10 50 --seeds 3 --models convnet [--epochs 300] \\
        [--device cuda] [--json results.json] [--markdown table.md]
    OMP_NUM_THREADS=1 python benchmarks/accuracy.py --preset cpu --ipc 10 --seeds 3 \\
        --models convnet alexnet vgg11 resnet18 vit --model-epochs alexnet=10 vgg11=10 resnet18=5 vit=3 \\
        --test-images 2000 --labeler-dir /tmp/labeler --quiet   (benchmarks/results/architectures_cpu.md)

One labeler (ConvNet, SGD lr 0.01, batch 256) serves every IPC and model. ``--preset`` sizes
the labeler and the test models (ladd_format.presets): ``paper`` (the default) is width 128,
the labeler 10 epochs on the whole train split and all 25 crops per image per step, with 300
epochs (this script's default since it was written; the preset itself says 1,000: pass
--epochs 1000); ``cpu`` is width 64, the labeler 10 epochs on 6,000 images, 200 epochs and 5
crops per image per step. Explicit flags override the preset; ``--model-epochs NAME=E``
overrides the epochs for one model, ``--model-lr NAME=LR`` its learning rate (VGG11 on the LADD
loss diverges at the field's 0.01 and trains at 0.005: benchmarks/results/vgg11_ladd_lr.md).
``--width`` is a ConvNet knob (the other networks have fixed sizes). The labeler and train
keywords are the demo's (``DemoSettings.from_preset``), so ``--cpu-amp auto`` (the default)
uses bfloat16 autocast on a CPU with AMX units as ``ladd demo`` does; on CUDA the test models
train under bfloat16 autocast unless ``--no-amp``.
``--test-images N`` tests on a seeded subset of the test split (evaluating the larger networks
on all 10,000 images costs minutes each on a CPU); ``--labeler-dir`` keeps the labeler and
reuses it in a later run with the same settings. The settings used are printed and written to
the JSON and the markdown header, with the seconds per model and the load average.

The "distilled" images are a seeded random-real selection; baseline and LADD use the first IPC
of the IPC + 1 per class that baseline++ uses. Every row is written to --json as soon as it is
known, so a run cut short keeps its rows; ``--resume`` keeps them and trains only the (IPC,
model) pairs the JSON lacks, so a protocol longer than one sitting (the paper preset on a GPU
whose sessions are short) runs in pieces, on the same labeler (``--labeler-dir``) and settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ladd_format.demo import _TRAIN_DEFAULTS, DemoSettings, compare
from ladd_format.labeler import train_labeler
from ladd_format.presets import PRESETS
from ladd_format.sources import fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import device_name  # noqa: E402  (benchmarks/_machine.py)

PAPER_SCRIPT_EPOCHS = 300
"""The epochs under ``--preset paper`` when --epochs is not given (the script's historical default)."""


def _per_model(items: list[str], flag: str, cast: type, models: list[str], default: float) -> dict[str, float]:
    """Each of ``models`` with its value: the one ``flag`` gives it (``NAME=VALUE``, a positive
    finite ``cast``), else ``default``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = cast(value)
        except ValueError:
            number = None
        if not sep or number is None or not (number > 0 and math.isfinite(number)):
            raise SystemExit(f"{flag} takes NAME=VALUE with a positive finite {cast.__name__} VALUE, got {item!r}")
        out[name.lower()] = number
    unknown = set(out) - {m.lower() for m in models}
    if unknown:
        raise SystemExit(f"{flag} names models not in --models: {', '.join(sorted(unknown))}")
    return {m: out.get(m.lower(), default) for m in models}


_PROTOCOL = ("preset", "seeds", "labeler", "train", "test_images")
"""The settings a resumed run must share with the JSON it extends (device, threads, IPCs and
models may differ: each row says its own)."""


def _resumed(path: Path, settings: dict) -> dict | None:
    """The report at ``path`` if it was made with these settings, else exit naming the ones that differ."""
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    differ = [k for k in _PROTOCOL if old["settings"].get(k) != settings[k]]
    if differ:
        raise SystemExit(f"--resume: {path} was made with other settings ({', '.join(differ)})")
    return old


def _load() -> str:
    try:
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def settings_lines(s: dict) -> list[str]:
    """The settings as markdown-ready lines."""
    lab = s["labeler"]
    per_model = ", ".join(f"{m} {e}" for m, e in s["epochs_per_model"].items())
    lrs = s["lr_per_model"]
    lr = (s["train"]["lr"] if len(set(lrs.values()) | {s["train"]["lr"]}) == 1 else
          f"{s['train']['lr']} ({', '.join(f'{m} {v}' for m, v in lrs.items() if v != s['train']['lr'])})")
    other = "".join(f", {k} {v}" for k, v in lab.items()
                    if k not in ("width", "epochs", "train_images", "amp", "cpu_amp"))
    return [f"preset {s['preset']}; device {s['device']}; torch {s['torch']}; threads {s['threads']}",
            f"labeler: ConvNet width {lab['width']}, {lab['epochs']} epochs on "
            f"{'all 60,000' if lab['train_images'] is None else format(lab['train_images'], ',')} train images"
            + other,
            f"test models: IPC {', '.join(map(str, s['ipc']))}, {s['seeds']} seeds, epochs per model: {per_model}; "
            f"ConvNet width {s['train']['width']} (other networks have fixed sizes); "
            f"crops per image per step {s['train']['crops_per_image']}; lr {lr}, "
            f"batch {s['train']['batch_size']}, augment {s['train']['augment']}",
            f"autocast: {s['amp']}",
            "test split: " + ("all 10,000 test images" if s["test_images"] >= 10_000 else
                              f"a seeded subset of {s['test_images']:,} of the 10,000 test images (seed 0), "
                              "the same for every model, method and seed")]


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
    ap.add_argument("--preset", choices=tuple(PRESETS), default="paper",
                    help="sizes of the labeler and test models (explicit flags override it)")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["convnet"])
    ap.add_argument("--epochs", type=int, default=None,
                    help=f"test-model epochs (cpu preset 200; paper {PAPER_SCRIPT_EPOCHS} here)")
    ap.add_argument("--model-epochs", nargs="+", default=[], metavar="NAME=EPOCHS",
                    help="epochs for one model, overriding --epochs (e.g. vit=100)")
    ap.add_argument("--model-lr", nargs="+", default=[], metavar="NAME=LR",
                    help="learning rate for one model, overriding the preset's (e.g. vgg11=0.005)")
    ap.add_argument("--width", type=int, default=None, help="ConvNet width of the test models")
    ap.add_argument("--crops", default=None, help="crops per image per step: all or k")
    ap.add_argument("--labeler-width", type=int, default=None)
    ap.add_argument("--labeler-epochs", type=int, default=None)
    ap.add_argument("--labeler-images", type=int, default=None, help="train images of the labeler (0: all)")
    ap.add_argument("--labeler-dir", type=Path, default=None,
                    help="keep the labeler's checkpoints here and reuse a finished one with the same settings")
    ap.add_argument("--test-images", type=int, default=None,
                    help="test on a seeded subset of this many test images (default: all 10,000)")
    ap.add_argument("--cpu-amp", choices=("auto", "on", "off"), default="auto",
                    help="bfloat16 autocast on a CPU (auto: where the CPU has AMX units, as ladd demo)")
    ap.add_argument("--no-amp", action="store_true",
                    help="train the test models in float32 on CUDA too (the labeler keeps the demo's setting)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of --json (same settings and labeler) and train only the pairs it lacks")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    if args.resume and args.json is None:
        raise SystemExit("--resume needs --json (the report to extend)")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    card = device_name(device)
    explicit_lab = {k: v for k, v in (("width", args.labeler_width), ("epochs", args.labeler_epochs)) if v is not None}
    if args.labeler_images is not None:
        explicit_lab["train_images"] = args.labeler_images or None
    explicit_train = {k: v for k, v in (("epochs", args.epochs), ("width", args.width)) if v is not None}
    if args.preset == "paper":
        explicit_train.setdefault("epochs", PAPER_SCRIPT_EPOCHS)
    # what the demo uses (its defaults, the preset, then the explicit flags): train_labeler and train keywords
    demo = DemoSettings.from_preset(args.preset, labeler=explicit_lab, train=explicit_train)
    lab, train = dict(demo.labeler), dict(demo.train)
    if args.crops is not None:
        train["crops_per_image"] = args.crops if args.crops == "all" else int(args.crops)
    if args.cpu_amp != "auto":
        train["cpu_amp"] = lab["cpu_amp"] = args.cpu_amp == "on"
    if args.no_amp:
        train["amp"], train["cpu_amp"] = False, False
    epochs_per_model = _per_model(args.model_epochs, "--model-epochs", int, args.models, train["epochs"])
    lr_per_model = _per_model(args.model_lr, "--model-lr", float, args.models, train["lr"])
    cuda = device.type == "cuda"
    test_amp = train.get("amp", True) and (cuda or train["cpu_amp"])
    labeler_amp = lab.get("amp", True) and (cuda or lab["cpu_amp"])
    kind = "CUDA autocast" if cuda else "cpu_amp, CPU autocast"
    amp = (f"test models {'bfloat16 (' + kind + ')' if test_amp else 'float32'}; "
           f"labeler {'bfloat16 (' + kind + ')' if labeler_amp else 'float32'}"
           + ("" if cuda else f"; this CPU has {'' if _TRAIN_DEFAULTS['cpu_amp'] else 'no '}AMX units"))
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    settings = {"preset": args.preset, "device": f"{device.type} ({card})", "torch": torch.__version__,
                "threads": torch.get_num_threads(), "ipc": args.ipc, "seeds": args.seeds, "labeler": lab,
                "train": train, "epochs_per_model": epochs_per_model, "lr_per_model": lr_per_model, "amp": amp,
                "test_images": args.test_images or 10_000}
    for line in settings_lines(settings):
        print(line, flush=True)
    print(f"start {started_at}, {_load()}", flush=True)
    old = _resumed(args.json, settings) if args.resume else None

    started = time.perf_counter()
    source = fashion_mnist()
    if args.test_images is not None and args.test_images < len(source.test_labels):
        keep = np.sort(np.random.default_rng(0).permutation(len(source.test_labels))[:args.test_images])
        source = dataclasses.replace(source, test_images=source.test_images[keep],
                                     test_labels=source.test_labels[keep])
    labeler = train_labeler(source, **lab, out_dir=args.labeler_dir, device=device, progress=not args.quiet)
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else " " + (" ".join(map(str, v)) if isinstance(v, list)
                                                                     else str(v)))
             for k, v in vars(args).items() if v not in (None, False, []) and k not in ("json", "markdown")]
    report = {"command": "python benchmarks/accuracy.py " + " ".join(flags),
        "device": card, "torch": torch.__version__, "settings": settings, "started": started_at,
        "load_start": _load(), "labeler_sha256": labeler.checkpoint_sha256, "labeler_reused": labeler.reused,
        "labeler_seconds": time.perf_counter() - started, "model_seconds": {}, "rows": []}
    print(f"labeler: {report['labeler_seconds']:.0f} s" + (f" (reused from {args.labeler_dir})" if labeler.reused
                                                           else ""), flush=True)
    if old is not None:
        if old["labeler_sha256"] != labeler.checkpoint_sha256:
            raise SystemExit(f"--resume: {args.json} was made with another labeler (sha256 "
                             f"{old['labeler_sha256'][:12]}...); pass the --labeler-dir that holds it")
        for key, field in (("epochs_per_model", "epochs"), ("lr_per_model", "lr")):  # what the kept rows ran
            settings[key] = {**settings[key], **{r["model"]: r.get(field, train[field]) for r in old["rows"]}}
        settings["ipc"] = sorted(set(old["settings"]["ipc"]) | set(settings["ipc"]))
        devices = [d for d in old["device"].split(", ") if d != card] + [card]
        report.update(device=", ".join(devices), started=old["started"], load_start=old["load_start"],
                      labeler_seconds=old["labeler_seconds"], model_seconds=old["model_seconds"], rows=old["rows"])
        started -= old["seconds"]
        print(f"resumed {args.json}: {len(old['rows'])} rows, {old['seconds']:.0f} s", flush=True)
    done = {(r["ipc_setting"], r["model"]) for r in report["rows"]}
    with tempfile.TemporaryDirectory() as tmp:
        for ipc in args.ipc:
            for model in args.models:
                if (ipc, model) in done:
                    continue
                t0 = time.perf_counter()
                s = DemoSettings.from_preset(args.preset, ipc=ipc, seeds=args.seeds, labeler=lab,
                                             train={**train, "epochs": epochs_per_model[model],
                                                    "lr": lr_per_model[model]})
                rows, _ = compare(Path(tmp) / f"ipc{ipc}", source, labeler, s, model=model,
                                  device=device, progress=not args.quiet)
                seconds = time.perf_counter() - t0
                report["model_seconds"][f"ipc{ipc}/{model}"] = seconds
                for row in rows:
                    row["ipc_setting"] = ipc
                    row["epochs"] = epochs_per_model[model]
                    row["lr"] = lr_per_model[model]
                    row["device"] = card
                    report["rows"].append(row)
                    print(f"IPC {ipc:3d} {model:9s} {row['method']:11s} "
                          f"{100 * row['accuracy_mean']:6.2f} +/- {100 * row['accuracy_std']:.2f}  "
                          f"{row['bytes']:>10,d} B  {row['overhead_percent']:+7.1f}%  seeds: "
                          + " ".join(f"{100 * a:.2f}" for a in row["accuracies"]), flush=True)
                print(f"IPC {ipc:3d} {model:9s} {seconds:.0f} s ({epochs_per_model[model]} epochs, "
                      f"3 methods x {args.seeds} seeds), {_load()}", flush=True)
                report["seconds"] = time.perf_counter() - started
                report["load_end"] = _load()
                if args.json:
                    args.json.write_text(json.dumps(report, indent=1))
    report["seconds"] = time.perf_counter() - started
    report["load_end"] = _load()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    header = "\n".join([f"Fashion-MNIST, {args.seeds} seeds, on {report['device']} ({report['seconds']:.0f} s; "
                        f"start {report['load_start']}, end {report['load_end']}). "
                        f"Command: `{report['command']}`", ""]
                       + [f"- {line}" for line in settings_lines(settings)]
                       + [f"- labeler {report['labeler_seconds']:.0f} s; seconds per model (3 methods x "
                          f"{args.seeds} seeds): "
                          + ", ".join(f"{k} {v:.0f}" for k, v in report["model_seconds"].items())])
    table = markdown(report["rows"], header)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
