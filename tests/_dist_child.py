"""One rank of the distributed tests (run by tests/test_distributed.py, under the environment
torchrun would set). argv: task, target folder, encodings (comma-separated), behaviour; one
container per encoding, ``<folder>/<encoding>.ladd``."""

from __future__ import annotations

import sys
import time

import torch

from ladd_format import _write
from ladd_format.distributed import init_from_env, rank_world
from ladd_format.labeler import Labeler, LabelerConfig, _build, augment
from ladd_format.testing import example_arrays


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
