"""Accuracy against on-disk bytes: hard labels at IPC n, n+1, ... against LADD at every encoding.

    python benchmarks/frontier.py --ipc 1 10 [--seeds 3] [--epochs 200] [--json out/frontier/frontier.json]

Fashion-MNIST, random-real images (nested draws: the IPC n set is the first n images of each
class of any larger draw), the demo's labeler and trainer (``--preset cpu`` unless told
otherwise; ``--epochs`` overrides the preset's epochs for every point alike). For each IPC n:
LADD at IPC n under every encoding, then hard labels at IPC n, n+1, ... until their bytes pass
the largest LADD container's. Every point trains ``--seeds`` ConvNets with the same settings
(:func:`ladd_format.demo.measure`, which also counts the bytes as the demo does: images +
labels on disk, plus every dense-label array for LADD). Rows go to ``--json`` (default: the
work folder's frontier.json) as they come, so a run cut short keeps them; the table and plot go
beside it (``--out``, ``--png`` to put them elsewhere). ``--from-json`` only rebuilds them,
printing the table and writing just the files that ``--out`` and ``--png`` name, so that a
rebuild never overwrites a curated results file by default; ``--sizes`` trains nothing and lists
every encoding's bytes against the hard-label sets.

A LADD point *beats hard labels at equal bytes* when its mean accuracy exceeds that of the
best hard-label set up to the smallest one holding at least as many bytes by more than the
larger of the two standard deviations (over seeds). ``--hard bracket`` trains only IPC n and
the hard sets either side of each LADD point's bytes instead of the whole curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ladd_format import LaddError, keep_freed_memory
from ladd_format import open as open_container
from ladd_format.demo import DemoSettings, measure
from ladd_format.labeler import Labeler, augment, train_labeler
from ladd_format.sources import SourceDataset, fashion_mnist, random_real

ENCODINGS: list[tuple[str, dict | None]] = [
    ("uint8", None), ("topk", {"k": 1, "rule": "renorm"}), ("coarse", {"scale": 3}), ("coarse", {"scale": 15}),
    ("topk", {"k": 1, "rule": "smoothing"}), ("topk", {"k": 2, "rule": "renorm"}),
    ("topk", {"k": 2, "rule": "smoothing"}), ("topk", {"k": 3, "rule": "renorm"}),
    ("topk", {"k": 3, "rule": "smoothing"}), ("float16", None), ("uint16", None), ("float32", None),
]
"""Most telling first (the default, the cheapest), so that a run cut short keeps them."""
FIRST = 4  # encodings trained before every other point


def encoding_label(name: str, params: dict | None) -> str:
    """``topk k=2 renorm``, ``coarse S=15``, ``uint8``: a row's encoding in the table."""
    if name == "topk":
        return f"topk k={params['k']} {params['rule']}"
    if name == "coarse":
        return f"coarse S={params['scale']}"
    return name


def _container(out: Path, ipc: int, source: SourceDataset, labeler: Labeler, encoding: str,
               params: dict | None) -> Path:
    """The IPC ``ipc`` random-real set labelled by ``labeler`` and stored under ``encoding``; one
    that an earlier run left (same labeler, encoding and IPC) is kept."""
    images, labels, index = random_real(source, ipc, seed=0)
    name = encoding_label(encoding, params).replace(" ", "_").replace("=", "")
    path = out / f"ipc{ipc}_{name}.ladd"
    if _made_by(path, labeler, encoding, params, ipc):
        return path
    distillation = {"method": "random-real", "source_dataset": source.name, "ipc": ipc,
                    "details": {"seed": 0, "train_indices": index.tolist()}}
    return augment(path, images, labels, labeler, distillation=distillation,
                   class_names=list(source.class_names), encoding=encoding, encoding_params=params,
                   overwrite=True, progress=False)


def _made_by(path: Path, labeler: Labeler, encoding: str, params: dict | None, ipc: int) -> bool:
    try:
        with open_container(path) as ds:
            m = ds.manifest
    except (FileNotFoundError, LaddError):
        return False
    return (m.labeler.checkpoint_sha256 == labeler.checkpoint_sha256 and m.dense_labels.encoding == encoding
            and m.dense_labels.params == (params or {}) and m.distillation.ipc == ipc)


def _point(path: Path, source: SourceDataset, s: DemoSettings, mode: str) -> dict[str, Any]:
    with open_container(path) as ds:
        return measure(ds, source, s, mode, progress=False)


