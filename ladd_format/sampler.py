"""The static sub-sampler and the one function that regenerates its crops.

Crops are never stored: the labeler, the loader and the tests all call
:meth:`UniformSampler.crops` (or :meth:`UniformSampler.crops_at`), so a stored dense label
always describes exactly the pixels a trainer sees. Geometry and resize rule: spec/SPEC.md,
"Sub-sampler".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidInputError
from .manifest import SamplerSpec

PATHS = ("gemm", "interpolate")
_OUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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
        """The path ``path="auto"`` takes: the GEMM form was fastest on CPU and CUDA alike."""
        torch.device(device)
        return "gemm"

    def crops(self, images, *, dtype: torch.dtype = torch.float32, flatten: bool = False,
              order: str = "image", path: str = "auto") -> torch.Tensor:
        """All n*n crops of each image, each resized back to the image size.

        ``images``: [B, C, H, W] or [C, H, W], uint8 (0..255) or float, on any device; no
        normalisation is applied. Returns [B, n*n, C, H, W] (``order="image"``) or
        [n*n, B, C, H, W] (``order="crop"``), contiguous; ``flatten`` merges the first two
        dimensions. The result is on the images' device.
        """
        if order not in ("image", "crop"):
            raise InvalidInputError(f"order must be 'image' or 'crop', got {order!r}")
        x = self._prepare(images, dtype)
        b, c, h, w = x.shape
        m = self.num_crops
        path = self._path(path, x.device)
        if path == "interpolate":
            pairs = torch.arange(b * m)
            img, crop = (pairs // m, pairs % m) if order == "image" else (pairs % b, pairs // b)
            out = self._interpolate(x, img, crop, dtype)
        else:
            out = self._gemm_grid(x, _gemm_dtype(dtype, x.device), order).to(dtype)
        shape = (b, m) if order == "image" else (m, b)
        out = out.view(*shape, c, h, w)
        return out.flatten(0, 1) if flatten else out

    def crops_at(self, images, image_index, crop_index, *, dtype: torch.dtype = torch.float32,
                 path: str = "auto") -> torch.Tensor:
        """Selected crops: row r is crop ``crop_index[r]`` of image ``image_index[r]``.

        Returns [R, C, H, W]. Rows that share a crop index and sit next to each other are
        rendered together, so pass pairs sorted by crop index for speed.
        """
        x = self._prepare(images, dtype)
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
            return self._interpolate(x, img, crop, dtype)
        return self._gemm_pairs(x, img, crop, _gemm_dtype(dtype, x.device)).to(dtype)

    # -- internals ------------------------------------------------------------------------

    def _path(self, path: str, device: torch.device) -> str:
        if path == "auto":
            return self.auto_path(device)
        if path not in PATHS:
            raise InvalidInputError(f"path must be 'auto' or one of {PATHS}, got {path!r}")
        return path

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

    def _matrix(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[length, side]: output pixel <- crop pixel weights (cached per device and dtype)."""
        key = (length, device, dtype)
        if key not in self._cache:
            side, _ = self.axis(length)
            self._cache[key] = torch.from_numpy(_weights(length, side)).to(device, dtype)
        return self._cache[key]

    def _gemm_grid(self, x: torch.Tensor, dtype: torch.dtype, order: str) -> torch.Tensor:
        """All crops as out = Ry @ patch @ Rx^T; the row pass is shared by a row of crops."""
        b, c, h, w = x.shape
        n = self.n
        ch, tops = self.axis(h)
        cw, lefts = self.axis(w)
        ry = self._matrix(h, x.device, x.dtype)
        rows = torch.empty(n, b, c, h, w, device=x.device, dtype=x.dtype)
        shape = (b, n * n, c, h, w) if order == "image" else (n * n, b, c, h, w)
        out = torch.empty(shape, device=x.device, dtype=dtype)
        with _exact_matmul(x.device):
            for r, top in enumerate(tops):
                torch.matmul(ry, x[:, :, top:top + ch], out=rows[r])
            for r in range(n):
                lhs, rhs = self._column_operands(rows[r], dtype)
                k = lhs.shape[-1] // w
                for s, left in enumerate(lefts):
                    a = lhs[..., left * k:(left + cw) * k]
                    if order == "crop":
                        torch.mm(a.reshape(-1, cw * k), rhs, out=out[r * n + s].view(-1, w))
                    else:
                        torch.bmm(a.reshape(b, c * h, cw * k), rhs.expand(b, *rhs.shape),
                                  out=out[:, r * n + s].view(b, c * h, w))
        return out

    def _gemm_pairs(self, x: torch.Tensor, img: torch.Tensor, crop: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
        _, c, h, w = x.shape
        ch, tops = self.axis(h)
        cw, lefts = self.axis(w)
        ry = self._matrix(h, x.device, x.dtype)
        out = torch.empty(img.numel(), c, h, w, device=x.device, dtype=dtype)
        with _exact_matmul(x.device):
            for start, stop, j in _runs(crop):
                top, left = tops[j // self.n], lefts[j % self.n]
                group = x.index_select(0, img[start:stop].to(x.device))
                lhs, rhs = self._column_operands(torch.matmul(ry, group[:, :, top:top + ch]),
                                                 dtype)
                k = lhs.shape[-1] // w
                torch.mm(lhs[..., left * k:(left + cw) * k].reshape(-1, cw * k), rhs,
                         out=out[start:stop].view(-1, w))
        return out

    def _column_operands(self, rows: torch.Tensor, dtype: torch.dtype):
        """(lhs, rhs) for the column pass: lhs[..., (col, part)] @ rhs, in ``dtype``.

        float32/64 multiply as is. A 16-bit output runs on the tensor cores with each operand
        split into a high and a low half (three products), so its one rounding is the last.
        """
        rx = self._matrix(rows.shape[-1], rows.device, rows.dtype).T
        if dtype in (torch.float32, torch.float64):
            return rows, rx.contiguous()
        hi = rows.to(dtype)
        lo = (rows - hi.to(rows.dtype)).to(dtype)
        rx_hi = rx.to(dtype)
        rx_lo = (rx - rx_hi.to(rx.dtype)).to(dtype)
        lhs = torch.stack((hi, lo, hi), dim=-1).flatten(-2)
        rhs = torch.stack((rx_hi, rx_hi, rx_lo), dim=1).flatten(0, 1)
        return lhs, rhs

    def _interpolate(self, x: torch.Tensor, img: torch.Tensor, crop: torch.Tensor,
                     dtype: torch.dtype) -> torch.Tensor:
        """Gather the patches, then one F.interpolate call (antialias on CUDA: faster there,
        and identical when enlarging)."""
        _, _, h, w = x.shape
        ch, tops = self.axis(h)
        cw, lefts = self.axis(w)
        dev = x.device
        top = torch.tensor(tops)[crop // self.n].to(dev)
        left = torch.tensor(lefts)[crop % self.n].to(dev)
        ys = (top[:, None] + torch.arange(ch, device=dev))[:, :, None]
        xs = (left[:, None] + torch.arange(cw, device=dev))[:, None, :]
        patches = x[img.to(dev)[:, None, None], :, ys, xs].permute(0, 3, 1, 2).contiguous()
        out = F.interpolate(patches, size=(h, w), mode="bilinear", align_corners=False,
                            antialias=dev.type == "cuda")
        return out.to(dtype)


def _weights(length: int, side: int) -> np.ndarray:
    """Bilinear, half-pixel centres, clamped to the crop: exact rational weights, float64."""
    d = np.arange(length, dtype=np.int64)
    num = np.maximum((2 * d + 1) * side - length, 0)  # source coordinate * 2*length
    i0 = num // (2 * length)
    frac = (num - i0 * 2 * length) / (2 * length)
    i1 = np.minimum(i0 + 1, side - 1)
    m = np.zeros((length, side), dtype=np.float64)
    np.add.at(m, (d, i0), 1.0 - frac)
    np.add.at(m, (d, i1), frac)
    return m


def _gemm_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """16-bit products pay off on CUDA's tensor cores only; elsewhere use float32, then round."""
    if dtype in (torch.float32, torch.float64) or device.type == "cuda":
        return dtype
    return torch.float32


def _host_index(index, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(index).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"{name} must be a sequence of integers: {exc}") from None
    if t.ndim != 1 or (t.numel() and (t.dtype.is_floating_point or t.dtype == torch.bool)):
        raise InvalidInputError(f"{name} must be a 1-D sequence of integers")
    return t.long()


def _runs(values: torch.Tensor) -> list[tuple[int, int, int]]:
    """(start, stop, value) of each run of equal neighbours."""
    v = values.tolist()
    runs, start = [], 0
    for i in range(1, len(v) + 1):
        if i == len(v) or v[i] != v[start]:
            runs.append((start, i, v[start]))
            start = i
    return runs


@contextmanager
def _exact_matmul(device: torch.device):
    """Full-precision float32 products and reductions on CUDA for the duration of a call.

    Trainers often enable TF32, which would round the crops; the flags are process-wide,
    so they are restored afterwards.
    """
    if device.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    names = ("fp32_precision" if hasattr(m, "fp32_precision") else "allow_tf32",
             "allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction")
    saved = [getattr(m, name) for name in names]
    for name, value in zip(names, ("ieee" if names[0] == "fp32_precision" else False, False, False)):
        setattr(m, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved):
            setattr(m, name, value)
