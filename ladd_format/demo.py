"""``ladd demo``: real data -> distilled set -> labeler -> container -> test models -> table.

On Fashion-MNIST: a seeded random-real selection of IPC + 1 images per class (IPC for the
baseline and LADD, all IPC + 1 for baseline++, so the sets are nested), or with ``images="dm"``
sets of IPC and IPC + 1 images per class distilled by Distribution Matching, a ConvNet labeler,
dense labels for every crop, a LADD container, and one ConvNet per method and seed (3 seeds
by default, trained over one upload with :func:`~ladd_format.train.train_seeds`), each tested
on the 10,000 real test images; the table gives mean +/- std over the seeds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._read import LaddDataset
from ._read import open as open_container
from ._torch import cpu_bf16_units, resolve_device
from .distill import distill_dm
from .errors import InvalidInputError
from .labeler import Labeler, augment, train_labeler
from .presets import get_preset
from .sources import SourceDataset, fashion_mnist, random_real
from .train import cross_architecture


IMAGE_SETS = ("random-real", "dm")
"""The demo's distilled images: a seeded random-real draw, or Distribution Matching (:mod:`ladd_format.distill`)."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs: IPC, seeds, and the keyword arguments of ``train_labeler`` and
    ``train`` (filled from a preset, see :mod:`ladd_format.presets`)."""

    ipc: int = 10
    seeds: int = 3
    preset: str = "cpu"
    labeler: Mapping[str, Any] = field(default_factory=dict)  # train_labeler keywords
    train: Mapping[str, Any] = field(default_factory=dict)    # train keywords
    encoding: str | None = None  # dense-label encoding of the containers (None: the writer's default)
    images: str = "random-real"  # the distilled images: "random-real" or "dm" (Distribution Matching)
    dm_iterations: int = 150     # DM iterations (the paper: 20,000)

    @classmethod
    def from_preset(cls, preset: str = "cpu", *, ipc: int = 10, seeds: int = 3, encoding: str | None = None,
                    labeler: Mapping[str, Any] | None = None, train: Mapping[str, Any] | None = None,
                    images: str = "random-real", dm_iterations: int = 150) -> DemoSettings:
        """The preset's settings with ``labeler`` / ``train`` keywords overriding them."""
        if images not in IMAGE_SETS:
            raise InvalidInputError(f"images must be one of {IMAGE_SETS}, got {images!r}")
        if isinstance(dm_iterations, bool) or not isinstance(dm_iterations, int) or dm_iterations < 0:
            raise InvalidInputError(f"dm_iterations must be an integer >= 0, got {dm_iterations!r}")
        if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise InvalidInputError(f"ipc must be an integer >= 1, got {ipc!r}")
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise InvalidInputError(f"seeds must be an integer >= 1, got {seeds!r}")
        chosen = get_preset(preset)
        return cls(ipc=ipc, seeds=seeds, preset=chosen.name, encoding=encoding, images=images,
                   dm_iterations=dm_iterations,
                   labeler={**_LABELER_DEFAULTS, **chosen.labeler, **(labeler or {})},
                   train={**_TRAIN_DEFAULTS, **chosen.train, **(train or {})})

    def describe(self) -> list[str]:
        """One line per setting, as the demo prints them."""
        lines = [f"ipc {self.ipc}", f"seeds {self.seeds}", f"encoding {self.encoding or 'uint8 (default)'}",
                 f"images {self.images}" + (f" ({self.dm_iterations} iterations)" if self.images == "dm" else "")]
        lines += [f"labeler.{k} {v}" for k, v in self.labeler.items()]
        lines += [f"train.{k} {v}" for k, v in self.train.items()]
        return lines


_TRAIN_DEFAULTS = {"lr": 0.01, "batch_size": 256, "augment": "dsa", "cpu_amp": cpu_bf16_units()}
_LABELER_DEFAULTS = {"cpu_amp": _TRAIN_DEFAULTS["cpu_amp"]}
"""The labeler too: 37.8 s against 54.3 s in float32 for the cpu preset's, with the same crop
labels (36.9% argmax agreement either way; benchmarks/results/labeler_crops.md)."""


def run_demo(out_dir: str | os.PathLike[str], settings: DemoSettings, *, source: SourceDataset | None = None,
             device: str | torch.device | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the whole pipeline; returns the table rows and paths (also saved as results.json).

    ``phase_seconds`` splits the wall time: the labeler (loading the source included), the
    containers (drawing or distilling the images, labelling their crops, writing both
    containers), then each method's training and testing of its seeds (each row's ``seconds``).

    A finished labeler from an earlier run with the same settings is reused (its digest is
    checked), so an interrupted demo picks up at labeling.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source = source or fashion_mnist()
    s = settings
    labeler = train_labeler(source, **s.labeler, out_dir=out / "labeler", device=device, progress=progress)
    if labeler.reused and progress:
        print(f"reusing the finished labeler {out / 'labeler'} (same settings, sha256 "
              f"{labeler.checkpoint_sha256[:12]}... checked; delete the folder to train it again)")
    labeled = time.perf_counter()
    rows, container = compare(out, source, labeler, s, device=device, progress=progress)
    finished = time.perf_counter()
    trained = sum(row["seconds"] for row in rows)
    phases = {"labeler": labeled - started, "containers": finished - labeled - trained,
              **{row["method"]: row["seconds"] for row in rows}}
    report = {"settings": dataclasses.asdict(s), "container": str(container), "rows": rows,
              "labeler_checkpoint_sha256": labeler.checkpoint_sha256, "labeler_reused": labeler.reused,
              "seconds": finished - started, "phase_seconds": phases}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    return report


