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
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._allocator import keeps_freed_memory
from ._store import rows_per_block
from ._torch import normalise, resolve_device
from ._read import LaddDataset
from ._read import open as open_container
from .distributed import _device, all_sum, rank_world
from .errors import InvalidInputError
from .loader import DeviceLoader
from .models import build_model
from .presets import COMPILE_MODES, Preset, resolve
from .seeds import Plan, groupable
from .seeds import run as run_seeds

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


CPU_TENSOR_BYTES = 16 << 20
"""Largest activation map one CPU pass makes with glibc's defaults (see :func:`pass_inputs`)."""
CPU_TENSOR_BYTES_KEPT = 256 << 20
"""The same once :func:`~ladd_format.keep_freed_memory` took effect (``ladd`` commands)."""

_BYTES_PER_PIXEL = 2200
"""Measured peak bytes per input pixel of a width-128 ConvNet pass (fp32, 28 px padded to 32:
5.7 GB for 2,600 inputs); other widths scale linearly."""


def pass_inputs(image_size: tuple[int, int], width: int | None, device: torch.device) -> int:
    """How many inputs (images + crops, of all seeds trained together) one forward/backward
    pass holds by default; a step with more runs as micro-batches whose gradients add up (the
    same update up to float rounding).

    On a CPU the first activation map of a pass (width x H x W floats per input, sides
    counted as at least 32 px) stays under ``CPU_TENSOR_BYTES`` (16 MiB): below glibc's
    mmap threshold (32 MiB) freed activations are reused by the next pass instead of being
    returned to the kernel and faulted in again, which made 600-input passes 1.5x slower per
    input than 64-input ones (width-64 ConvNet, 2-core Xeon). Once
    :func:`~ladd_format.keep_freed_memory` took effect nothing is faulted in again and whole
    steps in one pass are faster (the demo's 3 LADD seeds: 7-10% by the median of 6 alternated
    runs; peak RSS 1.35 GB instead of 0.9), so the bound is then ``CPU_TENSOR_BYTES_KEPT``
    (256 MiB, about 1 GiB of activations in all). On CUDA a pass may fill half the free memory.
    """
    h, w = max(32, image_size[0]), max(32, image_size[1])
    if device.type == "cuda":
        per_input = _BYTES_PER_PIXEL * h * w * (width or 128) / 128
        return max(1, int(torch.cuda.mem_get_info(device)[0] // 2 // per_input))
    budget = CPU_TENSOR_BYTES_KEPT if keeps_freed_memory() else CPU_TENSOR_BYTES
    return max(1, budget // (4 * (width or 128) * h * w))


def train(
    dataset: LaddDataset | str | os.PathLike[str], *, mode: str = "ladd", model: str = "convnet",
    epochs: int | None = None, lr: float = 0.01, batch_size: int = 256, momentum: float = 0.9,
    weight_decay: float = 5e-4, augment: str | None = "dsa", crops_per_image: int | str | None = None,
    crop_weight: float = 1.0, crop_reduction: str = "mean", width: int | None = None,
    depth: int | None = None, preset: str | Preset | None = None, indices: Any = None, seed: int = 0,
    max_pass_inputs: int | None = None, device: str | torch.device | None = None, amp: bool = True,
    cpu_amp: bool = False, channels_last: bool = False, compile: bool | str = False, progress: bool = True,
    data_parallel: bool = True,
) -> TrainResult:
    """Train a fresh ``model`` on a container (or the ``indices`` subset of it).

    The field's protocol: SGD with momentum 0.9 and weight decay 5e-4, batch 256, the
    learning rate x0.1 after half the epochs, DSA on images and crops; ``epochs`` defaults to
    300 and ``crops_per_image`` to ``"all"``. ``preset`` (``"cpu"``, ``"paper"``) fills
    ``epochs``, ``width`` (ConvNets only) and ``crops_per_image`` where they are not given.
    The model is built right after ``torch.manual_seed(seed)``; its batches (order, crops, DSA)
    come from a generator seeded with ``seed``, so :func:`train_seeds` reproduces the run.
    A step whose images and crops exceed ``max_pass_inputs`` (default :func:`pass_inputs`)
    runs as micro-batches with accumulated gradients, which bounds memory and gives the same
    update. ``amp`` uses bfloat16 autocast on CUDA, ``cpu_amp`` on a CPU too (1.8x faster on
    a Xeon with AMX units; off by default, as it changes the numbers).
    ``channels_last`` feeds the network NHWC tensors (slower on that CPU; meant for CUDA).
    ``compile`` runs the forward pass through ``torch.compile``, falling back to eager with one
    warning where that fails; it pays on a CPU only once inductor's on-disk cache holds the
    graph (one demo seed on the 2-core Xeon, bf16: LADD 40 s eager, 42.5 s compiled cold, 30 s
    warm; hard labels 7 s, 18 s, 5.6 s), so the demo stays eager. ``True`` compiles in
    torch.compile's default mode, a name from :data:`~ladd_format.presets.COMPILE_MODES` in
    that mode (``"reduce-overhead"``: CUDA graphs).

    Under ``torchrun`` (an initialised default process group of G > 1 ranks, see
    :func:`ladd_format.distributed.init_from_env`) and with ``data_parallel`` (the default), the
    run is data parallel: every rank builds the model (and starts from rank 0's parameters), draws
    the same global batch order, crop picks and DSA draws, renders and trains only its contiguous
    share of each global batch's images with their crops, and the gradients are summed over the
    ranks before each step (one flattened all-reduce a step, equivalent to DDP). ``batch_size``,
    ``lr`` and the schedule mean what they mean in one process, and the losses are the global
    ones: the result is the single-process run's up to float reassociation (except the ViT's
    dropout masks, drawn per rank, and batch-norm statistics, rank 0's share's). Every rank
    returns the trained model. ``batch_size`` must be at least G. A rank that dies makes the
    others raise :class:`~ladd_format.distributed.DistributedError`. ``data_parallel=False``
    trains the whole run in this process alone, as the evaluation grid of
    :func:`cross_architecture` does.
    """
    return _train(dataset, [seed], **{k: v for k, v in locals().items() if k not in ("dataset", "seed")})[0]


def train_seeds(dataset: LaddDataset | str | os.PathLike[str], *, seeds: int | Sequence[int] = 3,
                together: bool = True, **train_kwargs: Any) -> list[TrainResult]:
    """Train one model per seed (``seeds``: a count, meaning ``range(seeds)``, or the seeds);
    ``train_kwargs`` are those of :func:`train`. Returns one :class:`TrainResult` per seed.

    ``together=True`` trains the seeds as one batched computation (:mod:`ladd_format.seeds`) on
    CUDA: one upload of the dataset, each seed with its own initialisation, data order and DSA
    draws, so every result is the one :func:`train` gives for that seed up to float
    reassociation. On a CPU, where that measured slower, and for models with dropout or batch
    norm (the ViT), the seeds run one after another over the one upload, with the results of
    :func:`train` exactly; ``settings["together"]`` says which ran. ``together=False`` calls
    :func:`train` for each seed in turn. Under ``torchrun`` each seed trains data parallel over
    the ranks, as :func:`train` does.
    """
    seeds = _seed_list(seeds)
    if "seed" in train_kwargs:
        raise InvalidInputError("train_seeds takes seeds=..., not seed=")
    unknown = set(train_kwargs) - set(inspect.signature(train).parameters)
    if unknown:
        raise InvalidInputError(f"unknown training argument(s): {', '.join(sorted(unknown))}")
    if not isinstance(together, bool):
        raise InvalidInputError(f"together must be True or False, got {together!r}")
    if not together:
        kwargs = {k: v for k, v in train_kwargs.items() if k != "indices"}
        ds = _open(dataset, train_kwargs.get("indices"))
        return [train(ds, seed=seed, **kwargs) for seed in seeds]
    return _train(dataset, seeds, **train_kwargs)


def _seed_list(seeds: Any) -> list[int]:
    """``range(seeds)`` for a count, else the given seeds: integers, at least one, no repeats."""
    bad = InvalidInputError(f"seeds must be a count >= 1 or a non-empty list of distinct integers, got {seeds!r}")
    if isinstance(seeds, bool) or isinstance(seeds, (str, bytes)) or not isinstance(seeds, (int, Iterable)):
        raise bad
    if isinstance(seeds, int):
        if seeds < 1:
            raise bad
        return list(range(seeds))
    listed = list(seeds)
    if not listed or len(set(listed)) != len(listed) or any(
            isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in listed):
        raise bad
    return [int(x) for x in listed]


def _open(dataset: LaddDataset | str | os.PathLike[str], indices: Any) -> LaddDataset:
    ds = open_container(dataset) if not isinstance(dataset, LaddDataset) else dataset
    return ds.subset(indices) if indices is not None else ds


def _train(dataset, seeds: list[int], *, mode: str = "ladd", model: str = "convnet", epochs: int | None = None,
           lr: float = 0.01, batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4,
           augment: str | None = "dsa", crops_per_image: int | str | None = None, crop_weight: float = 1.0,
           crop_reduction: str = "mean", width: int | None = None, depth: int | None = None,
           preset: str | Preset | None = None, indices: Any = None, max_pass_inputs: int | None = None,
           device: str | torch.device | None = None, amp: bool = True, cpu_amp: bool = False,
           channels_last: bool = False, compile: bool | str = False, progress: bool = True,
           data_parallel: bool = True) -> list[TrainResult]:
    """:func:`train` for several seeds at once (one :func:`ladd_format.seeds.run`)."""
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
    if crop_reduction not in ("mean", "sum"):
        raise InvalidInputError(f"crop_reduction must be 'mean' or 'sum', got {crop_reduction!r}")
    convnet = isinstance(model, str) and model.lower().startswith("convnet")
    knobs = resolve(preset, "train", {"epochs": epochs, "crops_per_image": crops_per_image, "width": width},
                    {"epochs": 300, "crops_per_image": "all", "width": None})
    epochs, crops_per_image = knobs["epochs"], knobs["crops_per_image"]
    width = knobs["width"] if convnet else width  # a preset's width is a ConvNet knob
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1 or not lr > 0 or not math.isfinite(lr):
        raise InvalidInputError(f"epochs must be an integer >= 1 and lr a finite number > 0 (got {epochs!r}, {lr!r})")
    if max_pass_inputs is not None and (isinstance(max_pass_inputs, bool) or not isinstance(max_pass_inputs, int)
                                        or max_pass_inputs < 1):
        raise InvalidInputError(f"max_pass_inputs must be an integer >= 1, got {max_pass_inputs!r}")
    if not (isinstance(compile, bool) or (isinstance(compile, str) and compile in COMPILE_MODES)):
        raise InvalidInputError(f"compile must be True, False or one of {COMPILE_MODES}, got {compile!r}")
    share = _share(batch_size, data_parallel)
    ds = _open(dataset, indices)
    dev = resolve_device(device)
    info = ds.manifest.image
    models, rng = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(model, info.channels, ds.num_classes, (info.height, info.width),
                                  width=width, depth=depth).to(dev))
        rng.append(_rng_state(dev))
    k = 0 if mode in ("hard", "soft") else crops_per_image
    if mode in ("ladd", "crops-only") and k == 0:
        raise InvalidInputError(f"crops_per_image=0 trains on no crops: mode {mode!r} needs crops "
                                "(use mode='hard' to train on full images only)")
    loader = DeviceLoader(ds, batch_size=batch_size, device=dev, crops_per_image=k, shuffle=True,
                          seed=seeds[0], augment=augment, share=share)
    soft = torch.from_numpy(_image_soft_labels(ds)).to(dev) if mode == "soft" else None
    use_amp = bool(amp) and (dev.type == "cuda" or (dev.type == "cpu" and bool(cpu_amp)))
    per_pass = max_pass_inputs or pass_inputs((info.height, info.width), width if convnet else None, dev)
    plan = Plan(mode=mode, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                crop_weight=crop_weight, crop_reduction=crop_reduction, per_pass=per_pass, amp=use_amp,
                channels_last=channels_last, compile=compile)
    together = len(seeds) > 1 and groupable(models[0], dev)
    groups = [list(range(len(seeds)))] if together else [[j] for j in range(len(seeds))]
    losses: list[list[float]] = [[] for _ in seeds]
    for group in groups:
        if len(group) == 1:  # dropout draws as in a single run, whichever seeds were built after it
            _set_rng_state(rng[group[0]], dev)
        trained = run_seeds([models[j] for j in group], [loader.with_seed(seeds[j]) for j in group], plan,
                            soft=soft, progress=progress and share[0] == 0)
        for j, seed_losses in zip(group, trained):
            losses[j] = seed_losses
    return [TrainResult(net, dict(mode=mode, model=model, epochs=epochs, lr=lr, batch_size=batch_size,
                                  momentum=momentum, weight_decay=weight_decay, augment=augment,
                                  crops_per_image=crops_per_image, crop_weight=crop_weight,
                                  crop_reduction=crop_reduction, width=width, depth=depth, seed=seed,
                                  images=len(ds), device=str(dev), amp=use_amp, max_pass_inputs=per_pass,
                                  channels_last=channels_last, compile=compile, together=together,
                                  ranks=share[1]), seed_losses)
            for net, seed, seed_losses in zip(models, seeds, losses)]


def _share(batch_size: int, data_parallel: bool) -> tuple[int, int]:
    """(rank, world) of a data-parallel run, (0, 1) outside one; a global batch must give
    every rank an image."""
    if not isinstance(data_parallel, bool):
        raise InvalidInputError(f"data_parallel must be True or False, got {data_parallel!r}")
    rank, world = rank_world() if data_parallel else (0, 1)
    if isinstance(batch_size, int) and world > batch_size:
        raise InvalidInputError(f"batch_size {batch_size} is smaller than the {world} ranks it is split over")
    return rank, world


def _rng_state(dev: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global generators' states (CPU, and the device's on CUDA), which dropout draws from."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], dev: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], dev)


def _image_soft_labels(ds: LaddDataset) -> np.ndarray:
    """Each image's soft label, the mean of its dense labels [M, K], read a block at a time
    so that the decoded [M, n*n, K] array never exists whole."""
    step = rows_per_block(ds.dense_labels.shape, 4)
    return np.concatenate([np.asarray(ds.dense_labels[i:i + step]).mean(axis=1)
                           for i in range(0, len(ds), step)])


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, mean: Any, std: Any, *,
             batch_size: int | None = None, amp: bool = False) -> float:
    """Top-1 accuracy of ``model`` on uint8 [N, H, W, C] images normalised with mean/std, in batches
    of ``batch_size`` (default 1,024 on CUDA, 64 on a CPU, where small activations are reused
    rather than faulted in afresh: see :func:`pass_inputs`). ``amp`` runs the forward pass under
    bfloat16 autocast, as a model trained under it ran: on a CPU with AMX units 2 to 3x faster
    than float32 (the demo's ConvNets: 1.8-2.5 s against 3.8-6.7 s for 10,000 images, accuracy
    within -0.04..+0.10 points of float32's on four models)."""
    dev = next(model.parameters()).device
    batch_size = batch_size or (1024 if dev.type == "cuda" else 64)
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = torch.tensor(images[start:start + batch_size], device=dev).permute(0, 3, 1, 2)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(amp)):
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


