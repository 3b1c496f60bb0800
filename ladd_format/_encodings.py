"""Dense-label encodings: how [M, N*N, K] float labels become stored arrays and back.

An encoding owns the arrays it stores (by name) and decodes any slice along the image
axis with numpy (:meth:`Encoding.decoder`), or stored rows already on a torch device with
torch (:meth:`Encoding.torch_decode`, the same bits). The manifest names the encoding and
its parameters; readers refuse names or parameters they do not know. ``float32`` and
``float16`` are format 1.0; the quantised (``uint8``, ``uint16``) and sparse (``topk``)
encodings are format 1.1; ``coarse`` (uint8 codes in steps of 1/S, S < 255) is format 1.4
(SPEC.md section 5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import InvalidInputError, SchemaError, UnsupportedEncodingError

if TYPE_CHECKING:  # torch is imported only by the torch decoders, so the format stays torch-free
    import torch

DENSE_ARRAY = "dense_labels"
INDEX_ARRAY = "dense_index"
TOPK_RULES = ("smoothing", "renorm")
COARSE_MAX_SCALE = 254  # S = 255 is the uint8 encoding, which a 1.1 reader reads
_BLOCK_VALUES = 1 << 22  # encode this many input values at a time: bounds the sort's memory

Readers = Mapping[str, Callable[[object], np.ndarray]]


def uint_dtype(max_value: int) -> np.dtype:
    """The smallest of uint8, uint16, uint32 that holds ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise InvalidInputError(f"{max_value} does not fit in uint32")


