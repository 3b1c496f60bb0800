"""ladd_format: publish, load and measure label-augmented distilled datasets (LADD).

The public API is small: :func:`write`, :func:`open`, :func:`pack`, :class:`LaddDataset`,
the manifest models in :mod:`ladd_format.manifest` and the errors in :mod:`ladd_format.errors`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._read import LaddDataset, LazyArray, open  # noqa: E402
from ._pack import pack  # noqa: E402
from ._write import write  # noqa: E402
from .errors import (  # noqa: E402
    ContainerExistsError,
    ContainerNotFoundError,
    IncompleteContainerError,
    IntegrityError,
    InvalidInputError,
    LaddError,
    SchemaError,
    UnsupportedEncodingError,
    VersionError,
)
from .manifest import FORMAT_VERSION, Manifest  # noqa: E402
from . import manifest, testing  # noqa: E402

__all__ = [
    "FORMAT_VERSION",
    "ContainerExistsError",
    "ContainerNotFoundError",
    "IncompleteContainerError",
    "IntegrityError",
    "InvalidInputError",
    "LaddDataset",
    "LaddError",
    "LazyArray",
    "Manifest",
    "SchemaError",
    "UnsupportedEncodingError",
    "VersionError",
    "open",
    "pack",
    "write",
]
