"""Containers in object stores (``s3://``, ``gs://``, ``memory://``, any fsspec URL).

Reading needs nothing from this module: :func:`ladd_format.open` takes a URL and
``storage_options`` (handed to fsspec: for S3 ``key``, ``secret``, ``endpoint_url``,
``client_kwargs``, ``anon``, ...; without them s3fs reads ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` and the rest of the AWS configuration).
A URL that names one object is the single-file form; a URL that names a prefix is the
directory form. The listing and every read go through the same bounds as a local container.

Writing goes through :func:`upload`: a container is written and verified locally, then
copied so that a reader never opens a half-uploaded one (see its docstring).

The errors of this module are :class:`~ladd_format.LaddError` subclasses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import (  # noqa: F401 - the remote errors are re-exported here
    ContainerExistsError,
    CredentialsRefusedError,
    IntegrityError,
    InvalidInputError,
    LaddError,
    RemoteStoreError,
)

__all__ = ["CredentialsRefusedError", "RemoteStoreError", "upload"]


ROOT_KEY = "zarr.json"
"""The root group metadata, which holds the manifest: uploaded last, deleted first."""


def upload(local_container: str | os.PathLike[str], url: str, *,
           storage_options: dict[str, Any] | None = None, overwrite: bool = False) -> str:
    """Copy a local container to an fsspec URL (``s3://bucket/path/c.ladd``) and return the URL.

    The local container is verified first (every digest), so only intact data is published.

    - Single-file form (``c.ladd.zip``, uploaded to a URL ending in ``.zip``): one object
      written with one PUT (a multipart upload for large files); an object store makes an
      object appear whole or not at all, so readers see the old object or the new one.
    - Directory form: every array object is written first and the root ``zarr.json``, which
      holds the manifest, last. Until it lands a reader finds no manifest and refuses the
      prefix as incomplete (:class:`~ladd_format.IncompleteContainerError`), so an upload cut
      off at any point is never opened as a container; rerun it with ``overwrite=True``.
      Replacing a container (``overwrite=True``) deletes the old root ``zarr.json`` first and
      the old container's surplus objects next, so from then on readers see an incomplete
      container until the new one is complete. A reader that opened the old container before
      that may still read objects while they are replaced and so see old and new chunks
      mixed; the array digests catch that (``verify=True`` or ``verify="read"``).

    After the copy the target is listed again and every object's size compared with the
    local file. ``storage_options`` go to fsspec as for :func:`ladd_format.open`. Raises
    :class:`~ladd_format.ContainerExistsError` when something is at ``url`` and
    ``overwrite`` is false, :class:`CredentialsRefusedError` when the store refuses the
    credentials, :class:`RemoteStoreError` when it cannot be reached.
    """
    from ._read import open as open_container
    from ._store import _dir_sizes, _remote_error, _url_fs, is_zip_path

    if not isinstance(url, str) or "://" not in url:
        raise InvalidInputError(f"{url!r}: upload needs a URL such as s3://bucket/path/c.ladd; for a local "
                                "target write or pack the container there")
    if isinstance(local_container, str) and "://" in local_container:
        raise InvalidInputError(f"{local_container}: upload copies a local container; this is a URL")
    local = Path(local_container)
    open_container(local, verify=True).close()  # typed errors for anything missing or damaged
    single = local.is_file()
    if single != is_zip_path(url):
        form = "a single-file container needs a URL ending in .zip" if single else \
            "a container directory needs a URL not ending in .zip (that names the single-file form)"
        raise InvalidInputError(f"{url}: {form}")
    fs, path = _url_fs(url, storage_options, asynchronous=False)
    path = path.rstrip("/")
    try:
        existing = fs.find(path, detail=True)
        if existing and not overwrite:
            raise ContainerExistsError(f"{url} already holds {len(existing)} object(s); pass overwrite=True "
                                       "to replace them")
        inside = {name.removeprefix(path + "/") for name in existing if name.startswith(path + "/")}
        if single:
            if inside:
                raise InvalidInputError(f"{url}: objects below this URL (a container directory?); refusing to "
                                        "replace them with a single object; delete them first")
            fs.put_file(str(local), path)
            expected = {"": local.stat().st_size}
        else:
            if path in existing:
                raise InvalidInputError(f"{url} is a single object; refusing to replace it with a container "
                                        "directory; delete it first")
            expected = _dir_sizes(local.resolve(), str(local))
            if ROOT_KEY in inside:  # from now on readers see no container, not a changing one
                fs.rm_file(f"{path}/{ROOT_KEY}")
            stale = sorted(inside - set(expected) - {ROOT_KEY})
            if stale:
                fs.rm([f"{path}/{key}" for key in stale])
            keys = sorted(set(expected) - {ROOT_KEY})
            if keys:
                fs.put([str(local / key) for key in keys], [f"{path}/{key}" for key in keys])
            fs.put_file(str(local / ROOT_KEY), f"{path}/{ROOT_KEY}")  # the manifest, last
        fs.invalidate_cache(path)
        landed = fs.find(path, detail=True)
    except LaddError:
        raise
    except Exception as exc:  # the back end's own errors, mapped to typed ones
        raise _remote_error(exc, url, fs, storage_options) from None
    found = {name.removeprefix(path).removeprefix("/"): info.get("size") for name, info in landed.items()}
    if found != expected:
        differ = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        raise IntegrityError(f"{url}: after the upload the store lists other objects or sizes than the local "
                             f"container ({len(differ)} differ, such as {differ[:3]}); upload again with "
                             "overwrite=True")
    return url