def compare(out: Path, source: SourceDataset, labeler: Labeler, s: DemoSettings, *, model: str = "convnet",
            device: str | torch.device | None = None, progress: bool = True) -> tuple[list[dict[str, Any]], Path]:
    """Baseline (IPC, hard), baseline++ (IPC + 1, hard) and LADD (IPC, dense) at ``s.ipc``.

    Writes the IPC and IPC + 1 containers into ``out``; returns the table rows (each with the
    ``seconds`` its seeds took to train and test) and the LADD container's path. Every method
    trains ``s.seeds`` fresh models of ``model`` (:func:`~ladd_format.train.train_seeds`).
    """
    paths = {}
    for ipc, (images, labels, provenance) in _image_sets(source, s, device, progress).items():
        paths[ipc] = augment(out / f"{source.name}_ipc{ipc}.ladd", images, labels, labeler,
                             distillation=provenance, class_names=list(source.class_names), encoding=s.encoding,
                             overwrite=True, progress=progress)
    runs = {"baseline": (paths[s.ipc], "hard"), "baseline++": (paths[s.ipc + 1], "hard"),
            "LADD": (paths[s.ipc], "ladd")}
    rows = []
    for method, (path, mode) in runs.items():
        started = time.perf_counter()
        with open_container(path) as ds:
            row = measure(ds, source, s, mode, model=model, device=device, progress=progress)
        rows.append({"method": method, **row, "seconds": time.perf_counter() - started})
    for row in rows:
        row["overhead_percent"] = 100.0 * (row["bytes"] - rows[0]["bytes"]) / rows[0]["bytes"]
    return rows, paths[s.ipc]


def _image_sets(source: SourceDataset, s: DemoSettings, device: str | torch.device | None,
                progress: bool) -> dict[int, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """The distilled sets at IPC and IPC + 1: (images, labels, provenance) each. Random-real
    sets are nested (the IPC set is the first IPC images of each class of the IPC + 1 draw);
    DM distils each set on its own (its images depend on how many share a class)."""
    if s.images == "dm":
        sets = {}
        for ipc in (s.ipc, s.ipc + 1):
            d = distill_dm(source, ipc, iterations=s.dm_iterations, batch_real=64, width=s.train.get("width"),
                           seed=0, device=device, progress=progress)
            sets[ipc] = (d.images, d.labels, d.distillation)
        return sets
    images, labels, index = random_real(source, s.ipc + 1, seed=0)
    first = np.concatenate([np.flatnonzero(labels == c)[: s.ipc] for c in range(source.num_classes)])
    sets = {}
    for ipc, subset in ((s.ipc, first), (s.ipc + 1, np.arange(len(labels)))):
        details = {"seed": 0, "note": "real train images chosen at random, not distilled",
                   "train_indices": index[subset].tolist()}
        sets[ipc] = (images[subset], labels[subset], {"method": "random-real", "source_dataset": source.name,
                                                      "ipc": ipc, "details": details})
    return sets


def measure(ds: LaddDataset, source: SourceDataset, s: DemoSettings, mode: str, *, model: str = "convnet",
            device: str | torch.device | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``s.seeds`` models on ``ds`` in ``mode`` (:func:`~ladd_format.train.train_seeds`); their accuracy on the source's test
    split and the bytes the method uses (images + labels, plus every dense-label array for LADD).
    A CPU that trains them in bfloat16 (``cpu_amp``) tests them in it too: 10,000 test images
    per model took 3.8-6.7 s in float32, a sixth of the demo's time over its nine models."""
    bf16 = bool(s.train.get("cpu_amp")) and resolve_device(device).type == "cpu"
    row = cross_architecture(ds, source.test_images, source.test_labels, models=(model,), seeds=s.seeds,
                             mode=mode, together=True, eval_amp=bf16, **s.train, device=device,
                             progress=progress)[0]
    stored = ds.stored_bytes()
    nbytes = sum(stored.values()) if mode == "ladd" else stored["images"] + stored["labels"]
    return {**row, "ipc": ds.ipc, "labels": mode, "bytes": int(nbytes)}


def format_table(report: dict[str, Any]) -> str:
    """The demo's table: one row per method, test accuracy as mean +/- std over its seeds."""
    seeds = len(report["rows"][0]["accuracies"]) if report["rows"] else 0
    head = f"test accuracy (%, {seeds} seed{'s' if seeds != 1 else ''})"
    lines = [f"{'method':12s} {'IPC':>4s} {'labels':>7s} {head:>24s} {'bytes':>12s} {'overhead':>9s}"]
    for r in report["rows"]:
        acc = f"{100 * r['accuracy_mean']:.2f} +/- {100 * r['accuracy_std']:.2f}"
        labels = "dense" if r["labels"] == "ladd" else r["labels"]
        lines.append(f"{r['method']:12s} {r['ipc']:>4d} {labels:>7s} {acc:>24s} {r['bytes']:>12,d} "
                     f"{r['overhead_percent']:>+8.2f}%")
    lines.append("bytes: on disk (images + hard labels; LADD adds its dense labels). overhead: on-disk bytes "
                 "beyond the baseline's, the definition ladd inspect and ladd overhead use.")
    precision = {r.get("test_precision", "float32") for r in report["rows"]}
    if precision != {"float32"}:
        lines.append(f"tested in {', '.join(sorted(precision))}, as the models trained.")
    return "\n".join(lines)