ARCHITECTURE_COST = {"convnet": 1, "alexnet": 1, "vgg11": 4, "resnet18": 8, "vit": 4}
"""Relative cost of one training run per architecture, for spreading the grid over ranks."""

PARALLEL = ("auto", "grid", "data")


def cross_architecture(dataset: LaddDataset | str | os.PathLike[str], test_images: np.ndarray,
                       test_labels: np.ndarray, *, models: tuple[str, ...] = ("convnet",),
                       seeds: int | Sequence[int] = 3, mode: str = "ladd", together: bool = True,
                       parallel: str = "auto", eval_amp: bool = False, **train_kwargs: Any) -> list[dict[str, Any]]:
    """The field's protocol: each architecture trained once per seed (:func:`train_seeds`,
    the seeds together unless ``together=False``); mean and std accuracy, one row per
    architecture in the order of ``models``. ``eval_amp`` tests under bfloat16 autocast
    (:func:`evaluate`'s ``amp``), which each row's ``test_precision`` says.

    Under ``torchrun`` (G > 1 ranks), ``parallel`` says how the ranks share the work:
    ``"grid"`` spreads whole training runs over the ranks, each trained in one process (units of
    an architecture with all its seeds, or of one (architecture, seed) when there are fewer
    architectures than ranks, assigned longest first by :data:`ARCHITECTURE_COST`), and sums the
    accuracy tables; ``"data"`` trains every run data-parallel over all ranks (see :func:`train`)
    and rank 0 evaluates; ``"auto"`` (the default) is the grid when there are at least G
    (architecture, seed) runs, else data. Every rank returns the table. On a CPU the grid's table
    equals the single-process table exactly.
    """
    if parallel not in PARALLEL:
        raise InvalidInputError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if "data_parallel" in train_kwargs:
        raise InvalidInputError("cross_architecture takes parallel='grid' or 'data', not data_parallel=")
    if not isinstance(eval_amp, bool):
        raise InvalidInputError(f"eval_amp must be True or False, got {eval_amp!r}")
    ds = open_container(dataset) if not isinstance(dataset, LaddDataset) else dataset
    seeds = _seed_list(seeds)
    check_test_set(ds, test_images, test_labels)
    info = ds.manifest.image
    check_models(ds, models, width=train_kwargs.get("width"), depth=train_kwargs.get("depth"))
    rank, world = rank_world()
    grid = world > 1 and (parallel == "grid" or (parallel == "auto" and len(models) * len(seeds) >= world))
    table = torch.zeros(len(models), len(seeds), dtype=torch.float64)
    for m, js in _my_units(models, len(seeds), rank, world, grid):
        name = models[m]
        kwargs = train_kwargs if name.lower().startswith("convnet") else \
            {k: v for k, v in train_kwargs.items() if k not in ("width", "depth")}  # ConvNet-only knobs
        kwargs = {**kwargs, "progress": kwargs.get("progress", True) and rank == 0}  # one rank's bars
        results = train_seeds(ds, seeds=[seeds[j] for j in js], together=together, mode=mode, model=name,
                              data_parallel=not grid, **kwargs)
        if grid or rank == 0:
            for j, r in zip(js, results):
                table[m, j] = evaluate(r.model, test_images, test_labels, info.mean, info.std, amp=eval_amp)
    if world > 1:
        table = _gather_table(table)
    tested = "bfloat16 autocast" if eval_amp else "float32"
    return [{"model": name, "mode": mode, "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
             "accuracies": accs, "test_precision": tested} for name, accs in zip(models, table.tolist())]


