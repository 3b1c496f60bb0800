"""S seeds with today's library against S sequential runs of the trainer an earlier commit had.

Issue 11's CPU goal: S = 5 seeds of the demo's LADD training at least 1.5x faster than five
runs of the trainer of the day the issue was filed (``--baseline-ref``, default ``df426ee``,
the last commit before that work). Each side runs in its own fresh process, so that process-
wide settings (glibc malloc, thread pools) cannot leak between them:

- **baseline**: ``train(seed=s)`` for s in 0..S-1 from a ``git archive`` of the baseline
  commit, as a user of that day called it (float32 on a CPU: that trainer had no CPU autocast);
- **library**: ``train_seeds(seeds=S)`` of the working tree with the settings the demo uses
  (bfloat16 autocast where the CPU has AMX units, as the demo enables it) and
  :func:`ladd_format.keep_freed_memory`, as the ``ladd`` program applies it;
- **library, glibc defaults**: the same without ``keep_freed_memory``, to show its share.

Same container, same seeds, same epochs, the same test split; test accuracy is reported
next to the speed so that no speed is bought with accuracy. Sides alternate for
``--repeats`` rounds, and the load average is printed per run (the machine may be shared).

The container is the demo's LADD container (``--container``, e.g. ``demo_out/fashion-mnist_ipc10.ladd``
from ``ladd demo``); without one, a labeler with the ``cpu`` preset is trained and the
container written into a temporary folder first (about 2 minutes).

    python benchmarks/seeds.py --epochs 40 --out benchmarks/results/seeds.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
import ladd_format
kept = ladd_format.keep_freed_memory() if args["keep"] else False
import numpy as np
import torch
from ladd_format import open as open_container
from ladd_format.sources import fashion_mnist
from ladd_format import train as T
kwargs = dict(mode=args["mode"], preset="cpu", epochs=args["epochs"], progress=False)
if args["amp"]:
    kwargs["cpu_amp"] = True
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
if args["side"] == "baseline":
    models = [T.train(args["container"], seed=s, **kwargs).model for s in range(args["seeds"])]
else:
    models = [r.model for r in T.train_seeds(args["container"], seeds=args["seeds"], **kwargs)]
seconds = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
fm = fashion_mnist()
with open_container(args["container"]) as ds:
    info = ds.manifest.image
accs = [T.evaluate(m, fm.test_images, fm.test_labels, info.mean, info.std) for m in models]
print(json.dumps({"seconds": seconds, "accuracies": accs, "kept": kept, "minflt": r1.ru_minflt - r0.ru_minflt,
                  "sys_s": r1.ru_stime - r0.ru_stime, "user_s": r1.ru_utime - r0.ru_utime,
                  "peak_rss_mib": r1.ru_maxrss // 1024}))
"""


def _export(ref: str, into: Path) -> Path:
    """The package as it was at ``ref`` (``git archive``), importable from ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "ladd_format"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def _run(side: str, tree: Path, args: argparse.Namespace, container: Path, amp: bool, keep: bool) -> dict:
    spec = {"side": side, "container": str(container), "seeds": args.seeds, "epochs": args.epochs,
            "mode": args.mode, "amp": amp, "keep": keep}
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LADD_MALLOC"):
        env.pop(name, None)
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], env=env, capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    return {"side": side, "load": load, **json.loads(done.stdout.strip().splitlines()[-1])}


def _container(args: argparse.Namespace, tmp: Path) -> Path:
    if args.container:
        return args.container
    sys.path.insert(0, str(ROOT))
    from ladd_format.labeler import augment, train_labeler
    from ladd_format.sources import fashion_mnist, random_real

    fm = fashion_mnist()
    labeler = train_labeler(fm, preset="cpu", out_dir=tmp / "labeler", progress=True)
    images, labels, _ = random_real(fm, 10, seed=0)
    return augment(tmp / "fm_ipc10.ladd", images, labels, labeler, progress=True)


def _amx() -> bool:
    sys.path.insert(0, str(ROOT))
    from ladd_format._torch import cpu_bf16_units

    return cpu_bf16_units()


def _mean_std(values: list[float]) -> str:
    import statistics

    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.pstdev(values):.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-ref", default="df426ee", help="git commit of the trainer to compare with")
    ap.add_argument("--container", type=Path, default=None, help="a LADD container (default: build the demo's)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=40, help="epochs per seed (the demo's cpu preset: 200)")
    ap.add_argument("--mode", default="ladd", help="training mode (default ladd, the demo's costliest row)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the three sides, alternating")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = ap.parse_args(argv)
    amp = _amx()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        container = _container(args, Path(tmp))
        baseline = _export(args.baseline_ref, Path(tmp) / "baseline")
        sides = [("baseline", baseline, False, False), ("library", ROOT, amp, True),
                 ("library, glibc defaults", ROOT, amp, False)]
        for round_ in range(args.repeats):
            for name, tree, side_amp, keep in (sides if round_ % 2 == 0 else sides[::-1]):
                run = _run("baseline" if name == "baseline" else "library", tree, args, container, side_amp, keep)
                run["name"] = name
                runs.append(run)
                print(f"{name:26s} {run['seconds']:8.1f} s  acc {_mean_std(run['accuracies'])}  "
                      f"faults {run['minflt']:,}  sys {run['sys_s']:.1f} s  peak RSS {run['peak_rss_mib']} MiB  "
                      f"load {run['load']:.2f}", flush=True)
    report = _report(args, runs, amp, started)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


def _report(args: argparse.Namespace, runs: list[dict], amp: bool, started: str) -> str:
    import statistics

    best = {name: min(r["seconds"] for r in runs if r["name"] == name) for name in dict.fromkeys(r["name"] for r in runs)}
    lines = ["# S seeds: today's library against the trainer of the baseline commit", "",
             f"Command: `python benchmarks/seeds.py {' '.join(sys.argv[1:])}`  ",
             f"Run: {started} to {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  ",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
             f"python {platform.python_version()}  ",
             f"Settings: {args.seeds} seeds, mode {args.mode}, the cpu preset (width 64, 5 crops per image per step, "
             f"batch 256) with {args.epochs} epochs a seed; baseline `{args.baseline_ref}` in float32; library "
             f"{'with' if amp else 'without'} bfloat16 autocast (AMX: {amp}).", "",
             "| side | seconds (S seeds) | s/seed | vs baseline | accuracy (%) | minor faults | sys s | peak RSS MiB | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['name']} | {r['seconds']:.1f} | {r['seconds'] / args.seeds:.1f} | "
                     f"{best['baseline'] / r['seconds']:.2f}x | {_mean_std(r['accuracies'])} | {r['minflt']:,} | "
                     f"{r['sys_s']:.1f} | {r['peak_rss_mib']:,} | {r['load']:.2f} |")
    ratio = best["baseline"] / best["library"]
    lines += ["", f"Speed-up (best of each side): {ratio:.2f}x, the goal 1.5x "
              f"{'met' if ratio >= 1.5 else 'not met'}; keep_freed_memory alone: "
              f"{best['library, glibc defaults'] / best['library']:.2f}x. Accuracy: baseline "
              f"{statistics.mean(a for r in runs if r['name'] == 'baseline' for a in r['accuracies']) * 100:.2f}%, "
              f"library {statistics.mean(a for r in runs if r['name'] == 'library' for a in r['accuracies']) * 100:.2f}%."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
