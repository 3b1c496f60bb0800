"""Feed a LADD dataset to a trainer: full images, hard labels, crops and their dense labels.

:class:`DeviceLoader` uploads the uint8 images and the labels once and renders every batch on
the device with the one crop function (:meth:`UniformSampler.crops`): no worker processes,
and device memory holds the dataset plus the batches being used. :class:`CropDataset` gives
the same views per index for ordinary ``torch.utils.data.DataLoader`` pipelines.

Normalisation is ``(x / 255 - mean) / std`` with the manifest's statistics. It is applied to
the full image before cropping; because every crop pixel is a convex combination of image
pixels, that equals normalising the crops (to float32 rounding) and costs a fraction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ._torch import channel_stats, normalise, resolve_device
from .dsa import STRATEGY, apply_dsa, sample_dsa
from .errors import InvalidInputError
from .sampler import UniformSampler


@dataclass(frozen=True)
class Batch:
    """One step. Row r of ``dense`` is the label of crop r of ``crops``.

    ``crop_image[r]`` is the row of ``images`` that crop r was cut from and ``crop_id[r]``
    its grid position (row * n + column); ``index`` holds the dataset indices of ``images``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    crops: torch.Tensor
    dense: torch.Tensor
    index: torch.Tensor
    crop_image: torch.Tensor
    crop_id: torch.Tensor


class DeviceLoader:
    """Batches of a LADD dataset rendered on ``device``; iterate once per epoch.

    ``crops_per_image``: ``"all"`` (n*n crops per image, in grid order), k in 1..n*n (k
    distinct crops per image drawn afresh each step), or 0 (full images only). Each epoch draws a new order when
    ``shuffle``; with ``seed`` the sequence of epochs is reproducible. ``augment="dsa"``
    applies DSA to the images and the crops (one family per step, parameters per sample).
    """

    def __init__(self, dataset, batch_size: int = 256, device: torch.device | str | None = None,
                 crops_per_image: int | str = "all", shuffle: bool = True,
                 seed: int | None = None, augment: str | None = "dsa", drop_last: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if augment not in ("dsa", None):
            raise InvalidInputError(f"augment must be 'dsa' or None, got {augment!r}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise InvalidInputError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        self.device = resolve_device(device)
        self.sampler = UniformSampler.from_spec(dataset.manifest.sampler)
        self.k = _crops_per_image(crops_per_image, self.sampler.num_crops)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.dtype = augment, dtype
        self.seed = int(seed) if seed is not None else int(
            torch.randint(2**62, (1,)).item())
        self.epoch = 0
        images, labels, dense, mean, std = _read(dataset, self.sampler.num_crops)
        dev = self.device
        self._images = torch.from_numpy(images).to(dev).permute(0, 3, 1, 2).contiguous()
        self._labels = torch.from_numpy(labels).to(dev)
        self._dense = torch.from_numpy(dense).to(dev)
        self._mean, self._std = channel_stats(mean, dev), channel_stats(std, dev)

    def __len__(self) -> int:
        m = len(self._labels)
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        m = len(self._labels)
        order = torch.randperm(m, generator=generator) if self.shuffle else torch.arange(m)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self._batch(order[start:start + self.batch_size], generator)

    def _batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        b, n2, dev = len(index), self.sampler.num_crops, self.device
        idx = index.to(dev, non_blocking=True)
        images = normalise(self._images.index_select(0, idx), self._mean, self._std)
        if self.k == 0:  # full images only (hard- or soft-label training)
            crop_image = crop_id = torch.zeros(0, dtype=torch.int64, device=dev)
            crops = images.new_zeros((0, *images.shape[1:]))
            dense = self._dense.new_zeros((0, self._dense.shape[-1]))
        elif self.k == n2:
            crops = self.sampler.crops(images, dtype=self.dtype, order="crop", flatten=True)
            crop_image = torch.arange(b, device=dev).repeat(n2)
            crop_id = torch.arange(n2, device=dev).repeat_interleave(b)
            dense = self._dense.index_select(0, idx).transpose(0, 1).flatten(0, 1)
        else:
            picks = torch.rand(b, n2, generator=generator).argsort(dim=1)[:, :self.k]
            crop_id, sort = picks.flatten().sort(stable=True)
            crop_image = sort // self.k
            crops = self.sampler.crops_at(images, crop_image, crop_id, dtype=self.dtype)
            crop_image, crop_id = crop_image.to(dev), crop_id.to(dev)
            dense = self._dense[idx[crop_image], crop_id]
        images = images.to(self.dtype)
        if self.augment == "dsa":
            h, w = images.shape[2:]
            params = sample_dsa(b + len(crops), h, w, strategy=STRATEGY, generator=generator,
                                device=dev)
            images = apply_dsa(images, params.select(slice(0, b)))
            if len(crops):
                crops = apply_dsa(crops, params.select(slice(b, None)))
        return Batch(images, self._labels.index_select(0, idx), crops, dense, idx, crop_image,
                     crop_id)


class CropDataset(torch.utils.data.Dataset):
    """Per-index view for DataLoader pipelines: (image, label, crops, dense).

    image [C, H, W] and crops [n*n, C, H, W] are normalised float32, rendered by the same
    crop function as :class:`DeviceLoader`; dense is float32 [n*n, K]; label an int64 scalar.
    Images are read lazily, one index at a time.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.sampler = UniformSampler.from_spec(dataset.manifest.sampler)
        info = dataset.manifest.image
        self._mean, self._std = info.mean, info.std

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        pixels = torch.from_numpy(np.array(self.dataset.images[i], dtype=np.uint8))
        image = normalise(pixels.permute(2, 0, 1)[None], self._mean, self._std)
        crops = self.sampler.crops(image)[0]
        dense = torch.from_numpy(np.array(self.dataset.dense_labels[i], dtype=np.float32))
        label = torch.tensor(int(self.dataset.labels[i]), dtype=torch.int64)
        return image[0], label, crops, dense


def _crops_per_image(k: int | str, total: int) -> int:
    if k == "all":
        return total
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= total:
        raise InvalidInputError(f"crops_per_image must be 'all' or an integer in 0..{total}, "
                                f"got {k!r}")
    return k


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed per (seed, epoch): epoch e is the same however earlier ones ended."""
    return int(np.random.SeedSequence([seed % 2**63, epoch]).generate_state(1, np.uint64)[0]
               >> 1)


def _read(dataset, crops: int):
    """The arrays the loader uploads, checked against each other."""
    images = np.asarray(dataset.images)
    labels = np.asarray(dataset.labels).astype(np.int64, copy=False)
    dense = np.ascontiguousarray(np.asarray(dataset.dense_labels), dtype=np.float32)
    info = dataset.manifest.image
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != len(info.mean):
        raise InvalidInputError(f"images must be uint8 [M, H, W, {len(info.mean)}], got "
                                f"{images.dtype} {images.shape}")
    m = images.shape[0]
    if labels.shape != (m,):
        raise InvalidInputError(f"labels must be [{m}], got {labels.shape}")
    if dense.shape != (m, crops, dataset.num_classes):
        raise InvalidInputError(f"dense labels must be [{m}, {crops}, {dataset.num_classes}], "
                                f"got {dense.shape}")
    return np.ascontiguousarray(images), labels, dense, list(info.mean), list(info.std)
