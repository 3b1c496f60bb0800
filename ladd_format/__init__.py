"""ladd_format: publish, load and measure label-augmented distilled datasets (LADD).

The public API is small: :func:`write` (and :class:`Writer` for data in pieces), :func:`open`, :func:`pack`, :func:`sweep`, :class:`LaddDataset`,
:func:`keep_freed_memory` (faster CPU training),
the manifest models in :mod:`ladd_format.manifest`, the errors in :mod:`ladd_format.errors`,
:class:`UniformSampler` (the one crop function) and :class:`DeviceLoader`/:class:`CropDataset`
(feeding trainers); the pipeline lives in :mod:`sources`, :mod:`models`, :mod:`labeler`,
:mod:`train`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._allocator import keep_freed_memory  # noqa: E402
from ._read import LaddDataset, LazyArray, open  # noqa: E402
from ._pack import pack  # noqa: E402
from ._store import sweep  # noqa: E402
from ._write import Writer, write  # noqa: E402
from .errors import (  # noqa: E402
    ContainerExistsError,
    ContainerNotFoundError,
    CredentialsRefusedError,
    IncompleteContainerError,
    IndexOutOfRangeError,
    InputTooLargeError,
    IntegrityError,
    InvalidInputError,
    LaddError,
    LimitExceededError,
    RemoteStoreError,
    SchemaError,
    UnsafePathError,
    UnsupportedEncodingError,
    VersionError,
)
from .manifest import FORMAT_VERSION, Manifest  # noqa: E402
from .storage import Overhead, overhead, reencode  # noqa: E402
from . import manifest, testing  # noqa: E402

# Names that need torch load on first use, so the container API imports fast.
_LAZY = {"UniformSampler": "sampler", "DeviceLoader": "loader", "CropDataset": "loader", "Batch": "loader",
         "publish": "publish"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Batch",
    "CropDataset",
    "DeviceLoader",
    "UniformSampler",
    "FORMAT_VERSION",
    "ContainerExistsError",
    "ContainerNotFoundError",
    "CredentialsRefusedError",
    "IncompleteContainerError",
    "IndexOutOfRangeError",
    "InputTooLargeError",
    "IntegrityError",
    "InvalidInputError",
    "LaddDataset",
    "LaddError",
    "LazyArray",
    "LimitExceededError",
    "Manifest",
    "Overhead",
    "RemoteStoreError",
    "SchemaError",
    "UnsafePathError",
    "UnsupportedEncodingError",
    "VersionError",
    "open",
    "overhead",
    "pack",
    "publish",
    "reencode",
    "sweep",
    "keep_freed_memory",
    "write",
    "Writer",
]
