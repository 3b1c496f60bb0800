"""The labeler and label augmentation (the paper's Algorithm 1).

A labeler is a small network trained from scratch on the source data; an early checkpoint
(10 epochs) gives soft labels that are less over-confident and more useful. Label
augmentation passes every crop of every distilled image through it and stores
softmax(logits / T) per crop in a container.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._store import remove, sibling
from ._torch import normalise, resolve_device
from ._write import Writer
from .errors import InputTooLargeError, IntegrityError, InvalidInputError, LaddError
from .presets import Preset, resolve
from .models import build_model
from .distributed import augment_ranks, rank_world
from .sampler import UniformSampler
from .sources import MAX_BYTES, SourceDataset

LABELER_EPOCHS = 10
AUGMENTATIONS = ("none", "crops", "crops+flip")
"""Labeler training augmentations: none (whole images), random resized crops, and those plus a
random horizontal flip (only for sources whose classes survive mirroring, e.g. Fashion-MNIST)."""
CROP_SCALES = tuple(0.5 + k / 16 for k in range(9))
"""Side fractions of the random crops: 0.5 to 1.0 in steps of 1/16, the grid's 0.625 among them
and the whole image (1.0) one draw in nine."""
_MAX_META_BYTES = 1 << 20
"""A labeler's JSON description holds a few settings; anything larger is refused unread."""


class LabelerError(InvalidInputError):
    """A labeler checkpoint is missing, unsafe (needs unpickling) or does not fit its description."""


@dataclass(frozen=True)
class LabelerConfig:
    """What a labeler is: enough to rebuild a zoo network (stored beside its checkpoints), or
    to describe any other network (``weights`` says where its weights came from)."""

    architecture: str
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]  # the network's input size (H, W); crops are resized to it
    width: int | None
    depth: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_dataset: str
    training: dict[str, Any]
    weights: str | None = None


