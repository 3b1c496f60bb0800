"""Label augmentation under a process group: 2 gloo ranks on 127.0.0.1, spawned here as
``torchrun`` would (RANK, WORLD_SIZE, MASTER_ADDR/PORT), each bounded in time.

The container of 2 ranks is byte-identical to one process's; a rank that fails or is killed
leaves nothing at the target.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ladd_format
from _helpers import write_idx_folder
from ladd_format._store import sweep

CHILD = str(Path(__file__).with_name("_dist_child.py"))
TIMEOUT = 120


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if world > 1:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    else:
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
    return env


def _start(folder: Path, encodings: str, world: int, behaviour: str = "none", task: str = "label"):
    port = _port()
    return [subprocess.Popen([sys.executable, CHILD, task, str(folder), encodings, behaviour],
                             env=_env(rank, world, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for rank in range(world)]


def _finish(procs) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, stdout, stderr))
    return out


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


def test_two_ranks_write_the_bytes_one_process_writes(tmp_path):
    encodings = ["uint8", "topk", "float16"]
    (result,) = _finish(_start(tmp_path / "one", ",".join(encodings), 1))
    assert result[0] == 0, result
    results = _finish(_start(tmp_path / "two", ",".join(encodings), 2))
    assert [r[0] for r in results] == [0, 0], results
    assert [r[1].split()[:3] for r in results] == [["done", "0", "2"], ["done", "1", "2"]]
    for encoding in encodings:
        single, double = tmp_path / "one" / f"{encoding}.ladd", tmp_path / "two" / f"{encoding}.ladd"
        one, two = _tree(single), _tree(double)
        assert len([k for k in one if "/c/" in k and k.startswith("dense")]) >= 4  # several chunks to share
        assert one == two, encoding  # same chunks, same metadata, same digests
        with ladd_format.open(double, verify=True) as ds:
            assert len(ds) == 40 and np.isfinite(np.asarray(ds.dense_labels)).all()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [f"{e}.ladd" for e in sorted(encodings)]


def test_a_failing_rank_writes_nothing(tmp_path):
    target = tmp_path / "uint8.ladd"
    results = _finish(_start(tmp_path, "uint8", 2, behaviour="fail-1"))
    assert [r[0] for r in results] == [3, 3], results
    assert "InvalidInputError" in results[1][1]  # the broken rank's own error
    assert "DistributedError" in results[0][1] and "another rank failed" in results[0][1]
    assert not target.exists() and _siblings(target) == []


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_leaves_nothing_at_the_target(tmp_path, victim):
    target = tmp_path / "uint8.ladd"
    procs = _start(tmp_path, "uint8", 2, behaviour=f"slow-{victim}")
    deadline = time.monotonic() + TIMEOUT
    while procs[victim].stdout.readline().strip() != "labelling":  # mid-labelling
        assert time.monotonic() < deadline and procs[victim].poll() is None
    procs[victim].send_signal(signal.SIGKILL)
    results = _finish(procs)
    survivor = results[1 - victim]
    assert survivor[0] == 3 and "DistributedError" in survivor[1], survivor
    assert not target.exists()
    if victim == 1:
        assert _siblings(target) == []  # rank 0 removed the stage
    else:  # a killed rank 0 leaves its stage, unlocked: the next writer (or sweep) removes it
        assert sweep(target) and _siblings(target) == []


def test_torchrun_runs_ladd_augment_on_two_ranks(tmp_path):
    """The command line under torchrun (2 processes, gloo, 127.0.0.1): the same container as one process."""
    import torch

    from ladd_format.labeler import Labeler, LabelerConfig, _build
    from ladd_format.testing import write_example

    source = write_example(tmp_path / "src.ladd", num_classes=10, ipc=3, size=28)
    config = LabelerConfig("convnet", 3, 10, (28, 28), 8, 2, (0.5,) * 3, (0.25,) * 3, "synthetic", {})
    torch.manual_seed(0)
    Labeler(_build(config), config, 1).save(tmp_path / "lab.pt")
    args = ["--from", str(source), "--encoding", "float16"]
    env = _env(0, 1, 0)
    one = subprocess.run([sys.executable, "-m", "ladd_format", "augment", str(tmp_path / "lab.pt"),
                          str(tmp_path / "one.ladd"), *args], env=env,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr
    two = _torchrun(["augment", str(tmp_path / "lab.pt"), str(tmp_path / "two.ladd"), *args])
    assert two.stdout.count("wrote") == 1 and "(2 ranks)" in two.stdout  # rank 0 reports, once
    assert _tree(tmp_path / "one.ladd") == _tree(tmp_path / "two.ladd")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The training container of tests/_dist_child.py: 20 images of 28 px, 4 classes."""
    from ladd_format.testing import write_example

    folder = tmp_path_factory.mktemp("dist-train")
    write_example(folder / "src.ladd", num_classes=4, ipc=5, size=28)
    return folder


