"""The ``ladd`` command line: inspect, validate, pack, example, demo, train-labeler, augment, train,
show, import, export, overhead, encode."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from . import __version__
from ._cli_args import (Parser, add_labeling_options, device_arg, finite_float, positive_float, positive_int,
                        stderr_line)
from ._allocator import keep_freed_memory
from ._pack import pack
from ._read import LaddDataset
from ._read import open as open_container
from .errors import InvalidInputError, LaddError
from .importers import register_cli as register_import_export
from .storage import register_cli as register_storage
from .publish import register_cli as register_publish
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
        "labeler": m.labeler.model_dump(mode="json", exclude=m.labeler.unset_added()),
        "distillation": m.distillation.model_dump(mode="json"),
        "stored_bytes": stored,
        "dense_overhead_percent": round(100.0 * dense / base, 4),
        "verified": None,
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
    trained = f"{lab['epochs']} epochs" if lab["epochs"] is not None else "not trained here"
    print(f"  labeler     {lab['architecture']}, {trained}, on {lab['source_dataset']}"
          + (f", input {lab['input_size'][0]}x{lab['input_size'][1]}" if lab.get("input_size") else "")
          + (f", weights {lab['weights']}" if lab.get("weights") else ""))
    print(f"  distilled   {dis['method']} on {dis['source_dataset']}, ipc {dis['ipc']}")
    for name, size in s["stored_bytes"].items():
        print(f"  {name:12s}{size:>14,d} bytes stored")
    print(f"  overhead    {s['dense_overhead_percent']:+.2f}% (dense labels' on-disk bytes / images + hard labels')")
    print("  digests     " + ("every array's sha256 checked" if s["verified"] else
                            "NOT verified (--no-verify); ladd validate checks them"))


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def _cmd_inspect(args: argparse.Namespace) -> int:
    with open_container(args.path, verify=args.verify) as ds:
        s = _summary(ds)
    s["verified"] = args.verify
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

    preset = "paper" if args.full else args.preset
    settings = DemoSettings.from_preset(preset, ipc=args.ipc, seeds=args.seeds, images=args.images,
                                        dm_iterations=args.dm_iterations,
                                        train={"epochs": args.epochs} if args.epochs else None)
    print(f"ladd demo on Fashion-MNIST, preset {preset!r} ({_preset_text(preset)}):")
    for line in settings.describe():
        print(f"  {line}")
    report = run_demo(args.out, settings, device=args.device)
    print()
    print(format_table(report))
    print(f"\ncontainer: {report['container']}  (ladd inspect / ladd show it)")
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["phase_seconds"].items())
    print(f"results:   {Path(args.out) / 'results.json'}  ({report['seconds']:.0f} s: {phases})")
    return 0


def _preset_text(name: str) -> str:
    from .presets import PRESETS

    return PRESETS[name].description


def _source(path: str, name: str | None):
    from .sources import load_source

    return load_source(path, name=name)


def _cmd_train_labeler(args: argparse.Namespace) -> int:
    from .labeler import train_labeler

    labeler = train_labeler(_source(args.source, args.source_name), epochs=args.epochs, width=args.width,
                            train_images=args.train_images, preset=args.preset, out_dir=args.out,
                            device=args.device, seed=args.seed)
    how = "reused (same settings; delete it to retrain)" if labeler.reused else "trained"
    print(f"labeler {how}: {Path(args.out) / f'epoch_{labeler.epochs:02d}.pt'} "
          f"(sha256 {labeler.checkpoint_sha256})")
    return 0


def _cmd_augment(args: argparse.Namespace) -> int:
    from .distributed import init_from_env, rank_world
    from .labeler import augment
    from .sampler import UniformSampler
    from .sources import random_real
    from .teachers import check_labeler, load_teacher

    if args.labeler and (args.model or args.torchscript):
        raise InvalidInputError(f"two labelers: {args.labeler} and {args.model or args.torchscript}; give one")
    spec = args.model or (f"torchscript:{args.torchscript}" if args.torchscript else args.labeler)
    if spec is None:
        raise InvalidInputError("name the labeler: a train-labeler checkpoint, --model torchvision:NAME "
                                "(with --weights FILE) or --torchscript FILE")
    sampler = UniformSampler(args.n, args.ratio)
    teacher_options = dict(num_classes=args.num_classes, input_size=args.input_size, mean=args.labeler_mean,
                           std=args.labeler_std)
    rank_device = init_from_env(device=args.device)  # under torchrun: join the group, one GPU per local rank
    device = args.device or rank_device
    labeler = load_teacher(spec, weights=args.weights, device=device, **teacher_options)
    with contextlib.ExitStack() as stack:
        if args.source_container:
            src = stack.enter_context(open_container(args.source_container))
            images, labels, names = src.images, src.labels, src.class_names
            distillation = src.manifest.distillation.model_dump(mode="json")
            stats = {"mean": src.manifest.image.mean, "std": src.manifest.image.std}
        else:
            source = _source(args.random_real, args.source_name)
            images, labels, index = random_real(source, args.ipc, seed=args.seed)
            names = list(source.class_names)
            distillation = {"method": "random-real", "source_dataset": source.name, "ipc": args.ipc,
                            "details": {"seed": args.seed, "train_indices": index.tolist()}}
            stats = {"mean": list(source.mean), "std": list(source.std)}
        check_labeler(labeler, num_classes=len(names), in_channels=images.shape[3])
        out = augment(args.out, images, labels, labeler, sampler=sampler, temperature=args.temperature,
                      distillation=distillation, class_names=names, encoding=args.encoding,
                      overwrite=args.overwrite, **stats)
    if rank_world()[0] == 0:
        print(f"wrote {out}" + (f" ({rank_world()[1]} ranks)" if rank_world()[1] > 1 else ""))
    return 0


def _pair(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(positive_int(p) for p in parts)
    except argparse.ArgumentTypeError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected H,W (or one side) as integers >= 1, got {text!r}")
    return values  # type: ignore[return-value]


def _floats(text: str) -> list[float]:
    return [finite_float(p) for p in text.split(",")]


def _cmd_train(args: argparse.Namespace) -> int:
    from ._torch import cpu_bf16_units, resolve_device
    from .distributed import init_from_env, rank_world
    from .train import check_models, check_test_set, cross_architecture

    rank_device = init_from_env(device=args.device)  # under torchrun: join the group, one GPU per local rank
    models = tuple(m.strip() for m in args.model.split(",") if m.strip())
    with open_container(args.path) as ds:
        source = _test_source(args, ds)
        check_test_set(ds, source.test_images, source.test_labels)
        check_models(ds, models, width=args.width)
        crops = args.crops
        if isinstance(crops, int) and crops > ds.manifest.sampler.num_crops:
            raise InvalidInputError(f"--crops {crops}: the container's grid has {ds.manifest.sampler.num_crops} "
                                    "crops per image")
        view = ds.subset(ds.balanced_indices(args.ipc)) if args.ipc else ds
        device = resolve_device(args.device or rank_device)
        bf16 = device.type in ("cuda", "cpu") and (args.precision == "bfloat16" or (
            args.precision == "auto" and (device.type == "cuda" or cpu_bf16_units())))
        rows = cross_architecture(view, source.test_images, source.test_labels, models=models,
                                  seeds=args.seeds, mode=args.mode, epochs=args.epochs, lr=args.lr,
                                  batch_size=args.batch_size, crops_per_image=crops, preset=args.preset,
                                  width=args.width, device=device, amp=bf16, cpu_amp=bf16,
                                  eval_amp=bf16 and device.type == "cpu",  # as the demo: a CPU tests in it too
                                  channels_last=args.channels_last,
                                  compile=args.compile, together=not args.one_by_one, parallel=args.parallel)
    rank, world = rank_world()
    if rank != 0:
        return 0
    print(f"{'model':10s} {'mode':10s} {'test accuracy (%)':>20s}   (on {source.name}'s test split)")
    for r in rows:
        print(f"{r['model']:10s} {r['mode']:10s} {100 * r['accuracy_mean']:>11.2f} +/- {100 * r['accuracy_std']:.2f}")
    print(f"(on {device}: trained in {'bfloat16 autocast' if bf16 else 'float32'}, tested in "
          f"{rows[0]['test_precision']}"
          + (f", forward pass compiled ({'default' if args.compile is True else args.compile} mode)"
             if args.compile else "") + (", channels_last" if args.channels_last else "") + ")")
    if world > 1:
        print(f"({world} ranks, --parallel {args.parallel})")
    return 0


def _test_source(args: argparse.Namespace, ds: LaddDataset):
    """The test split: --test-source, else the container's own source dataset when it is built in."""
    if args.test_source:
        return _source(args.test_source, args.source_name)
    named = ds.manifest.distillation.source_dataset or ds.manifest.labeler.source_dataset
    if named and named.lower() in ("fashion-mnist", "fashion_mnist"):
        return _source(named, None)
    raise InvalidInputError(f"{args.path} was made from {named or 'an unnamed dataset'!r}, which is not built in: "
                            "pass its real test split with --test-source (a folder) and --source-name")


