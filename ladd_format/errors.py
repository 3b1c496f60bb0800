"""Typed errors. Every failure the library reports on purpose is a :class:`LaddError`.

Each subclass also derives from the closest built-in exception, so code that already
catches ``ValueError`` or ``FileExistsError`` keeps working.
"""

from __future__ import annotations


class LaddError(Exception):
    """Base class of every error ladd_format raises on purpose."""


class InvalidInputError(LaddError, ValueError):
    """Arrays or metadata handed to a writer are unusable; nothing was written."""


class IndexOutOfRangeError(InvalidInputError, IndexError):
    """An image index or count lies outside what the container holds."""


class InputTooLargeError(InvalidInputError):
    """An input (a file to import, a checkpoint) declares more than a stated limit; the message
    says how to raise the limit."""


class UnsafePathError(InvalidInputError):
    """A path inside a folder being read leads outside it, or is not a regular file (a FIFO blocks)."""


class ContainerExistsError(LaddError, FileExistsError):
    """The target path already holds something and ``overwrite`` was not given."""


class SchemaError(LaddError, ValueError):
    """The manifest is missing, malformed, or disagrees with the arrays."""


class VersionError(LaddError):
    """The container's format major version is newer than this reader understands."""


class UnsupportedEncodingError(SchemaError):
    """The manifest names a dense-label encoding this reader does not know."""


class LimitExceededError(SchemaError):
    """The container declares more than a reader may decode for what it stores (SPEC.md section 12)."""


class IncompleteContainerError(LaddError):
    """Some part of the container (manifest, array metadata, a chunk) is absent."""


class IntegrityError(LaddError):
    """Stored bytes do not match the digests in the manifest, or cannot be decoded."""


class ContainerNotFoundError(LaddError, FileNotFoundError):
    """Nothing exists at the path or URL given to :func:`ladd_format.open`."""


class RemoteStoreError(LaddError, OSError):
    """An object store could not be reached or failed a request; the message names the URL
    and the endpoint."""


class CredentialsRefusedError(RemoteStoreError, PermissionError):
    """An object store refused the credentials given (or found none to sign with), or
    refused them access to the container."""
