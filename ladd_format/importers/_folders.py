"""Image folders: SRe2L (``new000/...``), RDED (``00000/...``), any folder per class, or ``ladd export``.

These hold uint8 image files already, so nothing is de-normalised: the images are decoded as
they are. SRe2L and RDED name class folders by class number; ``ladd export`` folders carry
``labels.csv`` (and ``classes.csv``), which keep the order, labels and class names. Every file
read must lie inside the folder given (``sources._checked_path``) and images are decoded only
after the count and size limits pass (``sources._read_images``).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from ..errors import InvalidInputError
from ..sources import _checked_path, _Limits, _list_images, _read_images
from ._common import KINDS, Distilled

NUMBERED = ("sre2l", "rded")
"""Kinds whose class folders end in the class number."""
READS = (*NUMBERED, "folder")
"""The kinds this module reads."""


def read(kind: str, src: Path, limits: _Limits) -> Distilled:
    """The images and labels of a class-folder tree (``kind`` is sre2l, rded or folder)."""
    if not src.is_dir():
        raise InvalidInputError(f"{src}: not a folder ({kind} reads a folder with one sub-folder per class)")
    record = {"kind": kind, "folder": src.name}
    if kind == "folder" and os.path.lexists(src / "labels.csv"):
        files, names = _read_index(src, src / "labels.csv", limits)
        record["index"] = "labels.csv"
    else:
        names = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
        files = _list_images(src, names, src, limits)
        if kind in NUMBERED:
            ids = [re.search(r"(\d+)$", name) for name in names]
            if not all(ids):
                raise InvalidInputError(f"{src}: class folder {names[ids.index(None)]!r} does not end in a "
                                        f"class number ({kind} layout)")
            files = [(f, int(ids[label].group(1))) for f, label in files]
            names = []  # numbered folders: names come from the dataset, else "0".."K-1"
    if not files:
        raise InvalidInputError(f"{src}: no images found in class sub-folders")
    [(images, labels)] = _read_images([files], None, limits)
    return Distilled(images, labels, names, None, None,
                     {"method": KINDS[kind], "details": {"imported_from": record}})


def _read_index(src: Path, index: Path, limits: _Limits) -> tuple[list[tuple[Path, int]], list[str]]:
    """The files, labels and class names of a folder written by :func:`ladd_format.export.export`."""
    rows = _csv_rows(src, index, limits)
    if not rows or not {"file", "label", "class_name"} <= set(rows[0]):
        raise InvalidInputError(f"{index}: expected columns index,file,label,class_name")
    names: dict[int, str] = {}
    files = []
    for line, row in enumerate(rows, 2):
        if None in (row["file"], row["label"], row["class_name"]):
            raise InvalidInputError(f"{index}: line {line} has fewer fields than the header")
        try:
            label = int(row["label"])
        except ValueError:
            label = -1
        if label < 0:
            raise InvalidInputError(f"{index}: label {row['label']!r} is not an integer >= 0")
        files.append((_checked_path(src / row["file"], src, limits), label))
        names[label] = row["class_name"]
    if os.path.lexists(src / "classes.csv"):
        rows = _csv_rows(src, src / "classes.csv", limits)
        try:
            names.update({int(row["label"]): str(row["class_name"]) for row in rows})
        except (KeyError, TypeError, ValueError):
            raise InvalidInputError(f"{src / 'classes.csv'}: expected integer labels in columns label,class_name") \
                from None
    return files, [names.get(i, str(i)) for i in range(max(names) + 1)]


def _csv_rows(src: Path, path: Path, limits: _Limits) -> list[dict[str, str]]:
    """The rows of a CSV file inside ``src``, at most ``limits.max_images`` of them."""
    rows = []
    try:
        with _checked_path(path, src, limits).open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                rows.append(row)
                if len(rows) > limits.max_images:
                    raise limits.over("max_images", f"{path} lists more than {limits.max_images} images")
    except (csv.Error, UnicodeDecodeError, OSError) as exc:
        raise InvalidInputError(f"{path}: cannot be read as a UTF-8 CSV file ({exc})") from None
    return rows
