"""Packing a container directory into the single-file ``.ladd.zip`` form."""

from __future__ import annotations

import os
from pathlib import Path

from ._read import open as open_container
from ._store import check_target, is_zip_path, pack_dir
from .errors import InvalidInputError


def pack(source: str | os.PathLike[str], target: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Pack the container directory ``source`` into the zip file ``target``.

    The source is fully verified first, so a damaged container is never packed.
    """
    src, dst = Path(source), Path(target)
    if not src.is_dir():
        raise InvalidInputError(f"{src} is not a container directory")
    if not is_zip_path(dst):
        raise InvalidInputError(f"{dst}: a packed container's name must end in .zip (e.g. .ladd.zip)")
    with open_container(src, verify=True):
        pass
    check_target(dst, overwrite)
    pack_dir(src, dst)
    return dst
