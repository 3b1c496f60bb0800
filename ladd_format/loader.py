"""Feed a LADD dataset to a trainer: full images, hard labels, crops and their dense labels.

:class:`DeviceLoader` uploads the uint8 images, the labels and the dense labels in their
stored encoding once, and renders every batch on the device: the one crop function
(:meth:`UniformSampler.crops`) cuts the crops and the encoding's torch decoder decodes only
the batch's dense-label rows. No worker processes; memory holds the stored arrays (not the
float32 labels: 4x a uint8 encoding's bytes, 270x a top-5 of 1,000 classes) plus the
batches being used. :class:`CropDataset` gives the same views per index for ordinary
``torch.utils.data.DataLoader`` pipelines.

Normalisation is ``(x / 255 - mean) / std`` with the manifest's statistics. It is applied to
the full image before cropping; because every crop pixel is a convex combination of image
pixels, that equals normalising the crops (to float32 rounding) and costs a fraction.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ._encodings import Encoding, _torch_float32
from ._read import LazyArray
from ._store import rows_per_block
from ._torch import channel_stats, normalise, resolve_device, to_device
from .distributed import shard
from .dsa import STRATEGY, DSAParams, apply_dsa, sample_dsa
from .errors import InvalidInputError
from .sampler import UniformSampler

IMAGES_ON = ("device", "pinned")


@dataclass(frozen=True)
class Batch:
    """One step. Row r of ``dense`` is the label of crop r of ``crops``.

    ``crop_image[r]`` is the row of ``images`` that crop r was cut from and ``crop_id[r]``
    its grid position (row * n + column); ``index`` holds the dataset indices of ``images``.
    ``global_images`` is the size of the global batch that this batch is a share of (see
    ``DeviceLoader(share=...)``), ``len(images)`` outside a share: the trainer weighs rows by it.
    """

    images: torch.Tensor
    labels: torch.Tensor
    crops: torch.Tensor
    dense: torch.Tensor
    index: torch.Tensor
    crop_image: torch.Tensor
    crop_id: torch.Tensor
    global_images: int


class DeviceLoader:
    """Batches of a LADD dataset (or a ``subset`` view) rendered on ``device``; iterate once
    per epoch.

    ``crops_per_image``: ``"all"`` (n*n crops per image, in grid order), k in 1..n*n (k
    distinct crops per image drawn afresh each step), or 0 (full images only). Each epoch draws a new order when
    ``shuffle``; with ``seed`` the sequence of epochs is reproducible. ``augment="dsa"``
    applies DSA to the images and the crops (one family per step, parameters per sample).
    ``images_on="pinned"`` keeps the images in host memory (pinned for a CUDA device) and
    copies each batch's images over, for datasets whose images do not fit on the device;
    the batches are the same. :meth:`memory` says what the loader holds where;
    :meth:`with_seed` gives another seed's loader over the same arrays.

    ``share=(rank, world)`` renders only rank's contiguous share of each global batch's images
    (:func:`~ladd_format.distributed.shard` of its rows) with their crops, for data-parallel
    training: the global order, crop picks and DSA draws are drawn as one process draws them
    and the share's rows selected, so the shares of all ranks are the single-process batch.
    A share may be empty (a last batch smaller than ``world``).

    ``Batch.dense`` rows are those of ``dataset.dense_labels`` bit for bit; for a logits
    container softmax(z / T) is computed in torch, within 1e-6 relative of numpy's.
    """

    def __init__(self, dataset, batch_size: int = 256, device: torch.device | str | None = None,
                 crops_per_image: int | str = "all", shuffle: bool = True,
                 seed: int | None = None, augment: str | None = "dsa", drop_last: bool = False,
                 dtype: torch.dtype = torch.float32, images_on: str = "device",
                 share: tuple[int, int] = (0, 1)) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if augment not in ("dsa", None):
            raise InvalidInputError(f"augment must be 'dsa' or None, got {augment!r}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise InvalidInputError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        if images_on not in IMAGES_ON:
            raise InvalidInputError(f"images_on must be one of {IMAGES_ON}, got {images_on!r}")
        self.share = _check_share(share)
        self.device = resolve_device(device)
        self.sampler = UniformSampler.from_spec(dataset.manifest.sampler)
        self.k = _crops_per_image(crops_per_image, self.sampler.num_crops)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.dtype, self.images_on = augment, dtype, images_on
        self.seed = int(seed) if seed is not None else int(
            torch.randint(2**62, (1,)).item())
        self.epoch = 0
        dev, info, spec = self.device, dataset.manifest.image, dataset.manifest.dense_labels
        self._pin = images_on == "pinned" and dev.type == "cuda"
        self._images = _upload_images(dataset, dev if images_on == "device" else torch.device("cpu"),
                                      self._pin)
        self._labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64)).to(dev)
        self._encoding = dataset.encoding
        self._stored = _upload_dense(dataset, self._encoding, self.sampler.num_crops, dev)
        self._temperature = spec.temperature if spec.values == "logits" else None
        self._mean, self._std = channel_stats(info.mean, dev), channel_stats(info.std, dev)

    def __len__(self) -> int:
        m = len(self._labels)
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def memory(self) -> dict[str, dict[str, int]]:
        """Bytes held, by place (``"device"``, ``"host"``) and array: the images, the hard
        labels and each stored dense-label array; the batches in use come on top."""
        held: dict[str, dict[str, int]] = {"device": {}, "host": {}}
        held["host" if self.images_on == "pinned" else "device"]["images"] = self._images.nbytes
        held["device"]["labels"] = self._labels.nbytes
        held["device"].update({name: t.nbytes for name, t in self._stored.items()})
        return held

    def with_seed(self, seed: int) -> DeviceLoader:
        """A loader over the same uploaded arrays (nothing is copied) with its own ``seed``:
        its own order, crop picks and DSA draws, from epoch 0; one per seed when several
        models train together."""
        other = copy.copy(self)
        other.seed, other.epoch = int(seed), 0
        return other

    def __iter__(self) -> Iterator[Batch]:
        for batch, params in self.plain_batches():
            if params is not None:
                b = len(batch.images)
                batch = dataclasses.replace(
                    batch, images=apply_dsa(batch.images, params.select(slice(0, b))),
                    crops=apply_dsa(batch.crops, params.select(slice(b, None))) if len(batch.crops) else batch.crops)
            yield batch

    def plain_batches(self) -> Iterator[tuple[Batch, DSAParams | None]]:
        """One epoch of batches before augmentation, each with its DSA draw (``None`` without
        ``augment``) for the images followed by the crops; iterating the loader applies them.
        A trainer that augments several loaders' batches at once (:func:`~ladd_format.dsa.apply_dsa_many`)
        iterates this instead: the random draws are the same."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        m = len(self._labels)
        order = torch.randperm(m, generator=generator) if self.shuffle else torch.arange(m)
        h, w = self._images.shape[2:]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch, rows = self._batch(order[start:start + self.batch_size], generator)
            params = None
            if self.augment == "dsa":
                params = sample_dsa(batch.global_images * (1 + self.k), h, w, strategy=STRATEGY,
                                    generator=generator, device=self.device)
                params = params if rows is None else params.select(rows)
            yield batch, params

    def _batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple[Batch, torch.Tensor | None]:
        """The batch of the global ``index`` (this loader's share of it), and for a share the
        rows of the global DSA draw (images, then crops) that belong to it."""
        b, dev = len(index), self.device
        crop_image, crop_id = self._picks(b, generator)
        rows = None
        if self.share[1] > 1:
            mine = shard(b, *self.share)
            kept = ((crop_image >= mine.start) & (crop_image < mine.stop)).nonzero().flatten()
            rows = torch.cat([torch.arange(mine.start, mine.stop), b + kept])
            index, crop_image, crop_id = index[mine.start:mine.stop], crop_image[kept] - mine.start, crop_id[kept]
        idx, on_image, on_crop = to_device(torch.cat((index, crop_image, crop_id)), dev).split(
            (len(index), len(crop_image), len(crop_id)))  # one copy, no host wait
        images = normalise(self._batch_images(index, idx), self._mean, self._std)
        crops = self._render(images, crop_image, crop_id)
        dense = self._dense(idx[on_image], on_crop)
        return Batch(images.to(self.dtype), self._labels.index_select(0, idx), crops, dense, idx, on_image,
                     on_crop, b), rows

    def _picks(self, b: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(image row, grid position) of every crop of a global batch of ``b`` images, on the
        host, sorted by position: all n*n in grid order, or k distinct ones per image drawn
        from ``generator`` (the one draw every share takes its rows from)."""
        n2 = self.sampler.num_crops
        if self.k == 0:  # full images only (hard- or soft-label training)
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty
        if self.k == n2:
            return torch.arange(b).repeat(n2), torch.arange(n2).repeat_interleave(b)
        picks = torch.rand(b, n2, generator=generator).argsort(dim=1)[:, :self.k]
        crop_id, sort = picks.flatten().sort(stable=True)
        return sort // self.k, crop_id

    def _render(self, images: torch.Tensor, crop_image: torch.Tensor, crop_id: torch.Tensor) -> torch.Tensor:
        """The crops (image row, grid position) of normalised ``images``, by the sampler's one
        crop function; every grid in crop order when all n*n crops of each image are wanted."""
        if not len(crop_id):
            return images.new_zeros((0, *images.shape[1:]), dtype=self.dtype)
        if self.k == self.sampler.num_crops:
            return self.sampler.crops(images, dtype=self.dtype, order="crop", flatten=True)
        return self.sampler.crops_at(images, crop_image, crop_id, dtype=self.dtype)

    def _batch_images(self, index: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, C, H, W] of the batch on the device (``index`` on the host,
        ``idx`` on the device); host images are gathered into pinned memory, so that the
        copy to the device does not block the host."""
        if self.images_on == "device":
            return self._images.index_select(0, idx)
        staged = torch.empty((len(index), *self._images.shape[1:]), dtype=torch.uint8, pin_memory=self._pin)
        return torch.index_select(self._images, 0, index, out=staged).to(self.device, non_blocking=True)

    def _dense(self, image: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        """float32 dense labels [R, K] of (image, crop) pairs, decoded on the device."""
        values = self._encoding.torch_decode({name: _rows(t, image, crop) for name, t in self._stored.items()})
        return values if self._temperature is None else _softmax(values, self._temperature)


def _rows(stored: torch.Tensor, image: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
    """``stored[image, crop]``. CUDA cannot index uint16 tensors (torch 2.11: "index_cuda" not
    implemented for 'UInt16'), so those rows are taken through their int16 view and widened to
    int32 with the same values."""
    if stored.dtype == torch.uint16:
        return stored.view(torch.int16)[image, crop].to(torch.int32) & 0xFFFF
    return stored[image, crop]


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


def _check_share(share: tuple[int, int]) -> tuple[int, int]:
    ok = isinstance(share, tuple) and len(share) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in share)
    if not ok or not 0 <= share[0] < share[1]:
        raise InvalidInputError(f"share must be (rank, world) with 0 <= rank < world, got {share!r}")
    return share


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


def _upload_images(dataset, device: torch.device, pin: bool) -> torch.Tensor:
    """The uint8 images as [M, C, H, W] on ``device`` (pinned host memory with ``pin``)."""
    m, h, w, c = dataset.images.shape
    out = torch.empty((m, c, h, w), dtype=torch.uint8, device=device, pin_memory=pin)
    _fill({"images": out.permute(0, 2, 3, 1)}, {"images": dataset.images})
    return out


def _upload_dense(dataset, encoding: Encoding, crops: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The encoding's stored arrays for the dataset's images, checked, in their stored dtypes
    on ``device``: the float32 labels never exist whole, on the host or the device."""
    sources = dataset.stored_dense()
    targets = {name: torch.empty(shape, dtype=getattr(torch, dtype), device=device)
               for name, (dtype, shape) in encoding.stored_specs(len(dataset), crops, dataset.num_classes).items()}
    _fill(targets, sources, encoding.check)
    return targets


def _fill(targets: dict[str, torch.Tensor], sources: dict[str, LazyArray],
          check: Callable[[dict[str, np.ndarray]], None] | None = None) -> None:
    """Copy each source into its target a block of rows at a time (each block ``check``-ed
    first), so the host holds one block of them besides the targets."""
    step = min(rows_per_block(a.shape, a.dtype.itemsize) for a in sources.values())
    for start in range(0, len(next(iter(sources.values()))), step):
        blocks = {name: a[start:start + step] for name, a in sources.items()}
        if check is not None:
            check(blocks)
        for name, block in blocks.items():
            targets[name][start:start + step].copy_(torch.from_numpy(block))


def _softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) in the float32 steps of the reader's numpy softmax; torch's exp
    and sum round differently from numpy's, by a few units in the last place."""
    z = logits / _torch_float32(temperature, logits)
    e = (z - z.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)
