"""Image folders: SRe2L (``new000/...``), RDED (``00000/...``), any folder per class, or ``ladd export``.

These hold uint8 image files already, so nothing is de-normalised: the images are decoded as
they are. SRe2L and RDED name class folders by class number; ``ladd export`` folders carry
``labels.csv`` (and ``classes.csv``), which keep the order, labels and class names.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ..errors import InvalidInputError
from ._common import KINDS, Distilled

NUMBERED = ("sre2l", "rded")
"""Kinds whose class folders end in the class number."""
READS = (*NUMBERED, "folder")
"""The kinds this module reads."""


def read(kind: str, src: Path) -> Distilled:
    """The images and labels of a class-folder tree (``kind`` is sre2l, rded or folder)."""
    from ..sources import _IMAGE_SUFFIXES, _all_greyscale, _load_images

    if not src.is_dir():
        raise InvalidInputError(f"{src}: not a folder ({kind} reads a folder with one sub-folder per class)")
    record = {"kind": kind, "folder": src.name}
    if kind == "folder" and (src / "labels.csv").is_file():
        files, names = _read_index(src, src / "labels.csv")
        record["index"] = "labels.csv"
    else:
        names = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
        files = [(f, label) for label, name in enumerate(names) for f in sorted((src / name).iterdir())
                 if f.suffix.lower() in _IMAGE_SUFFIXES]
        if kind in NUMBERED:
            ids = [re.search(r"(\d+)$", name) for name in names]
            if not all(ids):
                raise InvalidInputError(f"{src}: class folder {names[ids.index(None)]!r} does not end in a "
                                        f"class number ({kind} layout)")
            files = [(f, int(ids[label].group(1))) for f, label in files]
            names = []  # numbered folders: names come from the dataset, else "0".."K-1"
    if not files:
        raise InvalidInputError(f"{src}: no images found in class sub-folders")
    images, labels = _load_images(files, _all_greyscale([f for f, _ in files]), None)
    return Distilled(images, labels, names, None, None,
                     {"method": KINDS[kind], "details": {"imported_from": record}})


def _read_index(src: Path, index: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """The files, labels and class names of a folder written by :func:`ladd_format.export.export`."""
    with index.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label", "class_name"} <= set(rows[0]):
        raise InvalidInputError(f"{index}: expected columns index,file,label,class_name")
    names: dict[int, str] = {}
    files = []
    for row in rows:
        try:
            label = int(row["label"])
        except ValueError:
            label = -1
        if label < 0:
            raise InvalidInputError(f"{index}: label {row['label']!r} is not an integer >= 0")
        path = (src / row["file"]).resolve()
        if src.resolve() not in path.parents or not path.is_file():
            raise InvalidInputError(f"{index}: {row['file']!r} is not a file inside {src}")
        names[label] = row["class_name"]
        files.append((path, label))
    classes = src / "classes.csv"
    if classes.is_file():
        with classes.open(newline="", encoding="utf-8") as f:
            try:
                names.update({int(row["label"]): row["class_name"] for row in csv.DictReader(f)})
            except (KeyError, ValueError):
                raise InvalidInputError(f"{classes}: expected integer labels in columns label,class_name") from None
    return files, [names.get(i, str(i)) for i in range(max(names) + 1)]
