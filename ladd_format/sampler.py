"""The static sub-sampler and the one function that regenerates its crops.

Crops are never stored: the labeler, the loader and the tests all call
:meth:`UniformSampler.crops` (or :meth:`UniformSampler.crops_at`), so a stored dense label
always describes exactly the pixels a trainer sees. Geometry and resize rule: spec/SPEC.md,
"Sub-sampler".
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from ._torch import to_device
from .errors import InvalidInputError
from .manifest import SamplerSpec

PATHS = ("gemm", "interpolate")
_OUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_PAIR_ELEMENTS = 1 << 24  # bound on one chunk's temporaries in crops_at (64 MB of float32)


class UniformSampler:
    """n x n crops, each ``ratio`` of each side, evenly spaced from the top-left corner."""

    def __init__(self, n: int = 5, ratio: float = 0.625) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InvalidInputError(f"sampler n must be an integer >= 1, got {n!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not (
            0.0 < float(ratio) <= 1.0
        ):
            raise InvalidInputError(f"sampler ratio must be a number in (0, 1], got {ratio!r}")
        self.n = int(n)
        self.ratio = float(ratio)
        self._cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_spec(cls, spec: SamplerSpec) -> UniformSampler:
        return cls(spec.n, spec.ratio)

    def to_spec(self) -> SamplerSpec:
        return SamplerSpec(n=self.n, ratio=self.ratio)

    def __repr__(self) -> str:
        return f"UniformSampler(n={self.n}, ratio={self.ratio!r})"

    @property
    def num_crops(self) -> int:
        return self.n * self.n

    # -- geometry -------------------------------------------------------------------------

    def axis(self, length: int) -> tuple[int, list[int]]:
        """Crop side and the n offsets along one axis of ``length`` pixels."""
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
            raise InvalidInputError(f"image side must be an integer, got {length!r}")
        length = int(length)
        if length < self.n:
            raise InvalidInputError(
                f"image side {length} px is smaller than n={self.n}: the grid needs n <= side"
            )
        side = min(max(math.floor(self.ratio * length + 0.5), 1), length)
        room, n = length - side, self.n
        if n == 1:
            return side, [(room + 1) // 2]
        return side, [(2 * room * i + (n - 1)) // (2 * (n - 1)) for i in range(n)]

    def boxes(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of each crop, row by row from the top-left corner."""
        ch, tops = self.axis(h)
        cw, lefts = self.axis(w)
        return [(t, left, ch, cw) for t in tops for left in lefts]

    # -- rendering ------------------------------------------------------------------------

    @staticmethod
    def auto_path(device: torch.device | str) -> str:
        """The path ``path="auto"`` takes on ``device``.

        The GEMM form was the fastest in every case measured (CPU; H100 at 32 and 128 px,
        float32 and bfloat16 output): benchmarks/loader.py prints the comparison.
        """
        torch.device(device)  # validates the argument
        return "gemm"

    def crops(self, images, *, size: tuple[int, int] | None = None, dtype: torch.dtype = torch.float32,
              flatten: bool = False, order: str = "image", path: str = "auto") -> torch.Tensor:
        """All n*n crops of each image, each resized to ``size`` (H_out, W_out).

        ``size`` defaults to the image size; a labeler whose input size differs (a 224 px
        teacher on 32 px images) passes its own, so each crop is resized once, straight from
        the crop box. Shrinking is plain bilinear with no antialiasing, as SPEC 6.2 defines.
        ``images``: [B, C, H, W] or [C, H, W], uint8 (0..255) or float, on any device; no
        normalisation is applied. Returns [B, n*n, C, H_out, W_out] (``order="image"``) or
        [n*n, B, C, H_out, W_out] (``order="crop"``), contiguous; ``flatten`` merges the first
        two dimensions. The result is on the images' device. Arithmetic runs in float32
        (float64 for a float64 output); a 16-bit output is that result rounded once.
        """
        if order not in ("image", "crop"):
            raise InvalidInputError(f"order must be 'image' or 'crop', got {order!r}")
        x = self._prepare(images, dtype)
        b, c = x.shape[:2]
        size = self._size(size, x)
        m = self.num_crops
        path = self._path(path, x.device)
        if path == "interpolate":
            pairs = torch.arange(b * m)
            img, crop = (pairs // m, pairs % m) if order == "image" else (pairs % b, pairs // b)
            out = self._interpolate(x, img, crop, size, dtype)
        else:
            out = self._gemm_grid(x, order, size).to(dtype)
        shape = (b, m) if order == "image" else (m, b)
        out = out.view(*shape, c, *size)
        return out.flatten(0, 1) if flatten else out

    def crops_at(self, images, image_index, crop_index, *, size: tuple[int, int] | None = None,
                 dtype: torch.dtype = torch.float32, path: str = "auto") -> torch.Tensor:
        """Selected crops: row r is crop ``crop_index[r]`` of image ``image_index[r]``.

        Returns [R, C, H_out, W_out] (``size`` as in :meth:`crops`), the pairs in any order.
        """
        x = self._prepare(images, dtype)
        size = self._size(size, x)
        img = _host_index(image_index, "image_index")
        crop = _host_index(crop_index, "crop_index")
        if img.shape != crop.shape:
            raise InvalidInputError(
                f"image_index and crop_index differ in length: {img.numel()} vs {crop.numel()}"
            )
        if img.numel() and (img.min() < 0 or img.max() >= x.shape[0]):
            raise InvalidInputError(f"image_index out of range for {x.shape[0]} image(s)")
        if crop.numel() and (crop.min() < 0 or crop.max() >= self.num_crops):
            raise InvalidInputError(f"crop_index out of range for {self.num_crops} crops")
        if self._path(path, x.device) == "interpolate":
            return self._interpolate(x, img, crop, size, dtype)
        return self._gemm_pairs(x, img, crop, size).to(dtype)

    # -- internals ------------------------------------------------------------------------

    def _path(self, path: str, device: torch.device) -> str:
        if path == "auto":
            return self.auto_path(device)
        if path not in PATHS:
            raise InvalidInputError(f"path must be 'auto' or one of {PATHS}, got {path!r}")
        return path

    @staticmethod
    def _size(size, x: torch.Tensor) -> tuple[int, int]:
        """The output (H, W): the image's when ``size`` is None, else two integers >= 1."""
        if size is None:
            return int(x.shape[2]), int(x.shape[3])
        try:
            h, w = size
        except (TypeError, ValueError):
            raise InvalidInputError(f"size must be (height, width), got {size!r}") from None
        for v in (h, w):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidInputError(f"size must be two integers >= 1, got {size!r}")
        return int(h), int(w)

    def _prepare(self, images, dtype: torch.dtype) -> torch.Tensor:
        """Validate and convert to the float type the arithmetic runs in."""
        if dtype not in _OUT_DTYPES:
            raise InvalidInputError(f"output dtype must be one of {_OUT_DTYPES}, got {dtype}")
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise InvalidInputError(f"images must be a torch.Tensor or numpy array, "
                                    f"got {type(images).__name__}")
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4:
            raise InvalidInputError(
                f"images must be [B, C, H, W] or [C, H, W], got shape {tuple(images.shape)}"
            )
        if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
            raise InvalidInputError(f"images must be uint8 or floating point, got {images.dtype}")
        if images.shape[1] not in (1, 3):
            raise InvalidInputError(
                f"images must have 1 or 3 channels (dim 1 of [B, C, H, W]), "
                f"got {images.shape[1]} in shape {tuple(images.shape)}"
            )
        self.axis(images.shape[2])
        self.axis(images.shape[3])
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return images.to(work).contiguous()

    def _weights(self, length: int, out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[out, side]: output pixel <- crop pixel weights along an image side of ``length``
        (cached per size, device and dtype)."""
        key = ("weights", length, out, device, dtype)
        if key not in self._cache:
            side, _ = self.axis(length)
            self._cache[key] = torch.from_numpy(_resize_weights(out, side)).to(device, dtype)
        return self._cache[key]

    def _column_windows(self, w: int, out: int, device: torch.device, dtype: torch.dtype):
        """Per grid column, (start, Rx^T rows): the crop's weights folded in at its offset,
        cut to a window that starts 16-byte aligned so the GEMM gets aligned operands."""
        key = ("columns", w, out, device, dtype)
        if key not in self._cache:
            local = self._weights(w, out, device, dtype).T
            side, align = local.shape[0], 16 // local.element_size()
            windows = []
            for left in self.axis(w)[1]:
                start = left // align * align
                stop = min(-(-(left + side) // align) * align, w)
                window = torch.zeros(stop - start, out, device=device, dtype=dtype)
                window[left - start:left - start + side] = local
                windows.append((start, window))
            self._cache[key] = windows
        return self._cache[key]

    def _row_pass(self, x: torch.Tensor, top: int, out: int) -> torch.Tensor:
        """Ry @ x for the crops of one grid row (the height-axis resize): [B, C, out, W]."""
        ry = self._weights(x.shape[2], out, x.device, x.dtype)
        return torch.matmul(ry, x[:, :, top:top + ry.shape[1]])

    def _gemm_grid(self, x: torch.Tensor, order: str, size: tuple[int, int]) -> torch.Tensor:
        """All crops as out = Ry @ patch @ Rx^T; the row pass is shared by a row of crops."""
        b, c, h, w = x.shape
        ho, wo = size
        n = self.n
        shape = (b, n * n, c, ho, wo) if order == "image" else (n * n, b, c, ho, wo)
        out = torch.empty(shape, device=x.device, dtype=x.dtype)
        windows = self._column_windows(w, wo, x.device, x.dtype)
        with _exact_matmul(x.device):
            for r, top in enumerate(self.axis(h)[1]):
                rows = self._row_pass(x, top, ho)
                for s, (start, rhs) in enumerate(windows):
                    k = rhs.shape[0]
                    a = rows[..., start:start + k]
                    if order == "crop":
                        torch.mm(a.reshape(-1, k), rhs, out=out[r * n + s].view(-1, wo))
                    else:
                        torch.bmm(a.reshape(b, c * ho, k), rhs.expand(b, k, wo),
                                  out=out[:, r * n + s].view(b, c * ho, wo))
        return out

    def _gemm_pairs(self, x: torch.Tensor, img: torch.Tensor, crop: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
        """Every pair at once: the patches gathered by one ``take``, then Ry @ patch @ Rx^T with
        the one Ry and Rx that all crops share (they differ only in offset), in chunks that bound
        the temporaries. About 15 kernels a call whatever the pairs; rendering each grid position
        on its own cost about 16 a position, 400 a call (on a GPU each is a launch)."""
        _, c, h, w = x.shape
        ho, wo = size
        dev = x.device
        ch, cw = self.axis(h)[0], self.axis(w)[0]
        ry = self._weights(h, ho, dev, x.dtype)
        rx = self._weights(w, wo, dev, x.dtype).T
        corner, template = self._patch_index(c, h, w, dev)
        pairs = to_device(torch.stack((img, crop)), dev)  # one copy, no host wait
        start = pairs[0] * (c * h * w) + corner[pairs[1]]  # each pair's patch corner in x.flatten()
        out = torch.empty(img.numel(), c, ho, wo, device=dev, dtype=x.dtype)
        step = max(1, _PAIR_ELEMENTS // (c * cw * (3 * ch + ho)))  # a pair's index, patch and row pass
        with _exact_matmul(dev):
            for lo in range(0, img.numel(), step):
                patches = x.take(start[lo:lo + step, None, None, None] + template)
                torch.matmul(torch.matmul(ry, patches), rx, out=out[lo:lo + step])
        return out

    def _patch_index(self, c: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each grid position's patch starts in a flattened [C, H, W] image ([n*n]), and
        the offsets of a patch's elements from its start ([C, c_H, c_W]), on ``device`` (cached)."""
        key = ("patch", c, h, w, device)
        if key not in self._cache:
            (ch, tops), (cw, lefts) = self.axis(h), self.axis(w)
            corner = torch.tensor([top * w + left for top in tops for left in lefts], device=device)
            template = (torch.arange(c, device=device)[:, None, None] * (h * w)
                        + torch.arange(ch, device=device)[:, None] * w + torch.arange(cw, device=device))
            self._cache[key] = (corner, template)
        return self._cache[key]

    def _interpolate(self, x: torch.Tensor, img: torch.Tensor, crop: torch.Tensor,
                     size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Gather the patches, then one F.interpolate call. Antialias on CUDA when no axis
        shrinks: faster there, and identical when enlarging; when shrinking it would average,
        which SPEC 6.2 does not."""
        _, _, h, w = x.shape
        ch, tops = self.axis(h)
        cw, lefts = self.axis(w)
        dev = x.device
        top = to_device(torch.tensor(tops)[crop // self.n], dev)
        left = to_device(torch.tensor(lefts)[crop % self.n], dev)
        ys = (top[:, None] + torch.arange(ch, device=dev))[:, :, None]
        xs = (left[:, None] + torch.arange(cw, device=dev))[:, None, :]
        patches = x[to_device(img, dev)[:, None, None], :, ys, xs].permute(0, 3, 1, 2).contiguous()
        enlarging = size[0] >= ch and size[1] >= cw
        out = F.interpolate(patches, size=size, mode="bilinear", align_corners=False,
                            antialias=dev.type == "cuda" and enlarging)
        return out.to(dtype)


def _resize_weights(length: int, side: int) -> np.ndarray:
    """[length, side]: a crop side resized to ``length`` output pixels; bilinear, half-pixel
    centres, clamped to the crop: exact rational weights, float64."""
    d = np.arange(length, dtype=np.int64)
    num = np.maximum((2 * d + 1) * side - length, 0)  # source coordinate * 2*length
    i0 = num // (2 * length)
    frac = (num - i0 * 2 * length) / (2 * length)
    i1 = np.minimum(i0 + 1, side - 1)
    m = np.zeros((length, side), dtype=np.float64)
    np.add.at(m, (d, i0), 1.0 - frac)
    np.add.at(m, (d, i1), frac)
    return m


def _host_index(index, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(index).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"{name} must be a sequence of integers: {exc}") from None
    if t.ndim != 1 or (t.numel() and (t.dtype.is_floating_point or t.dtype == torch.bool)):
        raise InvalidInputError(f"{name} must be a 1-D sequence of integers")
    return t.long()


@contextmanager
def _exact_matmul(device: torch.device):
    """IEEE float32 products on CUDA for the duration of a call.

    Trainers often enable TF32, which would round the crops. The flag is process-wide, so it
    is restored afterwards, through whichever of PyTorch's two TF32 APIs is in use (mixing
    them raises).
    """
    if device.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    try:
        name, saved, ieee = "allow_tf32", m.allow_tf32, False
    except RuntimeError:  # the fp32_precision API is in use; the legacy getter refuses
        name, saved, ieee = "fp32_precision", m.fp32_precision, "ieee"
    if saved == ieee:
        yield
        return
    setattr(m, name, ieee)
    try:
        yield
    finally:
        setattr(m, name, saved)
