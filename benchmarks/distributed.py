"""Distributed label augmentation: 1 rank against G ranks (gloo on CPU, one thread each; NCCL
with one GPU each on a device machine), the same ImageNet-shaped job, byte-identical output.

    python benchmarks/distributed.py                # M = 2,000 images, K = 1,000, 32 px, 1 and 2 ranks
    python benchmarks/distributed.py --quick        # M = 400
    python benchmarks/distributed.py --ranks 1,2,4 --device cuda   # on a multi-GPU machine

Each configuration runs as processes launched the way ``torchrun`` launches them (RANK,
WORLD_SIZE, MASTER_ADDR=127.0.0.1); every rank times ``augment`` between two barriers, so the
figures leave out interpreter start-up. Reported: seconds, crops/s, speed-up and efficiency
against one rank, each rank's peak RSS (VmHWM), and whether the container's files equal the
single-rank container's byte for byte. The labeler is the zoo ConvNet (width 64, untrained,
seeded: labeling cost does not depend on training) with K = 1,000 classes, uint8 dense labels.
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


def _rank_main(out: str, m: int, size: int, classes: int, width: int, device: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT))
    from ladd_format.distributed import init_from_env, rank_world
    from ladd_format.labeler import Labeler, LabelerConfig, _build, augment

    torch.set_num_threads(1)
    rank_device = init_from_env()
    rank, world = rank_world()
    dev = torch.device(device) if rank_device is None or device == "cpu" else rank_device
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8)
    labels = np.arange(m) % classes
    config = LabelerConfig("convnet", 3, classes, (size, size), width, 3, (0.5,) * 3, (0.25,) * 3, "synthetic", {})
    torch.manual_seed(0)
    labeler = Labeler(_build(config).to(dev), config, 1)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    augment(out, images, labels, labeler, encoding="uint8", progress=False)
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) // 1024
    print(json.dumps({"rank": rank, "world": world, "seconds": seconds, "peak_mib": peak}), flush=True)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, out: Path, args: argparse.Namespace) -> list[dict]:
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
        procs.append(subprocess.Popen([sys.executable, __file__, "--rank-main", str(out), str(args.images),
                                       str(args.size), str(args.classes), str(args.width), args.device],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rows = []
    for p in procs:
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


def main() -> None:
    if sys.argv[1:2] == ["--rank-main"]:
        _rank_main(sys.argv[2], *map(int, sys.argv[3:7]), sys.argv[7])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="M = 400")
    parser.add_argument("--out", type=Path, help="write the table (markdown) here too")
    args = parser.parse_args()
    if args.quick:
        args.images = 400
    import torch

    worlds = [int(w) for w in args.ranks.split(",")]
    lines = [f"# Distributed labeling ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"{platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}"
             + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
             + f"; load before: {os.getloadavg()[0]:.2f}", "",
             f"M = {args.images} images of {args.size} px, K = {args.classes}, 25 crops each "
             f"({args.images * 25} crops), zoo ConvNet width {args.width}, uint8 dense labels, one thread a rank", "",
             "| ranks | seconds | crops/s | speed-up | efficiency | peak RSS per rank (MiB) | bytes equal to 1 rank |",
             "|---|---|---|---|---|---|---|"]
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            out = Path(tmp) / f"w{world}.ladd"
            rows = _run(world, out, args)
            seconds = max(r["seconds"] for r in rows)
            digest = _digest(out)
            base = base or (seconds, digest)
            speed = base[0] / seconds
            lines.append(f"| {world} | {seconds:.2f} | {args.images * 25 / seconds:,.0f} | {speed:.2f} x | "
                         f"{speed / world:.0%} | {', '.join(str(r['peak_mib']) for r in sorted(rows, key=lambda r: r['rank']))} "
                         f"| {'yes' if digest == base[1] else 'NO'} |")
            print(lines[-1], flush=True)
    lines += ["", f"load after: {os.getloadavg()[0]:.2f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