def _cmd_show(args: argparse.Namespace) -> int:
    from .show import save_render

    with open_container(args.path) as ds:
        out = save_render(ds, args.index, args.output)
    print(f"wrote {out}")
    return 0


def _crops(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'all' or an integer >= 1, got {value} (to train on "
                                         "full images only, use --mode hard)")
    return value


def _parser() -> argparse.ArgumentParser:
    from .presets import COMPILE_MODES, PRESETS

    p = Parser(prog="ladd", description="Label-augmented distilled dataset containers.")
    p.add_argument("--version", action="version", version=f"ladd_format {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = list(PRESETS)

    s = sub.add_parser("inspect", help="summarise a container (verifies every digest unless --no-verify)")
    s.add_argument("path")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute every digest (default); --no-verify reads metadata only, and says so")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("validate", help="check a container fully; exit 0 when valid")
    s.add_argument("path")
    s.set_defaults(func=_cmd_validate)

    s = sub.add_parser("pack", help="pack a container directory into one .ladd.zip file")
    s.add_argument("source")
    s.add_argument("target")
    s.add_argument("--overwrite", action="store_true", help="replace an existing TARGET")
    s.set_defaults(func=_cmd_pack)

    s = sub.add_parser("example", help="write a small synthetic container to try the tools on")
    s.add_argument("path")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace an existing container at PATH")
    s.set_defaults(func=_cmd_example)

    s = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST, ending in an accuracy table")
    s.add_argument("--out", default="out/demo", help="folder for the container, labeler and results")
    s.add_argument("--preset", default="cpu", choices=presets, help="settings: cpu (default) or paper")
    s.add_argument("--full", action="store_true", help="same as --preset paper (meant for a GPU)")
    s.add_argument("--ipc", type=positive_int, default=10, help="images per class (default 10)")
    s.add_argument("--seeds", type=positive_int, default=3,
                   help="trainings per method, over one upload (default 3; the table shows mean +/- std)")
    s.add_argument("--epochs", type=positive_int, help="epochs per test-model training (default: the preset's)")
    s.add_argument("--images", choices=("random-real", "dm"), default="random-real",
                   help="the distilled images: a seeded random-real draw (default) or Distribution Matching")
    s.add_argument("--dm-iterations", type=positive_int, default=150,
                   help="DM iterations with --images dm (default 150; the paper: 20,000)")
    s.add_argument("--device", type=device_arg, help="cpu, cuda or cuda:N (default: cuda when available)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("train-labeler", help="train a ConvNet labeler on a source dataset")
    s.add_argument("--source", default="fashion-mnist",
                   help="fashion-mnist, or a folder (IDX files, or one sub-folder of images per class)")
    s.add_argument("--source-name", help="the dataset's name when --source is not Fashion-MNIST")
    s.add_argument("--out", required=True, help="checkpoint folder (epoch_XX.pt per epoch)")
    s.add_argument("--preset", choices=presets, help="cpu or paper: fills what is not given")
    s.add_argument("--epochs", type=positive_int, help="default 10")
    s.add_argument("--width", type=positive_int, help="ConvNet width (default 128)")
    s.add_argument("--train-images", type=positive_int, help="train on a seeded subset of this many images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", type=device_arg, help="cpu, cuda or cuda:N (default: cuda when available)")
    s.set_defaults(func=_cmd_train_labeler)

    s = sub.add_parser("augment", help="label every crop of distilled images and write a container")
    s.add_argument("labeler", nargs="?", help="a checkpoint written by train-labeler (epoch_XX.pt), or a "
                                              "teacher: torchvision:NAME, timm:NAME, torchscript:PATH")
    s.add_argument("out")
    teacher = s.add_argument_group("any network as the labeler (instead of LABELER)")
    pick = teacher.add_mutually_exclusive_group()
    pick.add_argument("--model", help="torchvision:NAME or timm:NAME (e.g. torchvision:resnet18)")
    pick.add_argument("--torchscript", metavar="FILE", help="a TorchScript archive")
    teacher.add_argument("--weights", metavar="FILE", help="the model's weights (a state dict; never unpickled)")
    teacher.add_argument("--num-classes", type=positive_int, help="the model's classes (torchvision/timm: 1000)")
    teacher.add_argument("--input-size", type=_pair, help="the model's input H,W (torchvision/timm: 224,224); "
                                                          "crops are resized straight to it")
    teacher.add_argument("--labeler-mean", type=_floats, help="the model's input normalisation (ImageNet's by default)")
    teacher.add_argument("--labeler-std", type=_floats)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source_container", help="relabel the images of this container")
    src.add_argument("--random-real", help="use IPC random real images of this source (fashion-mnist or a folder)")
    s.add_argument("--source-name", help="the dataset's name when --random-real is not Fashion-MNIST")
    s.add_argument("--ipc", type=positive_int, default=10, help="with --random-real: images per class")
    s.add_argument("--seed", type=int, default=0)
    add_labeling_options(s)
    s.set_defaults(func=_cmd_augment)

    s = sub.add_parser("train", help="train and test models on a container (mean +/- std over seeds)")
    s.add_argument("path")
    s.add_argument("--test-source", help="the real test split: fashion-mnist or a folder (default: the "
                                         "container's source dataset, when built in)")
    s.add_argument("--source-name", help="the test source's name when it is not Fashion-MNIST")
    s.add_argument("--mode", default="ladd", choices=["ladd", "hard", "soft", "crops-only"])
    s.add_argument("--model", default="convnet", help="comma-separated: convnet,alexnet,vgg11,resnet18,vit")
    s.add_argument("--preset", choices=presets, help="cpu or paper: fills --epochs, --width, --crops")
    s.add_argument("--seeds", type=positive_int, default=1,
                   help="trainings per model, over one upload; on CUDA the seeds of a model train as one grouped network")
    s.add_argument("--one-by-one", action="store_true",
                   help="one train() call per seed, each with its own upload (the same results; on CUDA up to float rounding)")
    s.add_argument("--epochs", type=positive_int, help="default 300")
    s.add_argument("--lr", type=positive_float, default=0.01)
    s.add_argument("--batch-size", type=positive_int, default=256)
    s.add_argument("--crops", type=_crops, help="crops per image per step: all (default) or k >= 1")
    s.add_argument("--width", type=positive_int, help="ConvNet width (default 128)")
    s.add_argument("--ipc", type=positive_int, help="train on the first IPC images of each class only")
    s.add_argument("--device", type=device_arg, help="cpu, cuda or cuda:N (default: cuda when available; "
                                                     "under torchrun, the local rank's GPU)")
    s.add_argument("--precision", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="training precision: auto (default) is bfloat16 autocast on CUDA and on CPUs that "
                        "multiply bfloat16 in hardware (AMX), which then also test in it; float32 elsewhere")
    s.add_argument("--compile", nargs="?", const=True, default=False, choices=COMPILE_MODES, metavar="MODE",
                   help="run the forward pass through torch.compile (eager where that fails, with a warning); "
                        f"MODE: {', '.join(COMPILE_MODES)} (reduce-overhead replays CUDA graphs)")
    s.add_argument("--channels-last", action="store_true", help="train in the channels_last memory layout")
    s.add_argument("--parallel", default="auto", choices=["auto", "grid", "data"],
                   help="under torchrun: grid spreads the (model, seed) runs over the ranks, data trains each "
                        "run data-parallel over all ranks; auto (default): grid when there are at least as many "
                        "runs as ranks")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("show", help="draw an image beside its crops and their dense labels")
    s.add_argument("path")
    s.add_argument("--index", type=int, default=0)
    s.add_argument("-o", "--output", required=True, help="a .png, .jpg or .webp file in an existing folder")
    s.set_defaults(func=_cmd_show)

    register_import_export(sub)
    register_storage(sub)
    register_publish(sub)
    return p


def _close_progress_bars() -> None:
    """Close open tqdm bars so that nothing redraws after the last message."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ladd`` command. Exit 0 on success, 1 with one line on stderr for a library
    error, 2 for a usage error, 130 on Ctrl-C; never a traceback for any of these."""
    args = _parser().parse_args(argv)
    name = f"ladd {args.command}"
    try:
        return int(args.func(args))
    except LaddError as exc:
        stderr_line(f"{name}: {type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        _close_progress_bars()
        stderr_line(f"{name}: interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def entry() -> int:
    """The ``ladd`` program (console script, ``python -m ladd_format``): :func:`main` with freed
    memory kept for reuse (:func:`~ladd_format.keep_freed_memory`: faster CPU training;
    ``LADD_MALLOC=default`` keeps glibc's defaults). Not in :func:`main`, which tests and other
    programs call in their own process."""
    keep_freed_memory()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
