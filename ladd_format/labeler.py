"""The labeler and label augmentation (the paper's Algorithm 1).

A labeler is a small network trained from scratch on the source data; an early checkpoint
(10 epochs) gives soft labels that are less over-confident and more useful. Label
augmentation passes every crop of every distilled image through it and stores
softmax(logits / T) per crop in a container.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._torch import normalise, resolve_device
from ._write import write
from .errors import InvalidInputError
from .models import build_model
from .sampler import UniformSampler
from .sources import SourceDataset

LABELER_EPOCHS = 10


@dataclass(frozen=True)
class LabelerConfig:
    """Everything needed to rebuild a labeler network; stored beside its checkpoints."""

    architecture: str
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    width: int | None
    depth: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_dataset: str
    training: dict[str, Any]


class Labeler:
    """A trained labeler: maps uint8 or 0..255 float images to logits."""

    def __init__(self, model: torch.nn.Module, config: LabelerConfig, epochs: int,
                 checkpoint_sha256: str | None = None) -> None:
        self.model = model.eval()
        self.config = config
        self.epochs = epochs
        self.checkpoint_sha256 = checkpoint_sha256

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def provenance(self) -> dict[str, Any]:
        """The ``labeler`` member of a manifest."""
        c = self.config
        return {"architecture": c.architecture, "epochs": self.epochs, "source_dataset": c.source_dataset,
                "training": {**c.training, "width": c.width, "depth": c.depth},
                "checkpoint_sha256": self.checkpoint_sha256}

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits for images [B, C, H, W] on the 0..255 scale (normalised here).

        Runs on the labeler's device; the result comes back on the input's device.
        """
        x = normalise(pixels.to(self.device), self.config.mean, self.config.std)
        return self.model(x).float().to(pixels.device)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the weights (a plain state dict) and ``<path>.json`` with the config."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, path)
        meta = {"config": asdict(self.config), "epochs": self.epochs}
        path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta, indent=1))
        return path


def load_labeler(path: str | os.PathLike[str], device: str | torch.device | None = None) -> Labeler:
    """Load a checkpoint written by :meth:`Labeler.save` (``weights_only=True``: no unpickling)."""
    path = Path(path)
    meta_path = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise InvalidInputError(f"{path}: a labeler checkpoint needs the file and {meta_path.name}")
    meta = json.loads(meta_path.read_text())
    cfg = meta["config"]
    config = LabelerConfig(**{**cfg, "image_size": tuple(cfg["image_size"]), "mean": tuple(cfg["mean"]),
                              "std": tuple(cfg["std"])})
    model = _build(config)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Labeler(model.to(resolve_device(device)), config, int(meta["epochs"]), _sha256(path))


def train_labeler(
    source: SourceDataset, *, architecture: str = "convnet", epochs: int = LABELER_EPOCHS,
    lr: float = 0.01, batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4,
    width: int | None = None, depth: int | None = None, train_subset: int | None = None,
    out_dir: str | os.PathLike[str] | None = None, seed: int = 0,
    device: str | torch.device | None = None, progress: bool = True,
) -> Labeler:
    """Train a labeler from scratch on the source's train split (SGD, lr 0.01, batch 256).

    A checkpoint is saved after every epoch in ``out_dir`` (``epoch_XX.pt`` + ``.json``); the
    returned labeler is the last epoch's, with that checkpoint's digest. ``train_subset``
    trains on a seeded class-stratified subset (for CPU-sized runs).
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InvalidInputError("epochs and batch_size must be >= 1 and lr > 0")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    index = np.arange(len(source.train_labels))
    if train_subset is not None and train_subset < len(index):
        index = np.sort(rng.permutation(index)[:train_subset])
    h, w, c = source.image_shape
    config = LabelerConfig(
        architecture=architecture, in_channels=c, num_classes=source.num_classes, image_size=(h, w),
        width=width, depth=depth, mean=source.mean, std=source.std, source_dataset=source.name,
        training={"optimizer": "sgd", "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                  "batch_size": batch_size, "train_images": int(len(index)), "seed": seed,
                  "augmentation": "none"})
    model = _build(config).to(dev)
    images = torch.from_numpy(source.train_images[index]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(source.train_labels[index])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    labeler = Labeler(model, config, 0)
    bar = tqdm(total=epochs * len(index), desc="labeler", unit="img", disable=not progress)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            x = normalise(images[batch].to(dev), source.mean, source.std)
            loss = F.cross_entropy(model(x), labels[batch].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(len(batch))
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        labeler = Labeler(model, config, epoch)
        if out_dir is not None:
            checkpoint = labeler.save(Path(out_dir) / f"epoch_{epoch:02d}.pt")
            labeler.checkpoint_sha256 = _sha256(checkpoint)
    bar.close()
    return labeler


@torch.no_grad()
def label_crops(images: np.ndarray | torch.Tensor, labeler: Labeler, *, sampler: UniformSampler | None = None,
                temperature: float = 1.0, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Dense labels [M, n*n, K]: softmax(labeler(crop) / T) for every crop of every image.

    ``images`` are uint8 [M, H, W, C]. Batched on the labeler's device, deterministic.
    """
    if not temperature > 0:
        raise InvalidInputError(f"temperature must be > 0, got {temperature}")
    sampler = sampler or UniformSampler()
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2)
    expected = (labeler.config.in_channels, *labeler.config.image_size)
    if tuple(x.shape[1:]) != expected:
        raise InvalidInputError(f"images are {tuple(x.shape[1:])} (C, H, W); the labeler expects {expected}")
    out = []
    for start in tqdm(range(0, len(x), batch_size), desc="label crops", disable=not progress):
        batch = x[start:start + batch_size].to(labeler.device)
        crops = sampler.crops(batch, flatten=True)  # [B * n*n, C, H, W], image-major, 0..255
        probs = torch.softmax(labeler.logits(crops) / temperature, dim=-1)
        out.append(probs.view(len(batch), sampler.num_crops, -1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def augment(
    path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray, labeler: Labeler, *,
    sampler: UniformSampler | None = None, temperature: float = 1.0,
    distillation: Mapping[str, Any] | None = None, class_names: list[str] | None = None,
    encoding: str | None = None, overwrite: bool = False, progress: bool = True, **write_kwargs: Any,
) -> Path:
    """Algorithm 1: label every crop of every distilled image and write the LADD container."""
    sampler = sampler or UniformSampler()
    dense = label_crops(images, labeler, sampler=sampler, temperature=temperature, progress=progress)
    return write(path, images, labels, dense, sampler=sampler, temperature=temperature, encoding=encoding,
                 class_names=class_names, mean=list(labeler.config.mean), std=list(labeler.config.std),
                 labeler=labeler.provenance(), distillation=distillation, overwrite=overwrite, **write_kwargs)


def _build(config: LabelerConfig) -> torch.nn.Module:
    return build_model(config.architecture, config.in_channels, config.num_classes, config.image_size,
                       depth=config.depth, width=config.width)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
