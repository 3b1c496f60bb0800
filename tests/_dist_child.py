"""One rank of the distributed tests (run by tests/test_distributed.py, under the environment
torchrun would set). argv: task, target folder, encodings (comma-separated), behaviour; one
container per encoding, ``<folder>/<encoding>.ladd``. Task ``train``: the third argument is
the mode; ``train`` and ``train_seeds`` on ``<folder>/src.ladd``, saved to
``<folder>/train-<mode>-<world>-<rank>.pt``. Task ``grid``: :func:`cross_architecture` of two
architectures x two seeds, the table saved to ``<folder>/grid-<world>-<rank>.pt``."""

from __future__ import annotations

import sys
import time

import torch

from ladd_format import _write, seeds
from ladd_format.distributed import init_from_env, rank_world
from ladd_format.labeler import Labeler, LabelerConfig, _build, augment
from ladd_format.testing import example_arrays
from ladd_format.train import cross_architecture, train, train_seeds

TRAIN = dict(model="convnet", width=8, epochs=2, batch_size=13, crops_per_image=3, progress=False, device="cpu")
"""20 images in global batches of 13 and 7: neither splits evenly over 2 ranks (train_seeds
takes 19 and 1: rank 0 has no image in the last batch)."""


GRID = {k: v for k, v in TRAIN.items() if k != "model"}


def _slow_steps() -> None:
    """Make this rank's steps slow, saying when it has trained one."""
    sum_gradients = seeds.sum_gradients
    calls = []

    def slow(params):
        calls.append(1)
        if len(calls) == 2:
            print("training", flush=True)
        time.sleep(0.3)
        sum_gradients(params)

    seeds.sum_gradients = slow


def _train(folder: str, mode: str, rank: int, world: int) -> None:
    one = train(f"{folder}/src.ladd", mode=mode, **TRAIN)
    several = train_seeds(f"{folder}/src.ladd", seeds=[0, 3], mode=mode, **{**TRAIN, "batch_size": 19})
    torch.save({"losses": [r.losses for r in (one, *several)],
                "params": [dict(r.model.named_parameters()) for r in (one, *several)]},
               f"{folder}/train-{mode}-{world}-{rank}.pt")


def _grid(folder: str, rank: int, world: int) -> None:
    images, labels, _ = example_arrays(num_classes=4, ipc=5, size=28, seed=1)
    rows = cross_architecture(f"{folder}/src.ladd", images, labels, models=("convnet", "alexnet"), seeds=[0, 3],
                              **{**GRID, "epochs": 1})
    torch.save(torch.tensor([r["accuracies"] for r in rows], dtype=torch.float64), f"{folder}/grid-{world}-{rank}.pt")


class _Slow(torch.nn.Module):
    """Labels like the wrapped network, but slowly, and says when it has labelled a batch."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            print("labelling", flush=True)
        time.sleep(0.3)
        return self.net(x)


class _NaN(torch.nn.Module):
    """A broken labeler: its output is refused by the writer's checks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), 10), float("nan"))


def main() -> None:
    task, folder, encodings, behaviour = sys.argv[1:5]
    torch.set_num_threads(1)
    _write.CHUNK_BYTES = 2000  # several dense chunks for a few images
    init_from_env(timeout_s=60)
    rank, world = rank_world()
    if task in ("train", "grid"):
        if behaviour == f"slow-{rank}":
            _slow_steps()
        try:
            _train(folder, encodings, rank, world) if task == "train" else _grid(folder, rank, world)
        except Exception as exc:
            print(f"error {type(exc).__name__}: {exc}", flush=True)
            sys.exit(3)
        print(f"done {rank} {world}", flush=True)
        return
    images, labels, _ = example_arrays(num_classes=10, ipc=4, size=28)
    config = LabelerConfig("convnet", 3, 10, (28, 28), 8, 2, (0.5,) * 3, (0.25,) * 3, "synthetic", {})
    torch.manual_seed(0)
    net = _build(config)
    if behaviour == f"slow-{rank}":
        net = _Slow(net)
    if behaviour == f"fail-{rank}":
        net = _NaN()
    labeler = Labeler(net, config, 1)
    for encoding in encodings.split(","):
        params = {"k": 3, "rule": "smoothing"} if encoding == "topk" else None
        try:
            augment(f"{folder}/{encoding}.ladd", images, labels, labeler, encoding=encoding, encoding_params=params,
                    batch_size=75, progress=rank == 0 and task == "progress")
        except Exception as exc:
            print(f"error {type(exc).__name__}: {exc}", flush=True)
            sys.exit(3)
    print(f"done {rank} {world}", flush=True)


if __name__ == "__main__":
    main()