def _bytes(path: Path, dense: bool) -> int:
    """What ``measure`` counts: images + labels, plus the dense-label arrays for LADD."""
    with open_container(path) as ds:
        stored = ds.stored_bytes()
    return sum(stored.values()) if dense else stored["images"] + stored["labels"]


def frontier(ipc: int, source: SourceDataset, labeler: Labeler, s: DemoSettings, out: Path,
             record: Any, done: set[tuple], encodings: list[tuple[str, dict | None]], bracket: bool = False) -> None:
    """LADD at every encoding and the hard-label curve from ``ipc`` until its bytes pass the
    largest LADD container (with ``bracket``, only IPC n and the two hard sets either side of
    each LADD point's bytes, found by bisection: the whole curve at IPC 50 runs to IPC 100 and
    beyond with the float encodings, hours on a CPU). Containers are written first; training
    then takes the first ``FIRST`` encodings, then every other point from the fewest bytes up,
    so that a run cut short keeps what decides the comparison. Points in ``done`` (from a
    resumed report) are skipped."""
    ladd = [(encoding_label(e, p), _container(out, ipc, source, labeler, e, p)) for e, p in encodings]

    def hard(m: int) -> Path:
        return _hard(out, m, source, labeler)

    if bracket:
        above = [_first_at_least(_bytes(path, dense=True), ipc, lambda m: _bytes(hard(m), dense=False))
                 for _, path in ladd]
        curve = [hard(m) for m in sorted({ipc} | {m for a in above for m in (max(a - 1, ipc), a)})]
    else:
        with_dense = max(_bytes(path, dense=True) for _, path in ladd)
        curve = [hard(ipc)]
        while _bytes(curve[-1], dense=False) <= with_dense:
            curve.append(hard(ipc + len(curve)))
    rest = [("LADD", *job) for job in ladd[FIRST:]] + [("hard", "-", path) for path in curve]
    jobs = [("LADD", *job) for job in ladd[:FIRST]] + sorted(rest, key=lambda j: _bytes(j[2], j[0] == "LADD"))
    for method, label, path in jobs:
        if (ipc, method, label, _images_per_class(path)) in done:
            continue
        row = _point(path, source, s, "ladd" if method == "LADD" else "hard")
        record({**row, "ipc_setting": ipc, "method": method, "encoding": label})


def _hard(out: Path, ipc: int, source: SourceDataset, labeler: Labeler) -> Path:
    """The IPC ``ipc`` hard-label set (a uint8 container, whose dense labels ``measure`` does not count)."""
    return _container(out, ipc, source, labeler, "uint8", None)


def _first_at_least(target: int, low: int, size: Callable[[int], int]) -> int:
    """The smallest IPC m >= ``low`` with ``size(m) >= target``, for ``size`` non-decreasing in m
    (nested draws: a larger set holds every image of a smaller one): doubling steps, then
    bisection, so about 2 log2(m - low) sizes are measured instead of every one."""
    if size(low) >= target:
        return low
    below, step = low, 1
    while size(below + step) < target:
        below, step = below + step, 2 * step
    above = below + step
    while above - below > 1:
        mid = (below + above) // 2
        below, above = (below, mid) if size(mid) >= target else (mid, above)
    return above


def _images_per_class(path: Path) -> int:
    with open_container(path) as ds:
        return ds.ipc


def _key(row: dict) -> tuple:
    return row["ipc_setting"], row["method"], row["encoding"], row["ipc"]


def _matched(row: dict, hard: list[dict]) -> dict | None:
    """The best hard-label set (highest mean) among those up to the smallest with at least
    ``row``'s bytes: hard labels get at least LADD's budget, and one unlucky point on their
    curve (a last batch of 8 images, say) cannot decide the verdict."""
    fits = [h for h in hard if h["bytes"] >= row["bytes"]]
    if not fits:
        return None
    budget = min(h["bytes"] for h in fits)
    return max((h for h in hard if h["bytes"] <= budget), key=lambda h: h["accuracy_mean"])


def verdicts(rows: list[dict]) -> list[dict]:
    """LADD rows with the hard set they are compared with, the gap, and whether it exceeds
    the larger std."""
    out = []
    for ipc in sorted({r["ipc_setting"] for r in rows}):
        hard = [r for r in rows if r["ipc_setting"] == ipc and r["method"] == "hard"]
        for r in (r for r in rows if r["ipc_setting"] == ipc and r["method"] == "LADD"):
            h = _matched(r, hard)
            gap = None if h is None else r["accuracy_mean"] - h["accuracy_mean"]
            wins = None if h is None else gap > max(r["accuracy_std"], h["accuracy_std"])
            out.append({**r, "vs_hard_ipc": h and h["ipc"], "gap": gap, "wins": wins})
    return out


