"""``ladd demo``: real data -> distilled set -> labeler -> container -> test models -> table.

On Fashion-MNIST: a seeded random-real selection of IPC + 1 images per class (IPC for the
baseline and LADD, all IPC + 1 for baseline++, so the sets are nested), a ConvNet labeler,
dense labels for every crop, a LADD container, and one ConvNet per method and seed, each
tested on the 10,000 real test images.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._read import LaddDataset
from ._read import open as open_container
from .labeler import Labeler, augment, train_labeler
from .sources import SourceDataset, fashion_mnist, random_real
from .train import cross_architecture


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs. ``reduced()`` fits about 10 minutes on a 2-core CPU."""

    ipc: int = 10
    seeds: int = 1
    labeler_width: int = 128
    labeler_epochs: int = 10
    labeler_images: int | None = None  # None: the whole train split
    model_width: int = 128
    epochs: int = 1000
    lr: float = 0.01
    batch_size: int = 256
    crops_per_image: int | str = "all"
    augment: str | None = "dsa"
    encoding: str | None = None  # dense-label encoding of the containers (None: the writer's default)

    @classmethod
    def reduced(cls, **overrides: Any) -> DemoSettings:
        return dataclasses.replace(cls(labeler_width=64, labeler_images=6000, model_width=64, epochs=200,
                                       crops_per_image=5), **overrides)

    @classmethod
    def full(cls, **overrides: Any) -> DemoSettings:
        return dataclasses.replace(cls(), **overrides)


def run_demo(out_dir: str | os.PathLike[str], settings: DemoSettings, *, source: SourceDataset | None = None,
             device: str | torch.device | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the whole pipeline; returns the table rows and paths (also saved as results.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source = source or fashion_mnist()
    s = settings
    labeler = train_labeler(source, width=s.labeler_width, epochs=s.labeler_epochs,
                            train_subset=s.labeler_images, out_dir=out / "labeler", device=device,
                            progress=progress)
    rows, container = compare(out, source, labeler, s, device=device, progress=progress)
    report = {"settings": dataclasses.asdict(s), "container": str(container), "rows": rows,
              "labeler_checkpoint_sha256": labeler.checkpoint_sha256,
              "seconds": time.perf_counter() - started}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    return report


def compare(out: Path, source: SourceDataset, labeler: Labeler, s: DemoSettings, *, model: str = "convnet",
            device: str | torch.device | None = None, progress: bool = True) -> tuple[list[dict[str, Any]], Path]:
    """Baseline (IPC, hard), baseline++ (IPC + 1, hard) and LADD (IPC, dense) at ``s.ipc``.

    Writes the IPC and IPC + 1 containers into ``out``; returns the table rows and the LADD
    container's path. Every method trains ``s.seeds`` fresh models of ``model``.
    """
    images, labels, index = random_real(source, s.ipc + 1, seed=0)
    first = np.concatenate([np.flatnonzero(labels == c)[: s.ipc] for c in range(source.num_classes)])
    provenance = {"method": "random-real", "source_dataset": source.name,
                  "details": {"seed": 0, "note": "real train images chosen at random, not distilled"}}
    paths = {}
    for ipc, subset in ((s.ipc, first), (s.ipc + 1, np.arange(len(labels)))):
        details = {**provenance["details"], "train_indices": index[subset].tolist()}
        paths[ipc] = augment(out / f"{source.name}_ipc{ipc}.ladd", images[subset], labels[subset], labeler,
                             distillation={**provenance, "ipc": ipc, "details": details},
                             class_names=list(source.class_names), encoding=s.encoding, overwrite=True,
                             progress=progress)
    runs = {"baseline": (paths[s.ipc], "hard"), "baseline++": (paths[s.ipc + 1], "hard"),
            "LADD": (paths[s.ipc], "ladd")}
    rows = []
    for method, (path, mode) in runs.items():
        with open_container(path) as ds:
            rows.append({"method": method, **measure(ds, source, s, mode, model=model, device=device,
                                                      progress=progress)})
    for row in rows:
        row["overhead_percent"] = 100.0 * (row["bytes"] - rows[0]["bytes"]) / rows[0]["bytes"]
    return rows, paths[s.ipc]


def measure(ds: LaddDataset, source: SourceDataset, s: DemoSettings, mode: str, *, model: str = "convnet",
            device: str | torch.device | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``s.seeds`` models on ``ds`` in ``mode``; their accuracy on the source's test split
    and the bytes the method uses (images + labels, plus every dense-label array for LADD)."""
    row = cross_architecture(ds, source.test_images, source.test_labels, models=(model,), seeds=s.seeds,
                             mode=mode, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
                             crops_per_image=s.crops_per_image, augment=s.augment, width=s.model_width,
                             device=device, progress=progress)[0]
    stored = ds.stored_bytes()
    nbytes = sum(stored.values()) if mode == "ladd" else stored["images"] + stored["labels"]
    return {**row, "ipc": ds.ipc, "labels": mode, "bytes": int(nbytes)}


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'method':12s} {'IPC':>4s} {'labels':>7s} {'test accuracy (%)':>20s} {'bytes':>12s} {'overhead':>9s}"]
    for r in report["rows"]:
        acc = f"{100 * r['accuracy_mean']:.2f}"
        if len(r["accuracies"]) > 1:
            acc += f" +/- {100 * r['accuracy_std']:.2f}"
        labels = "dense" if r["labels"] == "ladd" else r["labels"]
        lines.append(f"{r['method']:12s} {r['ipc']:>4d} {labels:>7s} {acc:>20s} {r['bytes']:>12,d} "
                     f"{r['overhead_percent']:>+8.1f}%")
    return "\n".join(lines)