@pytest.mark.parametrize("mode", ["ladd", "hard"])
def test_two_ranks_train_as_one_process(small, mode):
    """Data parallel train() and train_seeds() on 2 ranks, global batches of 13 and 7 images (odd
    shares; train_seeds 19 and 1, an empty share): the per-epoch losses and the trained
    parameters are one process's, within float reassociation (rtol 1e-5, atol 1e-6), and both
    ranks return the same model."""
    import torch

    procs = _start(small, mode, 1, task="train") + _start(small, mode, 2, task="train")
    results = _finish(procs)
    assert [r[0] for r in results] == [0, 0, 0], results
    one, *two = (torch.load(small / f"train-{mode}-{w}-{r}.pt") for w, r in ((1, 0), (2, 0), (2, 1)))
    assert len(one["losses"]) == 3  # train(seed 0), then train_seeds(seeds [0, 3])
    np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=1e-5)
    assert two[0]["losses"] == two[1]["losses"]
    for single, first, second in zip(one["params"], two[0]["params"], two[1]["params"]):
        for name in single:
            assert torch.equal(first[name], second[name]), name
            torch.testing.assert_close(first[name], single[name], rtol=1e-5, atol=1e-6)


def test_a_rank_killed_while_training_stops_the_others(small):
    procs = _start(small, "ladd", 2, behaviour="slow-1", task="train")
    deadline = time.monotonic() + TIMEOUT
    while procs[1].stdout.readline().strip() != "training":  # mid-training
        assert time.monotonic() < deadline and procs[1].poll() is None
    procs[1].send_signal(signal.SIGKILL)
    survivor = _finish(procs)[0]
    assert survivor[0] == 3 and "DistributedError" in survivor[1], survivor


def test_two_ranks_fill_the_grid_of_one_process(small):
    """cross_architecture's grid (convnet and alexnet x 2 seeds) on 2 ranks: each rank trains
    one architecture; the table every rank returns is one process's, exactly."""
    import torch

    results = _finish(_start(small, "-", 1, task="grid") + _start(small, "-", 2, task="grid"))
    assert [r[0] for r in results] == [0, 0, 0], results
    one, *two = (torch.load(small / f"grid-{w}-{r}.pt") for w, r in ((1, 0), (2, 0), (2, 1)))
    assert one.shape == (2, 2) and torch.equal(two[0], one) and torch.equal(two[1], one)


def _ladd_train(tmp_path: Path, *options: str) -> list[str]:
    """``ladd train`` on a small grayscale container: its arguments."""
    from ladd_format.testing import write_example

    source = tmp_path / "src.ladd"
    if not source.exists():
        write_example(source, num_classes=10, ipc=2, size=28, channels=1)
        write_idx_folder(tmp_path / "idx", 20, 30)
    return ["train", str(source), "--test-source", str(tmp_path / "idx"), "--source-name", "fake-idx",
            "--epochs", "1", "--width", "8", "--crops", "3", "--batch-size", "8", "--device", "cpu", *options]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                           f"--master-port={_port()}", "-m", "ladd_format", *args],
                          env=_env(0, 1, 0), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_runs_the_ladd_train_grid_on_two_ranks(tmp_path):
    """``ladd train --seeds 2`` under torchrun: one (convnet, seed) run per rank, the table printed
    once, equal to one process's."""
    args = _ladd_train(tmp_path, "--seeds", "2")
    one = subprocess.run([sys.executable, "-m", "ladd_format", *args], env=_env(0, 1, 0), capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr
    two = _torchrun(args)
    assert two.stdout.count("test accuracy") == 1 and "(2 ranks, --parallel auto)" in two.stdout
    assert two.stdout.splitlines()[:2] == one.stdout.splitlines()[:2]


def test_torchrun_runs_ladd_train_data_parallel(tmp_path):
    """``ladd train --parallel data``: one run over both ranks; rank 0 prints the table, once."""
    two = _torchrun(_ladd_train(tmp_path, "--parallel", "data"))
    assert two.stdout.count("test accuracy") == 1 and two.stdout.count("convnet") == 1
    assert "(2 ranks, --parallel data)" in two.stdout


@pytest.mark.parametrize("device, backend", [(None, "nccl"), ("cuda", "nccl"), ("cpu", "gloo")])
def test_the_backend_follows_the_device(monkeypatch, device, backend):
    """On a CUDA machine ranks join NCCL with one GPU each, unless the run asks for the CPU."""
    import torch
    import torch.distributed as dist

    from ladd_format import distributed

    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda name, **kw: joined.append(name))
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    rank_device = distributed.init_from_env(device=device)
    assert joined == [backend]
    assert rank_device == (torch.device("cpu") if backend == "gloo" else torch.device("cuda", 1))
