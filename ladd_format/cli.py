"""The ``ladd`` command line: inspect, validate, pack, example."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ._pack import pack
from ._read import LaddDataset
from ._read import open as open_container
from .errors import LaddError
from .testing import write_example


def summary(ds: LaddDataset) -> dict[str, Any]:
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
    print(f"  dense       {enc['encoding']} {enc['values']} (temperature {enc['temperature']})")
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
        s = summary(ds)
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
