"""Shared helpers for the container tests (not a public API)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

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
