"""Distribution Matching (DM; Zhao & Bilen, "Dataset Condensation with Distribution Matching",
WACV 2023): a small, faithful image-level distiller, so that a LADD container can hold
distilled images rather than random real ones.

As the reference code (VICO-UoE/DatasetCondensation ``main_DM.py``) does it: the synthetic
images start as real images of their class (here the seeded :func:`~ladd_format.sources.random_real`
draw, so ``iterations=0`` gives exactly the random-real set); every iteration draws a freshly
initialised ConvNet (not trained, parameters frozen) and, per class, a fresh batch of real
images; one Siamese DSA draw (one parameter set for every image of the class, the reference's
``Siamese`` mode) augments the real batch and the class's synthetic images alike; the loss is
the sum over classes of ``||mean embed(real) - mean embed(syn)||^2``, where the embedding is the
ConvNet's output before its final Linear (the reference's ``ConvNet.embed``); SGD with momentum
updates the pixels. The paper runs 20,000 iterations (lr 1.0, momentum 0.5, 256 real images per
class); CPU-sized runs use far fewer.

Memory: the synthetic images (float32) and their momentum buffer, plus one class's real batch
at a time, decoded to float only when drawn; the source's uint8 train array is indexed, never
converted whole. Each class's loss is back-propagated on its own (the same gradient as one
backward of the sum), so one class's graph is held at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._torch import channel_stats, normalise, resolve_device
from .dsa import STRATEGY, apply_dsa, sample_dsa
from .errors import InvalidInputError
from .models import build_model
from .sources import SourceDataset, random_real

DM_LR = 1.0
DM_MOMENTUM = 0.5
DM_BATCH_REAL = 256
DM_ITERATIONS = 20_000
"""The paper's settings (lr_img, momentum, batch_real, Iteration of ``main_DM.py``)."""

_REFERENCE = "Zhao & Bilen, Dataset Condensation with Distribution Matching, WACV 2023"


@dataclass(frozen=True)
class DistilledImages:
    """What :func:`distill_dm` made: the images as a container stores them, and their provenance.

    ``distillation`` is the ``distillation`` member for :func:`~ladd_format.labeler.augment` or
    :func:`~ladd_format.write`; ``normalised`` holds the float pixels before rounding (to
    measure what rounding to uint8 costs); ``losses`` the DM loss of every iteration.
    """

    images: np.ndarray          # uint8 [M, H, W, C], class by class
    labels: np.ndarray          # int64 [M]
    distillation: dict[str, Any]
    normalised: np.ndarray      # float32 [M, H, W, C], in the source's normalised space
    losses: tuple[float, ...]


def distill_dm(source: SourceDataset, ipc: int, *, iterations: int, batch_real: int = DM_BATCH_REAL,
               lr: float = DM_LR, momentum: float = DM_MOMENTUM, width: int | None = None,
               depth: int | None = None, clip: bool = False, seed: int = 0,
               device: str | torch.device | None = None, progress: bool = True) -> DistilledImages:
    """Distil ``ipc`` images per class of ``source``'s train split with Distribution Matching.

    ``width``/``depth`` size the random ConvNets (defaults: the field's width 128 and the depth
    :func:`~ladd_format.models.build_model` picks, ConvNetD3 at 28-32 px). ``clip`` projects the
    pixels onto the storable range 0..255 after every step (the reference leaves them unbounded,
    and rounding to uint8 then clamps whatever left it). The same ``seed``
    gives the same images on the same device. Arguments are checked before any work; raises
    :class:`~ladd_format.errors.InvalidInputError` on bad ones, or if the pixels stop being finite.
    """
    _check_args(source, ipc, iterations, batch_real, lr, momentum, seed)
    if not isinstance(clip, bool):
        raise InvalidInputError(f"clip must be True or False, got {clip!r}")
    ipc, iterations, batch_real, seed = int(ipc), int(iterations), int(batch_real), int(seed)  # numpy ints too
    dev = resolve_device(device)
    probe = _embedder(source, width, depth, seed=0)  # checks width and depth before any work
    init, labels, index = random_real(source, ipc, seed=seed)
    syn = normalise(_to_tensor(init, dev), source.mean, source.std).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    low, high = (normalise(torch.full((1, 1, 1, 1), v, device=dev), source.mean, source.std) for v in (0, 255))
    pools = _class_pools(source)
    rng = np.random.default_rng([seed, 1])
    gen = torch.Generator().manual_seed(seed)
    losses = []
    bar = tqdm(range(iterations), desc="DM", unit="it", disable=not progress)
    for it in bar:
        embed = _embedder(source, width, depth, seed=int(rng.integers(2**62))).to(dev)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for cls, real in _real_batches(source, pools, batch_real, rng, dev):
            loss += _class_loss(embed, real, syn[cls * ipc:(cls + 1) * ipc], gen, backward=True)
        if not math.isfinite(loss):
            raise InvalidInputError(f"DM diverged at iteration {it + 1} (loss {loss}): lower lr (got {lr})")
        opt.step()
        if clip:
            with torch.no_grad():
                syn.clamp_(low, high)
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")
    pixels = syn.detach()
    if not bool(torch.isfinite(pixels).all()):
        raise InvalidInputError(f"DM diverged: non-finite pixels after {iterations} iterations; lower lr")
    settings = {"iterations": iterations, "lr": float(lr), "momentum": float(momentum),
                "batch_real": batch_real, "seed": seed, "architecture": "convnet",
                "width": probe.width, "depth": probe.depth, "norm": "instancenorm", "clip": clip,
                "dsa_strategy": STRATEGY, "dsa": "siamese: one draw per class per iteration, "
                                                "shared by the real batch and the synthetic images",
                "init": "random-real", "init_train_indices": index.tolist(), "reference": _REFERENCE}
    return DistilledImages(images=to_uint8(pixels, source.mean, source.std), labels=labels.astype(np.int64),
                           distillation={"method": "dm", "source_dataset": source.name, "ipc": ipc,
                                         "details": settings},
                           normalised=pixels.permute(0, 2, 3, 1).cpu().numpy(), losses=tuple(losses))


