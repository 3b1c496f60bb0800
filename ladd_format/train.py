"""The deployment trainer: train a test model on a container, evaluate it on real test data.

Modes, for the paper's comparisons:
- ``"ladd"``: Eq. 5, CE(full image, hard label) + crop_weight * soft CE(crop, dense label);
- ``"hard"``: full images with hard labels (the baseline);
- ``"soft"``: full images with soft labels (the mean of each image's dense labels);
- ``"crops-only"``: crops with dense labels only.

The crop term is averaged over crops by default (``crop_reduction="mean"``), so it weighs
as much as the full-image term and the baseline's learning rate stays stable; with
``"sum"`` it is summed over each image's crops, the literal Eq. 5, which scales the crop
gradient by the number of crops per image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._torch import normalise, resolve_device
from ._read import LaddDataset
from ._read import open as open_container
from .errors import InvalidInputError
from .loader import DeviceLoader
from .models import build_model

MODES = ("ladd", "hard", "soft", "crops-only")


@dataclass
class TrainResult:
    """A trained model with what produced it."""

    model: torch.nn.Module
    settings: dict[str, Any]
    losses: list[float] = field(default_factory=list)  # mean loss per epoch


def ladd_loss(full_logits: torch.Tensor | None, labels: torch.Tensor | None,
              crop_logits: torch.Tensor | None, dense: torch.Tensor | None, *,
              crop_weight: float = 1.0, crop_reduction: str = "mean", crops_per_image: int = 1) -> torch.Tensor:
    """Eq. 5. Either part may be ``None`` (hard / crops-only); ``labels`` may be soft [B, K].

    ``crop_reduction="sum"`` sums the crop term over each image's ``crops_per_image`` crops
    (then averages over images), ``"mean"`` averages it over all crops.
    """
    if crop_reduction not in ("mean", "sum"):
        raise InvalidInputError(f"crop_reduction must be 'mean' or 'sum', got {crop_reduction!r}")
    total = torch.zeros((), device=(full_logits if full_logits is not None else crop_logits).device)
    if full_logits is not None:
        total = total + F.cross_entropy(full_logits.float(), labels)
    if crop_logits is not None and len(crop_logits):
        per_crop = -(dense * F.log_softmax(crop_logits.float(), dim=-1)).sum(-1)
        term = per_crop.mean() * (crops_per_image if crop_reduction == "sum" else 1)
        total = total + crop_weight * term
    return total


def train(
    dataset: LaddDataset | str | os.PathLike[str], *, mode: str = "ladd", model: str = "convnet",
    epochs: int = 300, lr: float = 0.01, batch_size: int = 256, momentum: float = 0.9,
    weight_decay: float = 5e-4, augment: str | None = "dsa", crops_per_image: int | str = "all",
    crop_weight: float = 1.0, crop_reduction: str = "mean", width: int | None = None,
    depth: int | None = None, indices: Any = None, seed: int = 0,
    device: str | torch.device | None = None, amp: bool = True, progress: bool = True,
) -> TrainResult:
    """Train a fresh ``model`` on a container (or the ``indices`` subset of it).

    The field's protocol: SGD with momentum 0.9 and weight decay 5e-4, batch 256, the
    learning rate x0.1 after half the epochs, DSA on images and crops. ``amp`` uses bfloat16
    autocast on CUDA (ignored on CPU).
    """
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
    if epochs < 1 or lr <= 0:
        raise InvalidInputError("epochs must be >= 1 and lr > 0")
    ds = open_container(dataset) if not isinstance(dataset, LaddDataset) else dataset
    if indices is not None:
        ds = ds.subset(indices)
    dev = resolve_device(device)
    info = ds.manifest.image
    torch.manual_seed(seed)
    net = build_model(model, info.channels, ds.num_classes, (info.height, info.width),
                      width=width, depth=depth).to(dev)
    k = 0 if mode in ("hard", "soft") else crops_per_image
    loader = DeviceLoader(ds, batch_size=batch_size, device=dev, crops_per_image=k, shuffle=True,
                          seed=seed, augment=augment)
    soft = torch.from_numpy(np.asarray(ds.dense_labels).mean(axis=1)).to(dev) if mode == "soft" else None
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs // 2], gamma=0.1)
    use_amp = amp and dev.type == "cuda"
    settings = dict(mode=mode, model=model, epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                    weight_decay=weight_decay, augment=augment, crops_per_image=crops_per_image,
                    crop_weight=crop_weight, crop_reduction=crop_reduction, width=width, depth=depth,
                    seed=seed, images=len(ds), device=str(dev), amp=use_amp)
    result = TrainResult(net, settings)
    bar = tqdm(range(epochs), desc=f"train {mode}", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        net.train()
        total, steps = 0.0, 0
        for batch in loader:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = _step_loss(net, batch, mode, soft, crop_weight, crop_reduction, loader.k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        schedule.step()
        result.losses.append(total / max(1, steps))
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
    net.eval()
    return result


def _step_loss(net, batch, mode, soft, crop_weight, crop_reduction, k) -> torch.Tensor:
    if mode == "crops-only":
        return ladd_loss(None, None, net(batch.crops), batch.dense, crop_weight=1.0,
                         crop_reduction=crop_reduction, crops_per_image=k)
    if mode in ("hard", "soft"):
        labels = batch.labels if mode == "hard" else soft[batch.index]
        return ladd_loss(net(batch.images), labels, None, None)
    logits = net(torch.cat([batch.images, batch.crops]))
    b = len(batch.images)
    return ladd_loss(logits[:b], batch.labels, logits[b:], batch.dense, crop_weight=crop_weight,
                     crop_reduction=crop_reduction, crops_per_image=k)


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, mean: Any, std: Any, *,
             batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on uint8 [N, H, W, C] images normalised with mean/std."""
    dev = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = torch.tensor(images[start:start + batch_size], device=dev).permute(0, 3, 1, 2)
        pred = model(normalise(x, mean, std)).argmax(-1).cpu().numpy()
        correct += int((pred == labels[start:start + batch_size]).sum())
    return correct / max(1, len(labels))


def cross_architecture(dataset: LaddDataset | str | os.PathLike[str], test_images: np.ndarray,
                       test_labels: np.ndarray, *, models: tuple[str, ...] = ("convnet",), seeds: int = 3,
                       mode: str = "ladd", **train_kwargs: Any) -> list[dict[str, Any]]:
    """The field's protocol: each architecture trained ``seeds`` times; mean and std accuracy."""
    ds = open_container(dataset) if not isinstance(dataset, LaddDataset) else dataset
    info = ds.manifest.image
    rows = []
    for name in models:
        accs: list[float] = []
        kwargs = train_kwargs if name.lower().startswith("convnet") else \
            {k: v for k, v in train_kwargs.items() if k not in ("width", "depth")}  # ConvNet-only knobs
        for seed in range(seeds):
            result = train(ds, mode=mode, model=name, seed=seed, **kwargs)
            accs.append(evaluate(result.model, test_images, test_labels, info.mean, info.std))
        rows.append({"model": name, "mode": mode, "accuracy_mean": float(np.mean(accs)),
                     "accuracy_std": float(np.std(accs)), "accuracies": accs})
    return rows
