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

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._store import rows_per_block
from ._torch import normalise, resolve_device
from ._read import LaddDataset
from ._read import open as open_container
from .errors import InvalidInputError
from .loader import Batch, DeviceLoader
from .models import build_model
from .presets import Preset, resolve

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


PASS_BYTES_CPU = 2 << 30
"""Activation budget of one forward/backward pass on a CPU (see :func:`pass_inputs`)."""

_BYTES_PER_PIXEL = 2200
"""Measured peak bytes per input pixel of a width-128 ConvNet pass (fp32, 28 px padded to 32:
5.7 GB for 2,600 inputs); other widths scale linearly."""


def pass_inputs(image_size: tuple[int, int], width: int | None, device: torch.device) -> int:
    """How many inputs (images + crops) one forward/backward pass may hold by default.

    Sized so a width-128 ConvNet's activations stay near ``PASS_BYTES_CPU`` (2 GiB) on a CPU,
    or half the free memory on CUDA; a step with more inputs is split into micro-batches
    whose gradients are accumulated (the same result up to float rounding).
    """
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] // 2
    else:
        budget = PASS_BYTES_CPU
    per_input = _BYTES_PER_PIXEL * max(32, image_size[0]) * max(32, image_size[1]) * (width or 128) / 128
    return max(1, int(budget // per_input))


def train(
    dataset: LaddDataset | str | os.PathLike[str], *, mode: str = "ladd", model: str = "convnet",
    epochs: int | None = None, lr: float = 0.01, batch_size: int = 256, momentum: float = 0.9,
    weight_decay: float = 5e-4, augment: str | None = "dsa", crops_per_image: int | str | None = None,
    crop_weight: float = 1.0, crop_reduction: str = "mean", width: int | None = None,
    depth: int | None = None, preset: str | Preset | None = None, indices: Any = None, seed: int = 0,
    max_pass_inputs: int | None = None, device: str | torch.device | None = None, amp: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train a fresh ``model`` on a container (or the ``indices`` subset of it).

    The field's protocol: SGD with momentum 0.9 and weight decay 5e-4, batch 256, the
    learning rate x0.1 after half the epochs, DSA on images and crops; ``epochs`` defaults to
    300 and ``crops_per_image`` to ``"all"``. ``preset`` (``"cpu"``, ``"paper"``) fills
    ``epochs``, ``width`` (ConvNets only) and ``crops_per_image`` where they are not given.
    A step whose images and crops exceed ``max_pass_inputs`` (default :func:`pass_inputs`)
    runs as micro-batches with accumulated gradients, which bounds memory and gives the same
    update. ``amp`` uses bfloat16 autocast on CUDA (ignored on CPU).
    """
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
    convnet = model.lower().startswith("convnet")
    knobs = resolve(preset, "train", {"epochs": epochs, "crops_per_image": crops_per_image, "width": width},
                    {"epochs": 300, "crops_per_image": "all", "width": None})
    epochs, crops_per_image = knobs["epochs"], knobs["crops_per_image"]
    width = knobs["width"] if convnet else width  # a preset's width is a ConvNet knob
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1 or not lr > 0 or not math.isfinite(lr):
        raise InvalidInputError(f"epochs must be an integer >= 1 and lr a finite number > 0 (got {epochs!r}, {lr!r})")
    if max_pass_inputs is not None and max_pass_inputs < 1:
        raise InvalidInputError(f"max_pass_inputs must be >= 1, got {max_pass_inputs}")
    ds = open_container(dataset) if not isinstance(dataset, LaddDataset) else dataset
    if indices is not None:
        ds = ds.subset(indices)
    dev = resolve_device(device)
    info = ds.manifest.image
    torch.manual_seed(seed)
    net = build_model(model, info.channels, ds.num_classes, (info.height, info.width),
                      width=width, depth=depth).to(dev)
    k = 0 if mode in ("hard", "soft") else crops_per_image
    if mode in ("ladd", "crops-only") and k == 0:
        raise InvalidInputError(f"crops_per_image=0 trains on no crops: mode {mode!r} needs crops "
                                "(use mode='hard' to train on full images only)")
    loader = DeviceLoader(ds, batch_size=batch_size, device=dev, crops_per_image=k, shuffle=True,
                          seed=seed, augment=augment)
    soft = torch.from_numpy(_image_soft_labels(ds)).to(dev) if mode == "soft" else None
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs // 2], gamma=0.1)
    use_amp = amp and dev.type == "cuda"
    per_pass = max_pass_inputs or pass_inputs((info.height, info.width), width if convnet else None, dev)
    settings = dict(mode=mode, model=model, epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                    weight_decay=weight_decay, augment=augment, crops_per_image=crops_per_image,
                    crop_weight=crop_weight, crop_reduction=crop_reduction, width=width, depth=depth,
                    seed=seed, images=len(ds), device=str(dev), amp=use_amp, max_pass_inputs=per_pass)
    result = TrainResult(net, settings)
    bar = tqdm(range(epochs), desc=f"train {mode}", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        net.train()
        total, steps = 0.0, 0
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            loss = 0.0
            for part, share in _micro_batches(batch, loader.k, per_pass):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    part_loss = _step_loss(net, part, mode, soft, crop_weight, crop_reduction, loader.k) * share
                part_loss.backward()
                loss += part_loss.detach()
            opt.step()
            total, steps = total + float(loss), steps + 1
        schedule.step()
        result.losses.append(total / max(1, steps))
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
    net.eval()
    return result


def _image_soft_labels(ds: LaddDataset) -> np.ndarray:
    """Each image's soft label, the mean of its dense labels [M, K], read a block at a time
    so that the decoded [M, n*n, K] array never exists whole."""
    step = rows_per_block(ds.dense_labels.shape, 4)
    return np.concatenate([np.asarray(ds.dense_labels[i:i + step]).mean(axis=1)
                           for i in range(0, len(ds), step)])


def _micro_batches(batch: Batch, k: int, per_pass: int) -> Iterator[tuple[Batch, float]]:
    """Split a step by images (each with its crops) into passes of at most ``per_pass`` inputs.

    Every term of :func:`ladd_loss` is a mean over the step's images (the crop term over
    their crops), so weighting each part by its share of the images reproduces the step's loss.
    """
    b = len(batch.images)
    images_per_pass = max(1, per_pass // (1 + k))
    if images_per_pass >= b:
        yield batch, 1.0
        return
    for lo in range(0, b, images_per_pass):
        hi = min(b, lo + images_per_pass)
        rows = (batch.crop_image >= lo) & (batch.crop_image < hi)
        yield Batch(batch.images[lo:hi], batch.labels[lo:hi], batch.crops[rows], batch.dense[rows],
                    batch.index[lo:hi], batch.crop_image[rows] - lo, batch.crop_id[rows]), (hi - lo) / b


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


def check_test_set(ds: LaddDataset, images: np.ndarray, labels: np.ndarray) -> None:
    """Refuse a test split that cannot test models trained on ``ds`` (before any training)."""
    info = ds.manifest.image
    expected = (info.height, info.width, info.channels)
    shape = tuple(np.shape(images)[1:])
    if np.ndim(images) != 4 or shape != expected:
        raise InvalidInputError(f"the test images are {'x'.join(map(str, shape))} (H x W x C), the container's "
                                f"{'x'.join(map(str, expected))}: pass a test set that matches the container")
    labels = np.asarray(labels)
    if len(labels) != len(images) or len(labels) == 0:
        raise InvalidInputError(f"the test set needs one label per image and at least one image "
                                f"({len(images)} images, {len(labels)} labels)")
    if labels.min() < 0 or labels.max() >= ds.num_classes:
        raise InvalidInputError(f"test labels lie in [{labels.min()}, {labels.max()}], outside the container's "
                                f"{ds.num_classes} classes")


def check_models(ds: LaddDataset, models: tuple[str, ...], *, width: int | None = None,
                 depth: int | None = None) -> None:
    """Build each architecture once for ``ds``: a bad name or size fails before any training."""
    info = ds.manifest.image
    if not models:
        raise InvalidInputError("no model to train: name at least one (convnet, alexnet, vgg11, resnet18, vit)")
    for name in models:
        convnet = name.lower().startswith("convnet")
        build_model(name, info.channels, ds.num_classes, (info.height, info.width),
                    width=width if convnet else None, depth=depth if convnet else None)


def cross_architecture(dataset: LaddDataset | str | os.PathLike[str], test_images: np.ndarray,
                       test_labels: np.ndarray, *, models: tuple[str, ...] = ("convnet",), seeds: int = 3,
                       mode: str = "ladd", **train_kwargs: Any) -> list[dict[str, Any]]:
    """The field's protocol: each architecture trained ``seeds`` times; mean and std accuracy."""
    ds = open_container(dataset) if not isinstance(dataset, LaddDataset) else dataset
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InvalidInputError(f"seeds must be an integer >= 1, got {seeds!r}")
    check_test_set(ds, test_images, test_labels)
    info = ds.manifest.image
    check_models(ds, models, width=train_kwargs.get("width"), depth=train_kwargs.get("depth"))
    rows = []
    for name in models:
        kwargs = train_kwargs if name.lower().startswith("convnet") else \
            {k: v for k, v in train_kwargs.items() if k not in ("width", "depth")}  # ConvNet-only knobs
        accs: list[float] = []
        for seed in range(seeds):
            result = train(ds, mode=mode, model=name, seed=seed, **kwargs)
            accs.append(evaluate(result.model, test_images, test_labels, info.mean, info.std))
        rows.append({"model": name, "mode": mode, "accuracy_mean": float(np.mean(accs)),
                     "accuracy_std": float(np.std(accs)), "accuracies": accs})
    return rows