def markdown(rows: list[dict], header: list[str]) -> str:
    lines = [*header, "", "| IPC | labels | encoding | images/class | bytes on disk | test accuracy (%) | "
             "vs best hard up to >= bytes | gap (points) | beats by > 1 std |", "|---:|---|---|---:|---:|---:|---:|---:|---|"]
    judged = {(r["ipc_setting"], r["encoding"]): r for r in verdicts(rows)}
    for r in sorted(rows, key=lambda r: (r["ipc_setting"], r["bytes"])):
        v = judged.get((r["ipc_setting"], r["encoding"])) if r["method"] == "LADD" else None
        acc = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        versus = "" if v is None or v["gap"] is None else f"IPC {v['vs_hard_ipc']}"
        gap = "" if v is None or v["gap"] is None else f"{100 * v['gap']:+.2f}"
        wins = "" if v is None or v["wins"] is None else ("**yes**" if v["wins"] else "no")
        labels = "dense" if r["method"] == "LADD" else "hard"
        lines.append(f"| {r['ipc_setting']} | {labels} | {r['encoding']} | {r['ipc']} | {r['bytes']:,} | {acc} | "
                     f"{versus} | {gap} | {wins} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """One panel per IPC: accuracy (mean, bars +- std) against bytes; hard labels as a line.
    Drawn with Pillow, since matplotlib is not a dependency of the library."""
    from PIL import Image, ImageDraw, ImageFont

    ipcs = sorted({r["ipc_setting"] for r in rows})
    pw, ph, margin = 640, 480, (80, 30, 30, 60)  # left, top, right, bottom
    img = Image.new("RGB", (pw * len(ipcs), ph), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=13)
    for i, ipc in enumerate(ipcs):
        _panel(draw, font, [r for r in rows if r["ipc_setting"] == ipc], (i * pw, 0, pw, ph), margin, ipc)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _panel(draw: Any, font: Any, rows: list[dict], box: tuple[int, int, int, int],
           margin: tuple[int, int, int, int], ipc: int) -> None:
    x0, y0, w, h = box
    left, top, right, bottom = margin
    xs = [r["bytes"] for r in rows]
    ys = [100 * (r["accuracy_mean"] + s * r["accuracy_std"]) for r in rows for s in (-1, 1)]
    (xa, xb), (ya, yb) = _padded(min(xs), max(xs)), _padded(min(ys), max(ys))

    def at(x: float, y: float) -> tuple[float, float]:
        return (x0 + left + (x - xa) / (xb - xa) * (w - left - right),
                y0 + h - bottom - (y - ya) / (yb - ya) * (h - top - bottom))

    draw.rectangle([at(xa, yb), at(xb, ya)], outline="black")
    for t in np.linspace(xa, xb, 5):
        x, y = at(t, ya)
        draw.text((x - 20, y + 5), f"{t / 1000:.1f}k", fill="black", font=font)
    for t in np.linspace(ya, yb, 6):
        x, y = at(xa, t)
        draw.text((x - 45, y - 7), f"{t:.1f}", fill="black", font=font)
    draw.text((x0 + w // 2 - 70, y0 + h - 25), "bytes on disk", fill="black", font=font)
    draw.text((x0 + 5, y0 + 8), f"IPC {ipc}: test accuracy (%)  -- hard labels (red), LADD (blue)",
              fill="black", font=font)
    hard = sorted((r for r in rows if r["method"] == "hard"), key=lambda r: r["bytes"])
    for a, b in zip(hard, hard[1:]):  # grey and thin across IPCs that were not trained (--hard bracket)
        adjacent = b["ipc"] == a["ipc"] + 1
        draw.line([at(r["bytes"], 100 * r["accuracy_mean"]) for r in (a, b)], fill="red" if adjacent else "grey",
                  width=2 if adjacent else 1)
    ipcs, ladd, keyed = {r["ipc"] for r in hard}, 0, sum(r["method"] != "hard" for r in rows)
    ordered = sorted(rows, key=lambda r: r["bytes"])
    taken: list[tuple[tuple[float, float], float]] = []  # LADD numbers, then hard runs' names: (corner, width)

    def free(lx: float, ly: float, width: float) -> bool:
        return not any(px < lx + width and lx < px + pw and abs(ly - py) < 13 for (px, py), pw in taken)

    for j, r in enumerate((r for r in ordered if r["method"] != "hard"), 1):
        (lx, ly), width = at(r["bytes"], 100 * r["accuracy_mean"]), draw.textlength(str(j), font=font)
        lx, ly = lx + 4, ly - 16
        while not free(lx, ly, width):
            lx += 2  # right of the numbers of points it crowds: a cluster reads "7 8 9"
        taken.append(((lx, ly), width))
    numbers = [corner for corner, _ in taken]  # LADD point j's number goes at numbers[j - 1]
    kx, ky = at(xb, ya)  # the key's lower right corner
    for r in ordered:
        colour = "red" if r["method"] == "hard" else "blue"
        m, s = 100 * r["accuracy_mean"], 100 * r["accuracy_std"]
        x, y = at(r["bytes"], m)
        draw.line([at(r["bytes"], m - s), at(r["bytes"], m + s)], fill=colour)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        if r["method"] == "hard":
            if r["ipc"] + 1 not in ipcs:  # a run of hard IPCs is named once, at its end
                name = _run_name(r["ipc"], ipcs)
                width = draw.textlength(name, font=font)
                lx, ly = (x + 5 if x + 5 + width < x0 + w else x - 5 - width), y + 4  # inside the panel
                while not free(lx, ly, width):
                    ly += 13  # below the names and numbers already there that it would cover
                taken.append(((lx, ly), width))
                draw.text((lx, ly), name, fill=colour, font=font)
            continue
        ladd += 1  # LADD points are numbered, named in a key at the lower right (they crowd)
        draw.text(numbers[ladd - 1], str(ladd), fill=colour, font=font)
        draw.text((kx - 150, ky - 8 - 15 * (keyed + 1 - ladd)), f"{ladd}  {r['encoding']}", fill=colour, font=font)


def _run_name(last: int, ipcs: set[int]) -> str:
    """``IPC 98-99`` for the run of consecutive trained IPCs that ends at ``last`` (``IPC 50`` alone)."""
    first = last
    while first - 1 in ipcs:
        first -= 1
    return f"IPC {first}" + (f"-{last}" if first < last else "")


def _padded(lo: float, hi: float) -> tuple[float, float]:
    pad = 0.08 * (hi - lo) or 1.0
    return lo - pad, hi + pad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="e.g. 1 10 50")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (every point alike)")
    ap.add_argument("--width", type=int, default=None, help="override the preset's ConvNet width")
    ap.add_argument("--test-images", type=int, default=None,
                    help="test on the first N/K test images of each class (default: the whole test split)")
    ap.add_argument("--work", type=Path, default=Path("out/frontier"), help="labeler and containers")
    ap.add_argument("--json", type=Path, default=None, help="the report (default: WORK/frontier.json)")
    ap.add_argument("--out", type=Path, default=None, help="the table (default: beside --json; none with --from-json)")
    ap.add_argument("--png", type=Path, default=None, help="the plot (default: beside --json; none with --from-json)")
    ap.add_argument("--encodings", nargs="+", default=None, metavar="LABEL",
                    help="only these LADD points, named as in the table (e.g. uint8 'topk k=1 smoothing')")
    ap.add_argument("--hard", choices=("curve", "bracket"), default="curve",
                    help="every hard set from IPC n up, or only those next to a LADD point's bytes")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of --json (same settings) and train only the points it lacks")
    ap.add_argument("--from-json", type=Path, nargs="+", default=None,
                    help="only rebuild the table and plot from these reports (e.g. one per IPC, run apart)")
    ap.add_argument("--sizes", action="store_true",
                    help="train nothing: print each encoding's bytes and the hard-label IPC it must beat")
    args = ap.parse_args()
    keep_freed_memory()  # as the ladd program does: faster CPU training

    train = {k: v for k, v in (("epochs", args.epochs), ("width", args.width)) if v is not None}
    s = DemoSettings.from_preset(args.preset, seeds=args.seeds, train=train)
    if args.sizes:
        print(sizes(args, s))
        return
    if args.from_json:
        report = _merged([json.loads(path.read_text()) for path in args.from_json])
    else:
        args.json = args.json or args.work / "frontier.json"
        args.out, args.png = args.out or args.json.with_suffix(".md"), args.png or args.json.with_suffix(".png")
        report = run(args, s)
    table = markdown(report["rows"], [f"Accuracy against bytes on Fashion-MNIST (`benchmarks/frontier.py`), IPC "
                                      f"{', '.join(map(str, report['ipcs']))}: {report['seconds']:.0f} s", "",
                                      "Settings: " + ", ".join(_shared(report["settings"]))])
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        print(f"wrote {args.out}")
    if args.png:
        plot(report["rows"], args.png)
        print(f"wrote {args.png} (drawn with Pillow)")


def _merged(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs with the same settings (their seconds add up; a point
    that several hold is kept once, as the first one has it)."""
    if any(_shared(r["settings"]) != _shared(reports[0]["settings"]) for r in reports):
        raise SystemExit("the reports were made with different settings")
    rows = {}
    for row in (row for r in reports for row in r["rows"]):
        rows.setdefault(_key(row), row)
    return {"settings": _shared(reports[0]["settings"]), "ipcs": sorted({i for r in reports for i in r["ipcs"]}),
            "rows": list(rows.values()), "seconds": sum(r["seconds"] for r in reports)}


def _shared(settings: list[str]) -> list[str]:
    """The settings every point shares: IPC and encoding are set per point, and the images are
    random-real here whatever the demo's setting (newer demos list it)."""
    return [line for line in settings if not line.startswith(("ipc ", "encoding ", "images "))]


def _test_subset(source: SourceDataset, count: int | None) -> SourceDataset:
    """The first ``count / K`` test images of each class (all of them for ``None``)."""
    if count is None:
        return source
    per_class = count // source.num_classes
    keep = np.sort(np.concatenate([np.flatnonzero(source.test_labels == c)[:per_class]
                                   for c in range(source.num_classes)]))
    return dataclasses.replace(source, test_images=source.test_images[keep], test_labels=source.test_labels[keep])


def _selected(args: argparse.Namespace) -> list[tuple[str, dict | None]]:
    encodings = [(e, p) for e, p in ENCODINGS if args.encodings is None or encoding_label(e, p) in args.encodings]
    if args.encodings is not None and len(encodings) != len(set(args.encodings)):
        raise SystemExit(f"unknown encoding label among {args.encodings}; known: "
                         f"{', '.join(encoding_label(e, p) for e, p in ENCODINGS)}")
    return encodings


def sizes(args: argparse.Namespace, s: DemoSettings) -> str:
    """Without training: each encoding's bytes at each IPC and the hard-label sets either side
    of them (the IPC a LADD point must beat), as a markdown table."""
    source = fashion_mnist()
    labeler = train_labeler(source, **s.labeler, out_dir=args.work / "labeler", progress=False)
    lines = ["| IPC | encoding | bytes on disk | / hard IPC n | hard IPC at >= bytes | its bytes | one image less |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for ipc in args.ipc:
        def hard(m: int) -> int:
            return _bytes(_hard(args.work, m, source, labeler), dense=False)

        paths = {encoding_label(e, p): _container(args.work, ipc, source, labeler, e, p) for e, p in _selected(args)}
        for label, size in sorted(((label, _bytes(path, dense=True)) for label, path in paths.items()),
                                  key=lambda item: item[1]):
            m = _first_at_least(size, ipc, hard)
            below = f"IPC {m - 1}: {hard(m - 1):,}" if m > ipc else ""
            lines.append(f"| {ipc} | {label} | {size:,} | {size / hard(ipc):.2f} | {m} | "
                         f"{hard(m):,} | {below} |")
    return "\n".join(lines)


def run(args: argparse.Namespace, s: DemoSettings) -> dict[str, Any]:
    """Train every point; the report (also saved to ``args.json`` after every row)."""
    print("settings:", "; ".join(s.describe()))
    encodings = _selected(args)
    started = time.perf_counter()
    source = _test_subset(fashion_mnist(), args.test_images)
    print(f"test images: {len(source.test_labels)}")
    labeler = train_labeler(source, **s.labeler, out_dir=args.work / "labeler", progress=False)
    report = {"settings": [*s.describe(), f"test images {len(source.test_labels)}"], "ipcs": args.ipc, "rows": [],
              "seconds": 0.0}
    if args.resume and args.json.exists():
        report = _merged([json.loads(args.json.read_text()), {**report, "rows": []}])
        started -= report["seconds"]
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def record(row: dict) -> None:
        report["rows"].append(row)
        report["seconds"] = time.perf_counter() - started
        args.json.write_text(json.dumps(report, indent=1))
        print(f"[{report['seconds']:6.0f} s] IPC {row['ipc_setting']:3d} {row['method']:5s} {row['encoding']:22s} "
              f"images/class {row['ipc']:3d} bytes {row['bytes']:8,d} accuracy {100 * row['accuracy_mean']:.2f} "
              f"± {100 * row['accuracy_std']:.2f}", flush=True)

    for ipc in args.ipc:
        frontier(ipc, source, labeler, s, args.work, record, {_key(r) for r in report["rows"]}, encodings,
                 bracket=args.hard == "bracket")
    return report


if __name__ == "__main__":
    main()