class Labeler:
    """A network that labels crops: maps 0..255 images at its input size to logits [B, K].

    Built by :func:`train_labeler` / :func:`load_labeler` for the library's own ConvNets, or
    by :mod:`ladd_format.teachers` around any ``torch.nn.Module`` (torchvision, timm,
    TorchScript); ``epochs`` is ``None`` when the library did not train it.
    """

    def __init__(self, model: torch.nn.Module, config: LabelerConfig, epochs: int | None,
                 checkpoint_sha256: str | None = None) -> None:
        self.model = model.eval()
        self.config = config
        self.epochs = epochs
        self.checkpoint_sha256 = checkpoint_sha256
        self.reused = False  # True when train_labeler loaded a finished checkpoint instead of training

    @property
    def device(self) -> torch.device:
        for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.config.image_size)  # type: ignore[return-value]

    def provenance(self) -> dict[str, Any]:
        """The ``labeler`` member of a manifest: what a reader needs to trust and reproduce the labels."""
        c = self.config
        training = {**c.training, "width": c.width, "depth": c.depth} if c.weights is None else dict(c.training)
        record = {"architecture": c.architecture, "epochs": self.epochs, "source_dataset": c.source_dataset,
                  "training": training, "checkpoint_sha256": self.checkpoint_sha256,
                  "input_size": list(c.image_size), "mean": list(c.mean), "std": list(c.std)}
        if c.weights is not None:
            record["weights"] = c.weights
        return record

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] for images [B, C, H, W] at the input size, on the 0..255 scale
        (normalised here). Runs on the labeler's device; the result comes back on the
        input's device. Any other output shape is a :class:`LabelerError`.
        """
        x = normalise(pixels.to(self.device), self.config.mean, self.config.std)
        out = self.model(x)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), self.config.num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise LabelerError(f"labeler {self.config.architecture} returned {shape}, expected "
                               f"[{len(x)}, {self.config.num_classes}] logits (one row per crop, one column per class)")
        return out.float().to(pixels.device)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the weights (a plain state dict) and ``<path>.json`` (config + the weights' sha256).

        Each file is written under a temporary name and renamed into place, the JSON last: a
        reader that finds the JSON finds the weights it describes (their digest is checked).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, buffer)
        weights = buffer.getvalue()
        self.checkpoint_sha256 = hashlib.sha256(weights).hexdigest()
        meta = {"config": asdict(self.config), "epochs": self.epochs, "weights_sha256": self.checkpoint_sha256}
        _replace_file(path, weights)
        _replace_file(_meta_path(path), json.dumps(meta, indent=1).encode())
        return path


def load_labeler(path: str | os.PathLike[str], device: str | torch.device | None = None) -> Labeler:
    """Load a checkpoint written by :meth:`Labeler.save` (``weights_only=True``: no unpickling).

    The weights must match the sha256 recorded in the JSON beside them, and the JSON must
    describe a network this library builds; anything else is a typed error.
    """
    path = Path(path)
    meta_path = _meta_path(path)
    if not path.is_file():
        raise LabelerError(f"{path}: no such labeler checkpoint")
    if not meta_path.is_file():
        raise LabelerError(f"{path}: a labeler checkpoint needs {meta_path.name} beside it "
                           "(written by train-labeler)")
    if meta_path.stat().st_size > _MAX_META_BYTES:
        raise InputTooLargeError(f"{meta_path}: {meta_path.stat().st_size} bytes, more than the "
                                 f"{_MAX_META_BYTES} a labeler description may have")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
        cfg = meta["config"]
        config = LabelerConfig(**{**cfg, "image_size": tuple(cfg["image_size"]), "mean": tuple(cfg["mean"]),
                                  "std": tuple(cfg["std"])})
        epochs = int(meta["epochs"])
        with torch.device("meta"):  # sized before anything is allocated: the JSON may declare any width
            size = sum(t.numel() * t.element_size() for t in _build(config).state_dict().values())
        if size > MAX_BYTES:
            raise InputTooLargeError(f"the network it describes holds {size} bytes of weights, more than "
                                     f"the {MAX_BYTES} a labeler may have")
        model = _build(config)
    except (ValueError, KeyError, TypeError, RuntimeError, RecursionError, LaddError) as exc:
        error = InputTooLargeError if isinstance(exc, InputTooLargeError) else LabelerError
        raise error(f"{meta_path}: not a labeler description ({type(exc).__name__}: {exc})") from None
    if path.stat().st_size > 2 * size + (1 << 20):  # a state dict is its tensors plus a small zip
        raise InputTooLargeError(f"{path}: {path.stat().st_size} bytes, far more than the {size} bytes of "
                                 f"weights that {meta_path.name} describes; refused unread")
    weights = path.read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    expected = meta.get("weights_sha256")
    if expected is not None and expected != digest:
        raise IntegrityError(f"{path}: the weights do not match the sha256 in {meta_path.name} "
                             "(a damaged or half-written checkpoint)")
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - torch reports unusable files with many types
        if type(exc).__name__ == "UnpicklingError":  # matched by name: the library imports no pickle module
            raise LabelerError(f"{path}: the file needs unpickling, which could run code; refused "
                               "(a labeler checkpoint is a plain state dict)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LabelerError(f"{path}: not weights of the network in {meta_path.name} ({first})") from None
    return Labeler(model.to(resolve_device(device)), config, epochs, digest)


def train_labeler(
    source: SourceDataset, *, architecture: str = "convnet", epochs: int | None = None,
    lr: float = 0.01, batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4,
    width: int | None = None, depth: int | None = None, train_images: int | None = None,
    preset: str | Preset | None = None, out_dir: str | os.PathLike[str] | None = None, seed: int = 0,
    reuse: bool = True, device: str | torch.device | None = None, augmentation: str | None = None,
    amp: bool = True, cpu_amp: bool = False, progress: bool = True,
) -> Labeler:
    """Train a labeler from scratch on the source's train split (SGD, lr 0.01, batch 256).

    ``epochs`` defaults to 10; ``train_images`` trains on a seeded subset of that many train
    images (for CPU-sized runs); ``preset`` (``"cpu"``, ``"paper"``) fills what is not given.
    A checkpoint is saved after every epoch in ``out_dir`` (``epoch_XX.pt`` + ``.json``).
    With ``reuse`` a finished last checkpoint there that was trained with exactly these
    settings (its JSON says so and its digest matches) is loaded instead of training again;
    ``labeler.reused`` tells which happened.

    ``augmentation`` (default: the preset's, else ``"none"``) is one of :data:`AUGMENTATIONS`:
    ``"crops"`` replaces each training image by a random resized crop (:class:`_RandomCrops`),
    so that the labeler learns to label crops like the grid's; ``"crops+flip"`` adds a random
    horizontal flip. It is not the default: at the cpu preset it makes the labeler's argmax the
    class on 68% of grid crops instead of 37%, yet LADD-trained models come out 2.4 points
    worse (benchmarks/results/labeler_crops.md). ``amp`` trains under bfloat16 autocast on
    CUDA, ``cpu_amp`` on a CPU too, as :func:`ladd_format.train.train` does (opt-in: it pays
    only on CPUs with bfloat16 units; the demo turns it on there). Both are recorded in
    ``config.training``.
    """
    knobs = resolve(preset, "labeler", {"epochs": epochs, "width": width, "train_images": train_images,
                                        "augmentation": augmentation},
                    {"epochs": LABELER_EPOCHS, "width": None, "train_images": None, "augmentation": "none"})
    epochs, width, train_images = knobs["epochs"], knobs["width"], knobs["train_images"]
    augmentation = knobs["augmentation"]
    if not isinstance(augmentation, str) or augmentation not in AUGMENTATIONS:
        raise InvalidInputError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    for name, value in (("amp", amp), ("cpu_amp", cpu_amp)):
        if not isinstance(value, bool):
            raise InvalidInputError(f"{name} must be True or False, got {value!r}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise InvalidInputError(f"epochs and batch_size must be >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if train_images is not None and train_images < 1:
        raise InvalidInputError(f"train_images must be >= 1, got {train_images}")
    if width is not None and width < 1:
        raise InvalidInputError(f"width must be >= 1, got {width}")
    if len(source.train_labels) == 0:
        raise InvalidInputError(f"source {source.name!r} has no train images")
    rng = np.random.default_rng(seed)
    index = np.arange(len(source.train_labels))
    if train_images is not None and train_images < len(index):
        index = np.sort(rng.permutation(index)[:train_images])
    h, w, c = source.image_shape
    dev = resolve_device(device)
    use_amp = amp and (dev.type == "cuda" or (dev.type == "cpu" and cpu_amp))
    crops = _RandomCrops(flip=augmentation == "crops+flip") if augmentation != "none" else None
    config = LabelerConfig(
        architecture=architecture, in_channels=c, num_classes=source.num_classes, image_size=(h, w),
        width=width, depth=depth, mean=source.mean, std=source.std, source_dataset=source.name,
        training={"optimizer": "sgd", "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                  "batch_size": batch_size, "train_images": int(len(index)), "seed": seed,
                  "augmentation": crops.describe() if crops else "none", "amp": use_amp})
    last = Path(out_dir) / f"epoch_{epochs:02d}.pt" if out_dir is not None else None
    if reuse and last is not None:
        found = _finished(last, config, epochs, device)
        if found is not None:
            return found
    torch.manual_seed(seed)
    model = _build(config).to(dev)
    images = torch.from_numpy(source.train_images[index]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(source.train_labels[index])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    labeler = Labeler(model, config, 0)
    bar = tqdm(total=epochs * len(index), desc="labeler", unit="img", disable=not progress)
    draws = torch.Generator().manual_seed(seed)  # the crops' draws; the batch order has its own
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            pixels = images[batch].to(dev)
            x = normalise(crops(pixels, draws) if crops else pixels, source.mean, source.std)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[batch].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(len(batch))
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        labeler = Labeler(model, config, epoch)
        if out_dir is not None:
            labeler.save(Path(out_dir) / f"epoch_{epoch:02d}.pt")
    bar.close()
    model.eval()
    return labeler


class _RandomCrops:
    """Random resized crops for labeler training, a batch at a time on its device.

    Each image draws a side fraction from :data:`CROP_SCALES` and a position on the n x n grid
    at that fraction, and is replaced by that crop resized back to the image size by the
    sampler's one crop function (:meth:`UniformSampler.crops_at`): at 0.625 these are exactly
    the crops the labeler will label. One rendering call per fraction, whatever the batch size.
    """

    def __init__(self, *, flip: bool, n: int = 5) -> None:
        self.flip = flip
        self.samplers = [UniformSampler(n, scale) for scale in CROP_SCALES]

    def describe(self) -> dict[str, Any]:
        """The parameters, for ``config.training`` (JSON types, so a reloaded config compares equal)."""
        return {"name": "crops+flip" if self.flip else "crops", "scales": list(CROP_SCALES),
                "grid": self.samplers[0].n, "flip": self.flip}

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Float 0..255 [B, C, H, W] crops of uint8 ``images`` [B, C, H, W]; draws from ``generator`` (CPU)."""
        b, m = len(images), self.samplers[0].num_crops
        scale = torch.randint(len(self.samplers), (b,), generator=generator)
        position = torch.randint(m, (b,), generator=generator)
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
        for i, sampler in enumerate(self.samplers):
            rows = (scale == i).nonzero().flatten()
            out[rows.to(images.device)] = sampler.crops_at(images, rows, position[rows])
        if self.flip:
            mirrored = torch.rand(b, generator=generator) < 0.5
            out = torch.where(mirrored.view(-1, 1, 1, 1).to(images.device), out.flip(3), out)
        return out


def _finished(path: Path, config: LabelerConfig, epochs: int, device: str | torch.device | None) -> Labeler | None:
    """The labeler at ``path`` when it is complete, intact and trained with ``config``."""
    try:
        labeler = load_labeler(path, device=device)
    except LaddError:
        return None
    if labeler.config != config or labeler.epochs != epochs:
        return None
    labeler.reused = True
    return labeler


_ACTIVATION_BYTES_PER_PIXEL = 1536
"""Peak inference bytes per input pixel of a width-128 first layer (128 channels x 4 B x 3
live maps): the estimate that sizes a labeler's forward passes."""


def crops_per_pass(input_size: tuple[int, int], device: torch.device) -> int:
    """Default crops per labeler forward pass: activations of about 512 MiB on a CPU (the
    RSS bound of labeling is images + stored dense labels + 1 GiB) or a quarter of the free
    memory on CUDA, estimated for a width-128 first layer: 445 crops at 28 px, 85 at 64 px,
    21 at 128 px, 6 at 224 px on a CPU."""
    budget = torch.cuda.mem_get_info(device)[0] // 4 if device.type == "cuda" else 512 << 20
    return max(1, int(budget // (_ACTIVATION_BYTES_PER_PIXEL * input_size[0] * input_size[1])))


@torch.no_grad()
def label_batches(images: Any, labeler: Labeler, *, sampler: UniformSampler | None = None,
                  temperature: float = 1.0, batch_size: int | None = None,
                  progress: bool = True) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, dense)`` pairs: float32 [B, n*n, K] softmax(labeler(crop) / T) for the
    images ``rows``, batch after batch, so that nothing grows with the number of images.

    ``images`` are uint8 [M, H, W, C] (a numpy array, tensor or a container's lazy
    ``ds.images``). Each crop is cut and resized straight to the labeler's input size (SPEC.md
    6.5; the image size for a labeler trained on it). ``batch_size`` is crops per forward pass
    (default :func:`crops_per_pass`). Deterministic; progress in images/s with an ETA.
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise InvalidInputError(f"temperature must be a finite number > 0, got {temperature}")
    sampler = sampler or UniformSampler()
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[3] != labeler.config.in_channels:
        raise InvalidInputError(f"images are {shape} [M, H, W, C]; the labeler takes {labeler.config.in_channels} "
                                "channel(s)")
    per_pass = batch_size or crops_per_pass(labeler.input_size, labeler.device)
    step = max(1, per_pass // sampler.num_crops)  # images per batch; a pass may hold part of one
    size = None if labeler.input_size == shape[1:3] else labeler.input_size
    with tqdm(total=shape[0], desc="label crops", unit="img", disable=not progress) as bar:
        for start in range(0, shape[0], step):
            rows = slice(start, min(start + step, shape[0]))
            batch = torch.as_tensor(np.asarray(images[rows])).permute(0, 3, 1, 2).to(labeler.device)
            crops = sampler.crops(batch, flatten=True, **({"size": size} if size else {}))  # image-major, 0..255
            logits = torch.cat([labeler.logits(crops[i:i + per_pass]) for i in range(0, len(crops), per_pass)])
            probs = torch.softmax(logits / temperature, dim=-1)
            yield rows, probs.view(len(batch), sampler.num_crops, -1).cpu().numpy().astype(np.float32, copy=False)
            bar.update(len(batch))


def label_crops(images: Any, labeler: Labeler, *, sampler: UniformSampler | None = None,
                temperature: float = 1.0, batch_size: int | None = None, progress: bool = True) -> np.ndarray:
    """Dense labels [M, n*n, K] in memory (float32): :func:`label_batches` gathered.

    For many images use :func:`augment`, which writes each batch as it comes.
    """
    parts = [dense for _, dense in label_batches(images, labeler, sampler=sampler, temperature=temperature,
                                                 batch_size=batch_size, progress=progress)]
    return np.concatenate(parts)


def augment(
    path: str | os.PathLike[str], images: Any, labels: Any, labeler: Labeler, *,
    sampler: UniformSampler | None = None, temperature: float = 1.0,
    distillation: Mapping[str, Any] | None = None, class_names: list[str] | None = None,
    encoding: str | None = None, overwrite: bool = False, batch_size: int | None = None,
    progress: bool = True, **write_kwargs: Any,
) -> Path:
    """Algorithm 1: label every crop of every distilled image and write the LADD container.

    Streams: each batch is labelled, encoded and appended to a :class:`~ladd_format.Writer`,
    so memory holds the images plus one batch, never all the dense labels. The labeler's
    output is checked on the first batch, before anything is written; the container commits
    atomically at the end. ``mean``/``std`` (the normalisation trainers apply) default to the
    labeler's; ``write_kwargs`` go to the writer.
    """
    sampler = sampler or UniformSampler()
    labels = np.asarray(labels)
    k = labeler.config.num_classes
    if labels.ndim != 1 or len(labels) != len(images):
        raise InvalidInputError(f"labels must be [M] = [{len(images)}], got {labels.shape}")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k):
        raise InvalidInputError(f"hard labels must be integers in [0, {k}): the labeler has {k} classes")
    write_kwargs.setdefault("mean", list(labeler.config.mean))
    write_kwargs.setdefault("std", list(labeler.config.std))
    out = Writer(path, num_images=len(images), image_shape=tuple(images.shape[1:]), num_classes=k,
                 sampler=sampler, temperature=temperature, encoding=encoding, class_names=class_names,
                 labeler=labeler.provenance(), distillation=distillation, overwrite=overwrite, **write_kwargs)
    per_pass = _align_passes(out, sampler.num_crops, batch_size or crops_per_pass(labeler.input_size, labeler.device))

    def batches(rows: Any, show: bool = progress) -> Iterator[tuple[slice, np.ndarray]]:
        return label_batches(rows, labeler, sampler=sampler, temperature=temperature, batch_size=per_pass,
                             progress=show)

    if rank_world()[1] > 1:
        return augment_ranks(out, images, labels, lambda rows: batches(rows, False), progress=progress)
    with out:
        for rows, dense in batches(images):
            out.append(np.asarray(images[rows]), labels[rows], dense)
    return out.path


def _align_passes(writer: Writer, num_crops: int, per_pass: int) -> int:
    """Crops per labeler pass, with the writer's dense chunks made whole batches of images
    (all dense arrays share one chunk row count, a multiple of the images per batch), so
    that ranks splitting the work at chunk boundaries label exactly the batches one process
    would: the same bytes whatever the number of ranks."""
    dense = [name for name in writer._chunk_rows if name not in ("images", "labels")]
    rows = min(writer._chunk_rows[name] for name in dense)
    if per_pass < num_crops:  # one image per batch, its crops split into passes
        step = 1
    else:
        step = min(per_pass // num_crops, rows)
        rows = rows // step * step
        per_pass = step * num_crops
    writer._chunk_rows.update({name: rows for name in dense})
    return per_pass


def _build(config: LabelerConfig) -> torch.nn.Module:
    return build_model(config.architecture, config.in_channels, config.num_classes, config.image_size,
                       depth=config.depth, width=config.width)


def _meta_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: a temporary sibling, fsync, rename."""
    tmp = sibling(path, "tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        remove(tmp)