def matching_loss(source: SourceDataset, images: np.ndarray, labels: np.ndarray, *, networks: int = 8,
                  batch_real: int = DM_BATCH_REAL, width: int | None = None, depth: int | None = None,
                  seed: int = 1000, device: str | torch.device | None = None) -> float:
    """The DM loss of a set of images, averaged over ``networks`` seeded random ConvNets, with
    fixed real batches and no augmentation: a deterministic yardstick (the training loss
    itself draws new networks, batches and DSA every iteration).

    ``images`` are uint8 [M, H, W, C] pixels, or float32 [M, H, W, C] already in the source's
    normalised space (:attr:`DistilledImages.normalised`), so rounding can be measured.
    """
    labels = np.asarray(labels)
    if images.ndim != 4 or labels.shape != (len(images),) or set(labels.tolist()) != set(range(source.num_classes)):
        raise InvalidInputError(f"need images [M, H, W, C] and labels [M] covering all {source.num_classes} "
                                f"classes, got {images.shape} and {labels.shape}")
    dev = resolve_device(device)
    x = _to_tensor(images, dev)
    x = normalise(x, source.mean, source.std) if images.dtype == np.uint8 else x.float()
    pools = _class_pools(source)
    total = 0.0
    for n in range(networks):
        embed = _embedder(source, width, depth, seed=seed + n).to(dev)
        rng = np.random.default_rng([seed, n])
        with torch.no_grad():
            for cls, real in _real_batches(source, pools, batch_real, rng, dev):
                total += _class_loss(embed, real, x[torch.from_numpy(labels == cls).to(dev)], None, backward=False)
    return total / networks


def to_uint8(pixels: torch.Tensor, mean: Any, std: Any) -> np.ndarray:
    """Normalised float [M, C, H, W] -> uint8 [M, H, W, C]: de-normalise, clamp to 0..255, round."""
    dev = pixels.device
    raw = (pixels * channel_stats(std, dev) + channel_stats(mean, dev)) * 255
    return raw.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class _Embedder(torch.nn.Module):
    """A ConvNet without its classifier: the reference's ``ConvNet.embed``."""

    def __init__(self, features: torch.nn.Module):
        super().__init__()
        self.features = features
        convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
        self.width, self.depth = convs[0].out_channels, len(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


def _embedder(source: SourceDataset, width: int | None, depth: int | None, *, seed: int) -> _Embedder:
    """A fresh ConvNet drawn from ``seed`` (the global torch RNG is left as it was), frozen."""
    h, w, c = source.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model("convnet", c, source.num_classes, (h, w), width=width, depth=depth)
    net.requires_grad_(False)
    return _Embedder(net.features)


def _class_loss(embed: _Embedder, real: torch.Tensor, syn: torch.Tensor, gen: torch.Generator | None, *,
                backward: bool) -> float:
    """||mean embed(real) - mean embed(syn)||^2 for one class, after one shared DSA draw when
    ``gen`` is given; back-propagated into ``syn`` when ``backward``."""
    if gen is not None:
        draw = sample_dsa(1, real.shape[2], real.shape[3], generator=gen)
        real = apply_dsa(real, draw.select(torch.zeros(len(real), dtype=torch.long)))
        syn = apply_dsa(syn, draw.select(torch.zeros(len(syn), dtype=torch.long)))
    with torch.no_grad():
        target = embed(real).mean(0)
    loss = ((target - embed(syn).mean(0)) ** 2).sum()
    if backward:
        loss.backward()
    return float(loss.detach())


def _class_pools(source: SourceDataset) -> list[np.ndarray]:
    """Train indices of each class (int64; 8 bytes per image, the only whole-split array built)."""
    order = np.argsort(source.train_labels, kind="stable")
    bounds = np.searchsorted(source.train_labels[order], np.arange(source.num_classes + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(source.num_classes)]


def _real_batches(source: SourceDataset, pools: list[np.ndarray], batch_real: int, rng: np.random.Generator,
                  dev: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """Per class, ``batch_real`` random train images of it (all when it has fewer), normalised."""
    for cls, pool in enumerate(pools):
        pick = np.sort(rng.choice(pool, size=min(batch_real, len(pool)), replace=False))
        yield cls, normalise(_to_tensor(source.train_images[pick], dev), source.mean, source.std)


def _to_tensor(images: np.ndarray, dev: torch.device) -> torch.Tensor:
    """[N, H, W, C] array -> [N, C, H, W] tensor on ``dev``, dtype kept."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(dev).permute(0, 3, 1, 2).contiguous()


def _check_args(source: SourceDataset, ipc: Any, iterations: Any, batch_real: Any, lr: Any, momentum: Any,
                seed: Any) -> None:
    """Refuse unusable arguments before any work."""
    for name, value, low in (("ipc", ipc, 1), ("iterations", iterations, 0), ("batch_real", batch_real, 1),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("lr", lr), ("momentum", momentum)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    if not lr > 0 or not 0 <= momentum < 1:
        raise InvalidInputError(f"lr must be > 0 and momentum in [0, 1), got lr={lr!r}, momentum={momentum!r}")
    counts = np.bincount(source.train_labels, minlength=source.num_classes)
    if counts.min() < ipc:
        k = int(counts.argmin())
        raise InvalidInputError(f"class {k} ({source.class_names[k]!r}) has {counts[k]} train images, "
                                f"fewer than ipc={ipc}")
