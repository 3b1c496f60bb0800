"""1 rank against G ranks (gloo on CPU, one thread each; NCCL with one GPU each on a device
machine) for the three distributed jobs:

- ``label``: label augmentation of an ImageNet-shaped job, byte-identical output. The labeler is
  the zoo ConvNet (width 64, untrained, seeded: labeling cost does not depend on training) with
  K = 1,000 classes, uint8 dense labels.
- ``grid``: :func:`~ladd_format.train.cross_architecture` (``--grid-models`` x ``--grid-seeds``)
  with the runs spread over the ranks; the table must equal one rank's exactly.
- ``data``: one data-parallel :func:`~ladd_format.train.train` run (ConvNet, global batch
  ``--batch-size``); its per-epoch losses against one rank's (equal up to float reassociation).

    python benchmarks/distributed.py                # all three, 1 and 2 ranks
    python benchmarks/distributed.py --quick        # smaller: M = 400 to label, fewer epochs
    python benchmarks/distributed.py --jobs grid --ranks 1,2,4 --device cuda   # on a multi-GPU machine

Each configuration runs as processes launched the way ``torchrun`` launches them (RANK,
WORLD_SIZE, MASTER_ADDR=127.0.0.1); every rank times its job between two barriers, so the
figures leave out interpreter start-up, the container's creation and, for the training jobs,
a warm-up (one untimed epoch of each architecture on one batch: see ``_warm_up``). Reported: seconds,
throughput, speed-up and efficiency against one rank, each rank's CPU seconds (its own work,
before the closing barrier: on a machine shared with other work, where the wall-clock speed-up
says little, the fall of the largest of them shows how well the work splits), each rank's peak
RSS (VmHWM), and whether the result equals the single-rank result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rank_main(job: str, out: str, config: dict) -> None:
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT))
    from ladd_format.distributed import init_from_env, rank_world

    torch.set_num_threads(1)
    rank_device = init_from_env()
    rank, world = rank_world()
    device = config["device"]
    dev = torch.device(device) if rank_device is None or device == "cpu" else rank_device
    work = {"label": _label, "grid": _grid, "data": _data}[job](out, config, dev)
    if job != "label":
        _warm_up(config, dev)
    if world > 1:
        dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    result = work()
    cpu = time.process_time() - cpu  # before the barrier: this rank's own work
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) // 1024
    print(json.dumps({"rank": rank, "world": world, "seconds": seconds, "cpu": cpu, "peak_mib": peak,
                      "result": result}),
          flush=True)


def _warm_up(c: dict, dev) -> None:
    """One untimed epoch of each architecture on one batch, alone: a process's first training
    pays a fixed 1.8 s of CPU (library set-up; ConvNet width 32, 28 px, one thread), which
    every rank would pay again and a long run amortises."""
    from ladd_format.train import train

    for name in c["grid_models"].split(",") + ["convnet"]:
        train(c["container"], model=name, width=32 if name.startswith("convnet") else None, epochs=1,
              batch_size=c["batch_size"], indices=range(c["batch_size"]), crops_per_image=5, device=dev,
              progress=False, data_parallel=False)


def _label(out: str, c: dict, dev):
    """The timed work of ``label`` (images and labeler made before the timing)."""
    import numpy as np
    import torch

    from ladd_format.labeler import Labeler, LabelerConfig, _build, augment

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (c["images"], c["size"], c["size"], 3), dtype=np.uint8)
    labels = np.arange(c["images"]) % c["classes"]
    config = LabelerConfig("convnet", 3, c["classes"], (c["size"],) * 2, c["width"], 3, (0.5,) * 3, (0.25,) * 3,
                           "synthetic", {})
    torch.manual_seed(0)
    labeler = Labeler(_build(config).to(dev), config, 1)

    def work() -> None:
        augment(out, images, labels, labeler, encoding="uint8", progress=False)
    return work


def _grid(out: str, c: dict, dev):
    """The timed work of ``grid``: the table (test split: 200 other synthetic images)."""
    from ladd_format.testing import example_arrays
    from ladd_format.train import cross_architecture

    images, labels, _ = example_arrays(num_classes=10, ipc=20, size=28, seed=1)
    models = tuple(c["grid_models"].split(","))

    def work():
        rows = cross_architecture(c["container"], images, labels, models=models, seeds=c["grid_seeds"],
                                  parallel="grid", epochs=c["epochs"], width=32, batch_size=c["batch_size"],
                                  crops_per_image=5, device=dev, progress=False)
        return [r["accuracies"] for r in rows]
    return work


def _data(out: str, c: dict, dev):
    """The timed work of ``data``: the per-epoch losses."""
    from ladd_format.train import train

    return lambda: train(c["container"], model="convnet", width=32, epochs=c["epochs"], batch_size=c["batch_size"],
                         crops_per_image=5, device=dev, progress=False).losses


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(job: str, world: int, out: Path, config: dict) -> list[dict]:
    port = _port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        else:
            for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(key, None)
        procs.append(subprocess.Popen([sys.executable, __file__, "--rank-main", job, str(out), json.dumps(config)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rows = []
    for p in procs:  # rank order
        stdout, stderr = p.communicate(timeout=3600)
        if p.returncode:
            raise SystemExit(f"a rank failed:\n{stderr[-3000:]}")
        rows.append(json.loads(stdout.strip().splitlines()[-1]))
    return rows


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _section(job: str, args: argparse.Namespace, config: dict, tmp: Path, worlds: list[int]) -> list[str]:
    """One job's table: each world size, against the first (one rank)."""
    if job == "label":
        title = (f"## Labeling: M = {args.images} images of {args.size} px, K = {args.classes}, 25 crops each "
                 f"({args.images * 25} crops), zoo ConvNet width {args.width}, uint8 dense labels")
        unit, amount = "crops/s", args.images * 25
    elif job == "grid":
        runs = len(args.grid_models.split(",")) * args.grid_seeds
        title = (f"## Evaluation grid: {args.grid_models} x {args.grid_seeds} seeds ({runs} runs), "
                 f"M = {10 * args.ipc} images of 28 px, {args.epochs} epochs, batch {args.batch_size}, "
                 "5 crops an image, ConvNet width 32, --parallel grid")
        unit, amount = "runs/min", runs * 60
    else:
        title = (f"## Data-parallel training: one ConvNet (width 32), M = {10 * args.ipc} images of 28 px, "
                 f"{args.epochs} epochs, global batch {args.batch_size}, 5 crops an image")
        unit, amount = "images/s", 10 * args.ipc * args.epochs
    same = "losses vs 1 rank (max rel. diff)" if job == "data" else "equal to 1 rank"
    lines = [title, "", f"| ranks | seconds | {unit} | speed-up | efficiency | CPU s per rank | "
             f"peak RSS per rank (MiB) | {same} |", "|---|---|---|---|---|---|---|---|"]
    base = None
    for world in worlds:
        out = tmp / f"{job}{world}.ladd"
        rows = _run(job, world, out, config)
        seconds = max(r["seconds"] for r in rows)
        result = _digest(out) if job == "label" else rows[0]["result"]
        base = base or (seconds, result)
        speed = base[0] / seconds
        if job == "data":
            same = f"{max(abs(a - b) / abs(b) for a, b in zip(result, base[1])):.1e}"
        else:
            same = "yes" if result == base[1] else "NO"
        cpu = ", ".join(f"{r['cpu']:.1f}" for r in rows)
        lines.append(f"| {world} | {seconds:.2f} | {amount / seconds:,.1f} | {speed:.2f} x | {speed / world:.0%} | "
                     f"{cpu} | {', '.join(str(r['peak_mib']) for r in rows)} | {same} |")
        print(lines[-1], flush=True)
    return lines + [""]