def _my_units(models: Sequence[str], seeds: int, rank: int, world: int, grid: bool) -> list[tuple[int, list[int]]]:
    """The (architecture, seed positions) runs this rank trains: its share of the grid, or all."""
    if not grid:
        return [(m, list(range(seeds))) for m in range(len(models))]
    units = _units(models, seeds, world)
    costs = [ARCHITECTURE_COST.get(_family(models[m]), 1) * len(js) for m, js in units]
    return [units[u] for u in _assign(costs, world)[rank]]


def _family(name: str) -> str:
    return next((key for key in ARCHITECTURE_COST if name.lower().startswith(key)), name.lower())


def _units(models: Sequence[str], seeds: int, world: int) -> list[tuple[int, list[int]]]:
    """The grid's units of work: (architecture, all its seeds), or (architecture, one seed) when
    there are fewer architectures than ranks."""
    if len(models) >= world:
        return [(m, list(range(seeds))) for m in range(len(models))]
    return [(m, [j]) for m in range(len(models)) for j in range(seeds)]


def _assign(costs: Sequence[float], world: int) -> list[list[int]]:
    """Longest processing time first: each unit, costliest first, to the least loaded rank
    (ties to the lower rank, then the earlier unit), so the ranks finish together."""
    loads, out = [0.0] * world, [[] for _ in range(world)]
    for unit in sorted(range(len(costs)), key=lambda u: -costs[u]):
        rank = min(range(world), key=lambda r: loads[r])
        out[rank].append(unit)
        loads[rank] += costs[unit]
    return [sorted(units) for units in out]


def _gather_table(table: torch.Tensor) -> torch.Tensor:
    """The accuracy tables of all ranks, each zero where another rank trained, summed: one
    tensor message, exact (x + 0 is x)."""
    return all_sum(table.to(_device())).cpu()
