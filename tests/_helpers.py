"""Shared helpers for the container tests (not a public API)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ladd_format.manifest import manifest_digest


def chunk_files(container: Path, array: str) -> list[Path]:
    return sorted(p for p in (container / array / "c").rglob("*") if p.is_file())


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_manifest(container: Path, edit, *, redigest: bool = False) -> None:
    """Apply ``edit(manifest_dict)`` to a directory container's manifest in place."""
    meta_path = container / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta["attributes"]["ladd"])
    if redigest:
        meta["attributes"]["ladd"]["manifest_sha256"] = manifest_digest(meta["attributes"]["ladd"])
    meta_path.write_text(json.dumps(meta))


def zip_dir(source: Path, target: Path) -> Path:
    """Pack without any checks, to build damaged zip containers."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(p for p in source.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(source).as_posix())
    return target


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def synthetic_source(train: int, test: int):
    """A 28x28x1, 10-class source of noisy class prototypes: learnable in a few epochs."""
    from ladd_format import sources

    rng = np.random.default_rng(0)
    labels = np.arange(train + test) % 10
    proto = rng.integers(0, 256, (10, 28, 28, 1))
    images = np.clip(proto[labels] + rng.normal(0, 40, (train + test, 28, 28, 1)), 0, 255).astype(np.uint8)
    return sources.from_arrays("synthetic", images[:train], labels[:train], images[train:], labels[train:])


def write_idx_folder(folder: Path, train: int, test: int) -> Path:
    """A 10-class, 28 px grayscale source as the four Fashion-MNIST IDX files (seeded noise)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for stem, array in {"train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28)),
                        "train-labels-idx1-ubyte": np.arange(train) % 10,
                        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28)),
                        "t10k-labels-idx1-ubyte": np.arange(test) % 10}.items():
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        (folder / stem).write_bytes(header + array.astype(np.uint8).tobytes())
    return folder
