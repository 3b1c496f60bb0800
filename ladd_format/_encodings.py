"""Dense-label encodings: how [M, N*N, K] float labels become stored arrays and back.

An encoding owns the arrays it stores (by name) and decodes any slice along the image
axis. The manifest names the encoding; readers refuse names they do not know.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError, UnsupportedEncodingError

DENSE_ARRAY = "dense_labels"


@dataclass(frozen=True)
class Encoding:
    """A lossless-or-stated-error mapping between float32 labels and stored arrays."""

    name: str
    dtype: str  # stored dtype of the single ``dense_labels`` array

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(over="ignore"):  # overflow becomes inf, which the writer reports
            return {DENSE_ARRAY: values.astype(self.dtype)}

    def stored_specs(self, num_images: int, num_crops: int, num_classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Array name -> (dtype, shape) that a container with this encoding must hold."""
        return {DENSE_ARRAY: (self.dtype, (num_images, num_crops, num_classes))}

    def decoder(self, readers: Mapping[str, Callable[[object], np.ndarray]]) -> Callable[[object], np.ndarray]:
        """Given per-array readers (selection along the image axis -> stored values),
        a function mapping such a selection to float32 values."""
        read = readers[DENSE_ARRAY]
        return lambda selection: np.asarray(read(selection), dtype=np.float32)


_ENCODINGS = {e.name: e for e in (Encoding("float32", "float32"), Encoding("float16", "float16"))}


def get_encoding(name: str, params: Mapping[str, object] | None = None) -> Encoding:
    """The encoding called ``name``; unknown names or parameters raise a typed error."""
    if name not in _ENCODINGS:
        raise UnsupportedEncodingError(
            f"dense-label encoding {name!r} is not supported by this reader "
            f"(known: {', '.join(sorted(_ENCODINGS))}); a newer ladd_format may read it"
        )
    if params:
        raise UnsupportedEncodingError(f"encoding {name!r} takes no parameters, got {dict(params)}")
    return _ENCODINGS[name]


def resolve_encoding(name: str) -> Encoding:
    """Like :func:`get_encoding` but for writer input: raises :class:`InvalidInputError`."""
    try:
        return get_encoding(name)
    except UnsupportedEncodingError as exc:
        raise InvalidInputError(f"encoding: {exc}") from None
