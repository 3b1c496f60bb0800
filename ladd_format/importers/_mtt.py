"""MTT, TESLA, GLaD and DATM: ``images_<tag>.pt`` + ``labels_<tag>.pt`` (+ DATM's ``lr_<tag>.pt``).

These code bases save normalised float tensors, ``<tag>`` being ``best`` or the iteration.
Runs with ZCA whitening save the *whitened* tensors under those names and an un-whitened
copy as ``images_zca_<it>.pt``. That copy is the only sign of whitening the files carry, so
a folder holding one refuses its whitened tensors until the user says how to get pixels back.

Files named on the command line are read where they lead; files found by name (in a run
folder, or beside the images file) must lie inside that folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..sources import UnsafePathError, _checked_path, _Limits
from ._common import (
    ZCA_WAYS_OUT,
    Distilled,
    InputNotFoundError,
    WhitenedImagesError,
    files_record,
    load_pt,
    scalar,
    split_labels,
    tensor,
)

READS = ("mtt", "tesla", "glad", "datm")
"""The kinds this module reads."""


def read(kind: str, src: Path, labels: str | os.PathLike[str] | None, lr: str | os.PathLike[str] | None,
         zca: bool, zca_inverse: str | os.PathLike[str] | None, limits: _Limits) -> Distilled:
    """The images, labels (and DATM's learned lr) of a run folder or of one images file."""
    images_path = _images_file(src)
    folder = images_path.parent

    def load(path: Path, named: bool) -> Any:
        return load_pt(path, max_bytes=limits.max_bytes, within=None if named else folder)

    labels_path = Path(labels) if labels is not None else _partner(images_path, "labels")
    if labels_path is None:
        raise InvalidInputError(f"{images_path}: cannot tell the labels file from the name (images<tag>.pt pairs "
                                "with labels<tag>.pt); pass labels= (--labels on the command line)")
    if labels is None and not os.path.lexists(labels_path):
        raise InputNotFoundError(f"{labels_path}: no such file (the labels of {images_path.name}); "
                                 "pass labels= (--labels on the command line) if they are elsewhere")
    lr_path = Path(lr) if lr is not None else _partner(images_path, "lr") if kind == "datm" else None
    if lr is None and lr_path is not None and not os.path.lexists(lr_path):
        lr_path = None
    images = tensor(load(images_path, images_path == src), images_path.name)
    _check_zca(images_path, images, zca, zca_inverse, limits)
    raw_labels = tensor(load(labels_path, labels is not None), labels_path.name)
    learned_lr = None if lr_path is None else scalar(load(lr_path, lr is not None), lr_path.name)
    files = [images_path, labels_path] + ([lr_path] if lr_path is not None else [])
    details: dict[str, Any] = {"imported_from": files_record(kind, files)}  # hashes files checked by load
    if learned_lr is not None:
        details["learned_lr"] = learned_lr
    return split_labels(kind, images, raw_labels, details)


def _images_file(src: Path) -> Path:
    """``src`` itself, or a run folder's ``images_best.pt``."""
    if not src.is_dir():
        return src
    if os.path.lexists(src / "images_best.pt"):
        return src / "images_best.pt"
    others = sorted(p.name for p in src.glob("images_*.pt"))
    raise InputNotFoundError(f"{src}: no images_best.pt in this folder; give the images file as the source"
                             + (f" (it holds {_listing(others)})" if others else ""))


def _partner(images_path: Path, prefix: str) -> Path | None:
    """``labels_<tag>.pt`` / ``lr_<tag>.pt`` beside ``images_<tag>.pt`` or ``images_zca_<tag>.pt``."""
    name, found = re.subn(r"^images(_zca)?", prefix, images_path.name)
    return images_path.with_name(name) if found else None


def _check_zca(path: Path, images: np.ndarray, zca: bool, zca_inverse: Any, limits: _Limits) -> None:
    """Refuse whitened tensors from a ZCA run unless ``zca_inverse`` is given; refuse un-whitening a copy."""
    if path.name.startswith("images_zca_"):
        if zca or zca_inverse is not None:
            raise InvalidInputError(f"{path.name} is MTT's un-whitened copy, not whitened: import it without "
                                    "zca= / zca_inverse= (--zca / --zca-inverse on the command line)")
        return
    copies = sorted(path.parent.glob("images_zca_*.pt"), key=_iteration)
    for copy in copies:
        _checked_path(copy, path.parent)
    if copies and zca_inverse is None:
        raise WhitenedImagesError(
            f"{path}: its folder holds {_listing([c.name for c in copies])}, which MTT-family code writes only "
            f"when it ran with ZCA whitening, so {path.name} holds ZCA-whitened tensors. Choose: "
            + ZCA_WAYS_OUT.format(copy=_copy_of(path, images, copies, limits)))


def _copy_of(path: Path, images: np.ndarray, copies: list[Path], limits: _Limits) -> str:
    """The name of ``path``'s un-whitened copy: ``images_zca_<it>.pt`` for ``images_<it>.pt``; for
    ``images_best.pt`` the copy of the iteration whose ``images_<it>.pt`` holds the same tensor."""
    for copy in copies:
        twin = copy.with_name(copy.name.replace("images_zca_", "images_", 1))
        if twin.name == path.name:
            return copy.name
        if path.name == "images_best.pt" and os.path.lexists(twin):
            try:
                if np.array_equal(tensor(load_pt(twin, max_bytes=limits.max_bytes, within=path.parent), twin.name),
                                  images):
                    return copy.name
            except UnsafePathError:
                raise
            except InvalidInputError:
                continue  # an unreadable twin only means no match
    return "images_zca_<it>.pt"


def _iteration(path: Path) -> tuple[int, str]:
    found = re.search(r"(\d+)\.pt$", path.name)
    return (int(found.group(1)) if found else -1, path.name)


def _listing(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{len(names)} files {names[0]} ... {names[-1]}"