def main() -> None:
    if sys.argv[1:2] == ["--rank-main"]:
        _rank_main(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="label,grid,data", help="comma-separated: label, grid, data")
    parser.add_argument("--images", type=int, default=2000, help="label: images")
    parser.add_argument("--size", type=int, default=32, help="label: image side")
    parser.add_argument("--classes", type=int, default=1000, help="label: classes")
    parser.add_argument("--width", type=int, default=64, help="label: labeler width")
    parser.add_argument("--grid-models", default="convnet", help="grid: architectures")
    parser.add_argument("--grid-seeds", type=int, default=4, help="grid: seeds per architecture")
    parser.add_argument("--ipc", type=int, default=20, help="grid, data: images per class (10 classes)")
    parser.add_argument("--epochs", type=int, default=4, help="grid, data: epochs")
    parser.add_argument("--batch-size", type=int, default=50, help="grid, data: (global) batch size")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="label M = 400; grid and data 2 epochs")
    parser.add_argument("--out", type=Path, help="write the tables (markdown) here too")
    args = parser.parse_args()
    if args.quick:
        args.images, args.epochs = 400, 2
    import torch

    from ladd_format.testing import write_example

    worlds = [int(w) for w in args.ranks.split(",")]
    lines = [f"# Distributed jobs, 1 rank against more ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"{platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}"
             + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
             + f", one thread a rank; load before: {os.getloadavg()[0]:.2f}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        container = write_example(Path(tmp) / "train.ladd", num_classes=10, ipc=args.ipc, size=28)
        config = {**vars(args), "out": None, "container": str(container)}
        for job in args.jobs.split(","):
            lines += _section(job, args, config, Path(tmp), worlds)
    lines += [f"load after: {os.getloadavg()[0]:.2f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
