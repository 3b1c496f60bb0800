"""What dense labels cost per encoding, the paper's way and on disk; optionally, what they buy.

    python benchmarks/storage.py [--images 50] [--out benchmarks/results/storage.md]
    python benchmarks/storage.py --accuracy [--ipc 10 --seeds 2 --epochs 60 --width 32 --crops 5]

Storage: for 28x28x1, 32x32x3 and 128x128x3 images, K = 10, 100, 1,000 and N = 3, 5, 7, 9,
every encoding is written to a zstd container and measured with ``ladd_format.overhead``:
the paper's count (zipfile deflate; images uint8, hard labels one float32 each) and the
container's bytes on disk, both as % of images + hard labels. Per-image figures do not depend
on the number of images, so a few images per configuration suffice.

Data: 28x28x1 are real Fashion-MNIST train images; colour images are the library's smooth
synthetic images (``ladd_format.testing.example_arrays``: gradients plus Gaussian noise, which
deflate compresses about as little as it compresses distilled images). Dense labels are
softmax(logits) with logits ~ N(0, 1), +4 on the image's class and +2 on three other classes
per image, crop to crop noise included: a dominant class, a few confusable ones, a long tail.

Accuracy (``--accuracy``): Fashion-MNIST, a ConvNet labeler, then baseline (IPC, hard labels),
baseline++ (IPC + 1), LADD with each encoding, and more real images with hard labels in as
many bytes as LADD in the default encoding, ``--seeds`` trainings each, via
``ladd_format.demo.compare`` and ``ladd_format.train``: do dense labels beat more images at
equal bytes, and does the encoding cost accuracy?
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import ladd_format
from ladd_format.storage import overhead, reencode
from ladd_format.testing import example_arrays

SIZES = [(28, 1), (32, 3), (128, 3)]
CLASSES = [10, 100, 1000]
GRIDS = [3, 5, 7, 9]
ENCODINGS = [("float32", None), ("float16", None), ("uint8", None), ("uint16", None),
             ("topk", {"k": 5, "rule": "smoothing"}), ("topk", {"k": 10, "rule": "smoothing"})]


def _label(name: str, params: dict | None) -> str:
    return name if params is None else f"top{params['k']}"


def _images(size: int, channels: int, count: int, fashion: np.ndarray | None) -> np.ndarray:
    if channels == 1:
        pick = np.random.default_rng(0).choice(len(fashion), count, replace=False)
        return fashion[np.sort(pick)]
    return example_arrays(num_classes=count, ipc=1, size=size, channels=channels, n=1)[0]


def _dense(count: int, crops: int, num_classes: int, labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (count, crops, num_classes))
    logits[np.arange(count), :, labels] += 4.0
    for i in range(count):
        logits[i, :, rng.choice(num_classes, 3, replace=False)] += 2.0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def storage(images_per_config: int) -> list[dict]:
    from ladd_format.sources import fashion_mnist

    fashion = fashion_mnist().train_images
    rows = []
    with tempfile.TemporaryDirectory(prefix="ladd-storage-") as tmp:
        for size, channels in SIZES:
            images = _images(size, channels, images_per_config, fashion)
            for num_classes in CLASSES:
                labels = np.arange(images_per_config) % num_classes
                for n in GRIDS:
                    dense = _dense(images_per_config, n * n, num_classes, labels, seed=n * num_classes)
                    for name, params in ENCODINGS:
                        if params is not None and params["k"] >= num_classes:
                            continue
                        path = ladd_format.write(Path(tmp) / "c.ladd", images, labels, dense, sampler={"n": n},
                                                 encoding=name, encoding_params=params, overwrite=True)
                        report = overhead(path)
                        dense_stored = sum(v for k, v in report.stored_bytes.items() if k not in ("images", "labels"))
                        rows.append({
                            "size": f"{size}x{size}x{channels}", "classes": num_classes, "n": n,
                            "encoding": _label(name, params), "raw_percent": report.raw_encoded_percent,
                            "paper_percent": report.paper_encoded_percent,
                            "paper_float32_percent": report.paper_float32_percent,
                            "disk_percent": report.stored_percent,
                            "paper_bytes_per_image": (report.paper_encoded_bytes - report.paper_base_bytes)
                            / images_per_config,
                            "disk_bytes_per_image": dense_stored / images_per_config,
                            "image_deflate_ratio": report.paper_base_bytes / (report.raw_bytes["images"]
                                                                             + report.raw_bytes["hard_labels"]),
                        })
    return rows


def _storage_tables(rows: list[dict]) -> str:
    names = [_label(n, p) for n, p in ENCODINGS]
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        subset = [r for r in rows if r["size"] == size]
        ratio = subset[0]["image_deflate_ratio"]
        out.append(f"\n### {size} (images + hard labels deflate to {100 * ratio:.0f}% of raw)\n")
        out.append("Dense-label overhead, % of images + hard labels: the paper's count (zipfile deflate) / "
                   "the container on disk (zstd chunks + metadata).\n")
        out.append("| K | N | " + " | ".join(names) + " |")
        out.append("|---:|---:|" + "---:|" * len(names))
        for k in CLASSES:
            for n in GRIDS:
                cells = {r["encoding"]: r for r in subset if r["classes"] == k and r["n"] == n}
                out.append(f"| {k:,} | {n} | " + " | ".join(
                    f"{cells[e]['paper_percent']:.2f} / {cells[e]['disk_percent']:.2f}" if e in cells else "-"
                    for e in names) + " |")
    return "\n".join(out)


def accuracy(args: argparse.Namespace) -> list[dict]:
    from ladd_format.demo import DemoSettings, compare
    from ladd_format.labeler import train_labeler
    from ladd_format.sources import fashion_mnist, random_real

    # The LADD container is written exactly (float32); every other encoding re-encodes it.
    settings = DemoSettings.from_preset("cpu", ipc=args.ipc, seeds=args.seeds, encoding="float32",
                                        train={"epochs": args.epochs, "width": args.width,
                                               "crops_per_image": args.crops})
    source = fashion_mnist()
    with tempfile.TemporaryDirectory(prefix="ladd-accuracy-") as tmp:
        out = Path(tmp)
        labeler = train_labeler(source, **settings.labeler, out_dir=out / "labeler", progress=False)
        rows, ladd_path = compare(out, source, labeler, settings, progress=False)
        rows[-1]["encoding"] = "float32"
        base_bytes = rows[0]["bytes"]
        for name, params in ENCODINGS[1:]:
            if params is not None and params["k"] >= source.num_classes:
                continue
            path = reencode(ladd_path, out / f"{_label(name, params)}.ladd", name, encoding_params=params)
            rows.append(_run(path, "LADD", "ladd", settings, source, base_bytes, encoding=_label(name, params)))
        # More real images with hard labels, as many bytes as LADD in the default encoding (uint8);
        # none when that rounds to no more images than the baseline has.
        default_bytes = next(r["bytes"] for r in rows if r.get("encoding") == "uint8")
        ipc = round(settings.ipc * default_bytes / base_bytes)
        if ipc > settings.ipc:
            images, labels, _ = random_real(source, ipc, seed=1)
            one_hot = np.eye(source.num_classes, dtype=np.float32)[labels][:, None]
            path = ladd_format.write(out / f"equal_bytes_ipc{ipc}.ladd", images, labels, one_hot,
                                     sampler={"n": 1}, mean=source.mean, std=source.std)
            rows.append(_run(path, "equal bytes", "hard", settings, source, base_bytes))
    return [{**r, "settings": dataclasses.asdict(settings)} for r in rows]


def _run(path: Path, method: str, mode: str, settings, source, base_bytes: int, **fields) -> dict:
    from ladd_format.demo import measure

    with ladd_format.open(path) as ds:
        row = measure(ds, source, settings, mode, progress=False)
    return {"method": method, **row, "overhead_percent": 100.0 * (row["bytes"] - base_bytes) / base_bytes, **fields}


def _accuracy_table(rows: list[dict]) -> str:
    s = rows[0]["settings"]
    t, lab = s["train"], s["labeler"]
    lines = [f"\n## Accuracy (Fashion-MNIST, ConvNet width {t['width']}, {t['epochs']} epochs, "
             f"{t['crops_per_image']} crops per image per step, {s['seeds']} seeds, labeler width "
             f"{lab['width']} on {lab['train_images']} images, {lab['epochs']} epochs)\n",
             "| method | IPC | encoding | test accuracy (%) | bytes | vs baseline |", "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ipc']} | {r.get('encoding', '-')} | {100 * r['accuracy_mean']:.2f} "
                     f"+/- {100 * r['accuracy_std']:.2f} | {r['bytes']:,} | {r['overhead_percent']:+.1f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50, help="images per configuration")
    ap.add_argument("--out", type=Path, help="write the markdown tables here (and the rows as .json beside it)")
    ap.add_argument("--accuracy", action="store_true", help="also train (slow on a CPU)")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--crops", type=int, default=5)
    args = ap.parse_args()
    started = time.perf_counter()
    rows = storage(args.images)
    text = _storage_tables(rows)
    result = {"storage": rows}
    if args.accuracy:
        result["accuracy"] = accuracy(args)
        text += "\n" + _accuracy_table(result["accuracy"])
    text += f"\n\n({time.perf_counter() - started:.0f} s, {args.images} images per storage configuration)\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
