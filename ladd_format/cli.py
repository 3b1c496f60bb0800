"""The ``ladd`` command line: inspect, validate, pack, example, demo, train-labeler, augment, train,
show, import, export, overhead, encode."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._pack import pack
from ._read import LaddDataset
from ._read import open as open_container
from ._cli_args import add_labeling_options
from .errors import LaddError
from .importers import register_cli as register_import_export
from .storage import register_cli as register_storage
from .testing import write_example


def _summary(ds: LaddDataset) -> dict[str, Any]:
    """What ``ladd inspect`` reports, as a JSON-ready dict."""
    m = ds.manifest
    stored = ds.stored_bytes()
    base = stored["images"] + stored["labels"]
    dense = sum(v for k, v in stored.items() if k not in ("images", "labels"))
    counts = ds.class_counts
    return {
        "location": ds.location,
        "format_version": m.format_version,
        "created_by": m.created_by,
        "num_images": m.num_images,
        "num_classes": m.num_classes,
        "image": {"height": m.image.height, "width": m.image.width, "channels": m.image.channels,
                  "mean": m.image.mean, "std": m.image.std},
        "ipc": ds.ipc,
        "images_per_class": {name: int(c) for name, c in zip(m.class_names, counts)},
        "sampler": m.sampler.model_dump(mode="json"),
        "dense_labels": m.dense_labels.model_dump(mode="json"),
        "labeler": m.labeler.model_dump(mode="json"),
        "distillation": m.distillation.model_dump(mode="json"),
        "stored_bytes": stored,
        "dense_overhead_percent": round(100.0 * dense / base, 3),
    }


def _print_summary(s: dict[str, Any]) -> None:
    img = s["image"]
    smp = s["sampler"]
    enc = s["dense_labels"]
    print(f"{s['location']}  (LADD format {s['format_version']}, {s['created_by']})")
    print(f"  images      {s['num_images']} x {img['height']}x{img['width']}x{img['channels']} uint8, "
          f"mean {_fmt(img['mean'])} std {_fmt(img['std'])}")
    ipc = s["ipc"] if s["ipc"] is not None else "unbalanced"
    print(f"  classes     {s['num_classes']}, images per class: {ipc}")
    per_class = ", ".join(f"{k}={v}" for k, v in s["images_per_class"].items())
    print(f"              {per_class if len(per_class) < 400 else per_class[:400] + ' ...'}")
    print(f"  sampler     {smp['kind']} n={smp['n']} ({smp['n'] ** 2} crops) ratio={smp['ratio']} "
          f"rounding={smp['rounding']} resize={smp['resize']}")
    params = f" {enc['params']}" if enc["params"] else ""
    print(f"  dense       {enc['encoding']}{params} {enc['values']} (temperature {enc['temperature']})")
    lab, dis = s["labeler"], s["distillation"]
    print(f"  labeler     {lab['architecture']}, {lab['epochs']} epochs, on {lab['source_dataset']}")
    print(f"  distilled   {dis['method']} on {dis['source_dataset']}, ipc {dis['ipc']}")
    for name, size in s["stored_bytes"].items():
        print(f"  {name:12s}{size:>14,d} bytes stored")
    print(f"  dense-label overhead {s['dense_overhead_percent']:.2f}% of images + hard labels")


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def _cmd_inspect(args: argparse.Namespace) -> int:
    with open_container(args.path, verify=args.verify) as ds:
        s = _summary(ds)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        _print_summary(s)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    with open_container(args.path, verify=True) as ds:
        print(f"valid: {args.path} ({len(ds)} images, {ds.num_classes} classes, every digest checked)")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    out = pack(args.source, args.target, overwrite=args.overwrite)
    print(f"packed {args.source} -> {out}")
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    out = write_example(args.path, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote synthetic example container {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, format_table, run_demo

    overrides = {k: v for k, v in (("ipc", args.ipc), ("seeds", args.seeds), ("epochs", args.epochs)) if v is not None}
    settings = DemoSettings.full(**overrides) if args.full else DemoSettings.reduced(**overrides)
    kind = "full (the paper's settings)" if args.full else "reduced for a CPU (--full for the paper's)"
    print(f"ladd demo on Fashion-MNIST, {kind}:")
    for key, value in dataclasses.asdict(settings).items():
        print(f"  {key:16s} {value}")
    report = run_demo(args.out, settings, device=args.device)
    print()
    print(format_table(report))
    print(f"\ncontainer: {report['container']}  (ladd inspect / ladd show it)")
    print(f"results:   {Path(args.out) / 'results.json'}  ({report['seconds']:.0f} s)")
    return 0


def _cmd_train_labeler(args: argparse.Namespace) -> int:
    from .labeler import train_labeler
    from .sources import load_source

    labeler = train_labeler(load_source(args.source), epochs=args.epochs, width=args.width,
                            train_subset=args.images, out_dir=args.out, device=args.device, seed=args.seed)
    print(f"labeler checkpoints in {args.out}; last: epoch_{labeler.epochs:02d}.pt "
          f"(sha256 {labeler.checkpoint_sha256})")
    return 0


def _cmd_augment(args: argparse.Namespace) -> int:
    from .labeler import augment, load_labeler
    from .sampler import UniformSampler
    from .sources import load_source, random_real

    labeler = load_labeler(args.labeler, device=args.device)
    sampler = UniformSampler(args.n, args.ratio)
    if args.source_container:
        with open_container(args.source_container) as src:
            images, labels = np.asarray(src.images), src.labels
            names, distillation = src.class_names, src.manifest.distillation.model_dump(mode="json")
    else:
        source = load_source(args.random_real)
        images, labels, index = random_real(source, args.ipc, seed=args.seed)
        names = list(source.class_names)
        distillation = {"method": "random-real", "source_dataset": source.name, "ipc": args.ipc,
                        "details": {"seed": args.seed, "train_indices": index.tolist()}}
    out = augment(args.out, images, labels, labeler, sampler=sampler, temperature=args.temperature,
                  distillation=distillation, class_names=names, encoding=args.encoding, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .sources import load_source
    from .train import cross_architecture

    source = load_source(args.test_source)
    with open_container(args.path) as ds:
        indices = ds.balanced_indices(args.ipc) if args.ipc else None
        view = ds.subset(indices) if indices is not None else ds
        rows = cross_architecture(view, source.test_images, source.test_labels, models=tuple(args.model.split(",")),
                                  seeds=args.seeds, mode=args.mode, epochs=args.epochs, lr=args.lr,
                                  batch_size=args.batch_size, crops_per_image=_crops(args.crops),
                                  width=args.width, device=args.device)
    print(f"{'model':10s} {'mode':10s} {'test accuracy (%)':>20s}")
    for r in rows:
        print(f"{r['model']:10s} {r['mode']:10s} {100 * r['accuracy_mean']:>11.2f} +/- {100 * r['accuracy_std']:.2f}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .show import save_render

    with open_container(args.path) as ds:
        out = save_render(ds, args.index, args.output)
    print(f"wrote {out}")
    return 0


def _crops(value: str) -> int | str:
    return value if value == "all" else int(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ladd", description="Label-augmented distilled dataset containers.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="summarise a container")
    s.add_argument("path")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.add_argument("--verify", action="store_true", help="also recompute every digest")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("validate", help="check a container fully; exit 0 when valid")
    s.add_argument("path")
    s.set_defaults(func=_cmd_validate)

    s = sub.add_parser("pack", help="pack a container directory into one .ladd.zip file")
    s.add_argument("source")
    s.add_argument("target")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_pack)

    s = sub.add_parser("example", help="write a small synthetic container to try the tools on")
    s.add_argument("path")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_example)

    s = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST, ending in an accuracy table")
    s.add_argument("--out", default="out/demo", help="folder for the container, labeler and results")
    s.add_argument("--ipc", type=int)
    s.add_argument("--seeds", type=int, help="trainings per method (mean +/- std when > 1)")
    s.add_argument("--epochs", type=int, help="epochs per test-model training")
    s.add_argument("--full", action="store_true", help="the paper's settings (meant for a GPU)")
    s.add_argument("--device")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("train-labeler", help="train a ConvNet labeler on a source dataset")
    s.add_argument("--source", default="fashion-mnist", help="fashion-mnist or a folder")
    s.add_argument("--out", required=True, help="checkpoint folder (epoch_XX.pt per epoch)")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--width", type=int)
    s.add_argument("--images", type=int, help="train on a seeded subset of this many images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device")
    s.set_defaults(func=_cmd_train_labeler)

    s = sub.add_parser("augment", help="label every crop of distilled images and write a container")
    s.add_argument("labeler", help="a checkpoint written by train-labeler (epoch_XX.pt)")
    s.add_argument("out")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source_container", help="relabel the images of this container")
    src.add_argument("--random-real", help="use IPC random real images of this source (fashion-mnist or a folder)")
    s.add_argument("--ipc", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    add_labeling_options(s)
    s.set_defaults(func=_cmd_augment)

    s = sub.add_parser("train", help="train and test models on a container (mean +/- std over seeds)")
    s.add_argument("path")
    s.add_argument("--test-source", default="fashion-mnist", help="where the real test split comes from")
    s.add_argument("--mode", default="ladd", choices=["ladd", "hard", "soft", "crops-only"])
    s.add_argument("--model", default="convnet", help="comma-separated: convnet,alexnet,vgg11,resnet18,vit")
    s.add_argument("--seeds", type=int, default=1)
    s.add_argument("--epochs", type=int, default=300)
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--crops", default="all", help="crops per image per step: all or k")
    s.add_argument("--width", type=int)
    s.add_argument("--ipc", type=int, help="train on the first IPC images of each class only")
    s.add_argument("--device")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("show", help="draw an image beside its crops and their dense labels (PNG)")
    s.add_argument("path")
    s.add_argument("--index", type=int, default=0)
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_cmd_show)

    register_import_export(sub)
    register_storage(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LaddError as exc:
        print(f"ladd {args.command}: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