@dataclass(frozen=True)
class Encoding:
    """IEEE floats stored as they are (format 1.0): float32 is exact, float16 rounds once."""

    name: str
    dtype: str
    since: str = "1.0"  # the format version that introduced the encoding
    params: dict = field(default_factory=dict)
    probs_only = False

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(over="ignore"):  # overflow becomes inf, which the writer reports
            return {DENSE_ARRAY: values.astype(self.dtype)}

    def stored_specs(self, num_images: int, num_crops: int, num_classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Array name -> (dtype, shape) that a container with this encoding must hold."""
        return {DENSE_ARRAY: (self.dtype, (num_images, num_crops, num_classes))}

    def dimension_names(self) -> dict[str, tuple[str, ...]]:
        return {DENSE_ARRAY: ("image", "crop", "class")}

    def decoder(self, readers: Readers) -> Callable[[object], np.ndarray]:
        """Given per-array readers (selection along the image axis -> stored values),
        a function mapping such a selection to float32 values."""
        read = readers[DENSE_ARRAY]
        return lambda selection: np.asarray(read(selection), dtype=np.float32)

    def check(self, stored: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`SchemaError` where stored rows break the encoding's rules; the numpy
        decoder checks every selection, a torch user checks the rows once before uploading."""

    def torch_decode(self, stored: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """float32 values of stored rows [..., last] (already checked), on their device: the
        same bits as :meth:`decoder` gives for those rows."""
        import torch

        return stored[DENSE_ARRAY].to(torch.float32)


@dataclass(frozen=True)
class Quantised(Encoding):
    """Probabilities as integers q that sum to 2**bits - 1 in every row; p = q / (2**bits - 1).

    Largest-remainder rounding keeps each value within one step of the input and makes
    every row sum to 1 exactly before the final float32 rounding, with no renormalisation.
    """

    since: str = "1.1"
    probs_only = True

    @property
    def scale(self) -> int:
        return int(np.iinfo(self.dtype).max)

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        out = np.empty(values.shape, self.dtype)
        for rows in _blocks(values):
            out[rows] = _quantise(_normalised(values[rows]), self.scale)
        return {DENSE_ARRAY: out}

    def decoder(self, readers: Readers) -> Callable[[object], np.ndarray]:
        read, scale = readers[DENSE_ARRAY], self.scale

        def decode(selection: object) -> np.ndarray:
            q = np.asarray(read(selection))
            self.check({DENSE_ARRAY: q})
            return q.astype(np.float32) / np.float32(scale)

        return decode

    def check(self, stored: Mapping[str, np.ndarray]) -> None:
        if (stored[DENSE_ARRAY].sum(axis=-1, dtype=np.int64) != self.scale).any():
            raise SchemaError(f"{DENSE_ARRAY}: a row does not sum to {self.scale} as {self.name!r} requires")

    def torch_decode(self, stored: Mapping[str, torch.Tensor]) -> torch.Tensor:
        import torch

        q = stored[DENSE_ARRAY].to(torch.float32)
        return q / _torch_float32(self.scale, q)


@dataclass(frozen=True)
class Coarse(Quantised):
    """``uint8`` with fewer levels: integers that sum to S (params ``scale``) in every row.

    Small labels at small IPC cost more than the images they help (28x28x1, K = 10: ``uint8``
    adds 37%); at S = 15 (4 bits of information) zstd stores about half of ``uint8``'s
    bytes, at S = 3 a quarter, each value still within 1/S of the input.
    """

    since: str = "1.4"

    @property
    def scale(self) -> int:
        return int(self.params["scale"])


@dataclass(frozen=True)
class TopK(Encoding):
    """Per crop the k largest probabilities (uint8 steps of 1/255) and their class indices.

    ``smoothing`` spreads the left-over mass evenly over the other K - k classes;
    ``renorm`` keeps only the k classes, their values L1-normalised before quantisation.
    """

    num_classes: int = 0
    since: str = "1.1"
    probs_only = True

    @property
    def k(self) -> int:
        return int(self.params["k"])

    @property
    def rule(self) -> str:
        return str(self.params["rule"])

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        m, crops, _ = values.shape
        q = np.empty((m, crops, self.k), np.uint8)
        index = np.empty((m, crops, self.k), uint_dtype(self.num_classes - 1))
        for rows in _blocks(values):
            p = _normalised(values[rows])
            top = np.argsort(-p, axis=-1, kind="stable")[..., :self.k]  # ties: lower class first
            kept = np.take_along_axis(p, top, axis=-1)
            if self.rule == "smoothing":
                rest = np.clip(1 - kept.sum(-1, keepdims=True), 0, None)
                q[rows] = _quantise(np.concatenate([kept, rest], axis=-1), 255)[..., :self.k]
            else:
                q[rows] = _quantise(kept / kept.sum(-1, keepdims=True), 255)
            index[rows] = top
        return {DENSE_ARRAY: q, INDEX_ARRAY: index}

    def stored_specs(self, num_images: int, num_crops: int, num_classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        shape = (num_images, num_crops, self.k)
        return {DENSE_ARRAY: ("uint8", shape), INDEX_ARRAY: (str(uint_dtype(num_classes - 1)), shape)}

    def dimension_names(self) -> dict[str, tuple[str, ...]]:
        return {DENSE_ARRAY: ("image", "crop", "rank"), INDEX_ARRAY: ("image", "crop", "rank")}

    def decoder(self, readers: Readers) -> Callable[[object], np.ndarray]:
        read_values, read_index = readers[DENSE_ARRAY], readers[INDEX_ARRAY]
        k, num_classes, smoothing = self.k, self.num_classes, self.rule == "smoothing"

        def decode(selection: object) -> np.ndarray:
            q = np.asarray(read_values(selection))
            index = np.asarray(read_index(selection))
            self.check({DENSE_ARRAY: q, INDEX_ARRAY: index})
            index = index.astype(np.int64)
            total = q.sum(axis=-1, dtype=np.int64)
            if smoothing:
                out = np.empty((*q.shape[:-1], num_classes), np.float32)
                out[...] = ((255 - total).astype(np.float32) / np.float32(255 * (num_classes - k)))[..., None]
                np.put_along_axis(out, index, q.astype(np.float32) / np.float32(255), axis=-1)
            else:
                out = np.zeros((*q.shape[:-1], num_classes), np.float32)
                np.put_along_axis(out, index, q.astype(np.float32) / total.astype(np.float32)[..., None], axis=-1)
            return out

        return decode

    def check(self, stored: Mapping[str, np.ndarray]) -> None:
        q, index = stored[DENSE_ARRAY], stored[INDEX_ARRAY].astype(np.int64)
        total = q.sum(axis=-1, dtype=np.int64)
        ordered = np.sort(index, axis=-1)
        if index.size and (index.max() >= self.num_classes or (ordered[..., 1:] == ordered[..., :-1]).any()):
            raise SchemaError(f"{INDEX_ARRAY}: class indices must be distinct and below {self.num_classes}")
        if self.rule == "smoothing" and (total > 255).any():
            raise SchemaError(f"{DENSE_ARRAY}: top-k values sum to more than 255")
        if self.rule == "renorm" and (total == 0).any():
            raise SchemaError(f"{DENSE_ARRAY}: a row of top-k values is all zero")

    def torch_decode(self, stored: Mapping[str, torch.Tensor]) -> torch.Tensor:
        import torch

        q, index = stored[DENSE_ARRAY], stored[INDEX_ARRAY].to(torch.int64)
        total = q.sum(dim=-1, keepdim=True, dtype=torch.int64).to(torch.float32)
        values = q.to(torch.float32)
        shape = (*q.shape[:-1], self.num_classes)
        if self.rule == "smoothing":
            rest = (255 - total) / _torch_float32(255 * (self.num_classes - self.k), values)
            return rest.expand(shape).contiguous().scatter_(-1, index, values / _torch_float32(255, values))
        return values.new_zeros(shape).scatter_(-1, index, values / total)


def _torch_float32(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a float32 tensor on ``like``'s device. A divisor must be a tensor there:
    CUDA divides by a Python number as a product with its reciprocal, off by one bit at times."""
    import torch

    return torch.full((), float(value), dtype=torch.float32, device=like.device)


def _normalised(values: np.ndarray) -> np.ndarray:
    p = values.astype(np.float64)
    return p / p.sum(axis=-1, keepdims=True)


def _quantise(p: np.ndarray, scale: int) -> np.ndarray:
    """Integers q with q = floor(p * scale) or that plus 1, summing to ``scale`` along the
    last axis (rows of ``p`` sum to 1): the units left after flooring go to the largest
    remainders, ties to the lower position.

    Rather than ranking every remainder (a stable argsort), each row's threshold is its
    ``short``-th largest remainder: values above it get a unit, and of the values equal to it
    the lowest positions get the units still missing. Same result, about 2x faster at K = 1,000.
    """
    x = p * scale
    q = np.floor(x)
    remainder = x - q
    short = (scale - q.sum(axis=-1, keepdims=True)).astype(np.int64)
    descending = -np.sort(-remainder, axis=-1)
    threshold = np.take_along_axis(descending, np.clip(short - 1, 0, p.shape[-1] - 1), axis=-1)
    above = remainder > threshold
    tied = remainder == threshold
    missing = short - above.sum(axis=-1, keepdims=True)
    plus = (above | (tied & (np.cumsum(tied, axis=-1) <= missing))) & (short > 0)
    return (q + plus).astype(uint_dtype(scale))


def _blocks(values: np.ndarray) -> list[slice]:
    per_image = max(1, int(np.prod(values.shape[1:])))
    step = max(1, _BLOCK_VALUES // per_image)
    return [slice(start, start + step) for start in range(0, len(values), step)]


_FIXED = {e.name: e for e in (Encoding("float32", "float32"), Encoding("float16", "float16"),
                              Quantised("uint8", "uint8"), Quantised("uint16", "uint16"))}
NAMES = (*_FIXED, "topk", "coarse")


def get_encoding(name: str, params: Mapping[str, object] | None, num_classes: int,
                 values: str = "probs") -> Encoding:
    """The encoding ``name`` with ``params`` for K = ``num_classes`` classes; unknown names
    or parameters, or logits in a probabilities-only encoding, raise
    :class:`UnsupportedEncodingError` (a reader's error)."""
    enc = _lookup(name, dict(params or {}), num_classes)
    if enc.probs_only and values != "probs":
        raise UnsupportedEncodingError(f"encoding {name!r} stores probabilities; use float32 or float16 for logits")
    return enc


def _lookup(name: str, params: dict, num_classes: int) -> Encoding:
    if name == "topk":
        return _topk(params, num_classes)
    if name == "coarse":
        return _coarse(params)
    if name not in _FIXED:
        raise UnsupportedEncodingError(
            f"dense-label encoding {name!r} is not supported by this reader "
            f"(known: {', '.join(NAMES)}); a newer ladd_format may read it")
    if params:
        raise UnsupportedEncodingError(f"encoding {name!r} takes no parameters, got {params}")
    return _FIXED[name]


def _topk(params: dict, num_classes: int) -> TopK:
    if set(params) != {"k", "rule"}:
        raise UnsupportedEncodingError(f"encoding 'topk' takes parameters k and rule, got {params}")
    k, rule = params["k"], params["rule"]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < num_classes:
        raise UnsupportedEncodingError(
            f"encoding 'topk' needs an integer k with 1 <= k < K = {num_classes}, got k={k!r}")
    if rule not in TOPK_RULES:
        raise UnsupportedEncodingError(f"encoding 'topk': rule must be one of {TOPK_RULES}, got {rule!r}")
    return TopK("topk", "uint8", params={"k": k, "rule": rule}, num_classes=num_classes)


def _coarse(params: dict) -> Coarse:
    if set(params) != {"scale"}:
        raise UnsupportedEncodingError(f"encoding 'coarse' takes the parameter scale, got {params}")
    scale = params["scale"]
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= COARSE_MAX_SCALE:
        raise UnsupportedEncodingError(
            f"encoding 'coarse' needs an integer scale with 1 <= scale <= {COARSE_MAX_SCALE} "
            f"(255 is the uint8 encoding), got scale={scale!r}")
    return Coarse("coarse", "uint8", params={"scale": scale})


def resolve_encoding(name: str, params: Mapping[str, object] | None, num_classes: int, values: str) -> Encoding:
    """Like :func:`get_encoding` for writer input: raises :class:`InvalidInputError`."""
    try:
        return get_encoding(name, params, num_classes, values)
    except UnsupportedEncodingError as exc:
        raise InvalidInputError(f"encoding: {exc}") from None
