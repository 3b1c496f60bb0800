"""Parquet files that ``ladd export --format parquet`` (or ``ladd publish``) wrote, back to a container.

The schema metadata of each shard holds the container's manifest (key ``ladd``) and which rows
the shard holds; the rows hold the PNG images, the hard labels and, in ``ladd_<array>``
columns, the stored dense-label arrays as bytes. The container is written from those stored
arrays (no re-encoding), so it is exact: every array equal (the digests must equal the
manifest's, else nothing is written) and the manifest equal except ``created_by``. The
decoded ``dense_labels`` column is for people browsing; it is not read.

Parquet files are inputs from strangers: PNG sizes are checked against the manifest before
decoding, and each shard's metadata must agree with the others'.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, SchemaError
from ..manifest import Manifest, parse_manifest
from ._common import InputNotFoundError

READS = ("parquet",)


def _shards(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise InputNotFoundError(f"{src}: no such file or folder")
    found = sorted((src / "data").glob("*.parquet")) if (src / "data").is_dir() else []
    found = found or sorted(src.glob("*.parquet"))
    if not found:
        raise InvalidInputError(f"{src}: no .parquet files (looked in {src}/data and {src})")
    return found


def read_parquet_layout(src: str | os.PathLike[str]) -> tuple[Manifest, list[tuple[Path, int, int]]]:
    """The manifest the shards share and ``(file, start, stop)`` per shard, in row order."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidInputError("importing parquet needs pyarrow: pip install 'ladd_format[publish]'") from None
    from ..export import PARQUET_METADATA_KEY

    shards, body0 = [], None
    for path in _shards(Path(src)):
        try:
            meta = pq.read_schema(path).metadata or {}
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise InvalidInputError(f"{path.name}: not a readable parquet file ({exc})") from None
        if PARQUET_METADATA_KEY not in meta:
            raise InvalidInputError(f"{path.name}: no LADD metadata (key 'ladd'); it was not written by "
                                    "ladd export --format parquet")
        try:
            info = json.loads(meta[PARQUET_METADATA_KEY].decode("utf-8"))
            body, (start, stop), shard, count = info["manifest"], info["rows"], info["shard"], info["shards"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{path.name}: malformed LADD metadata ({exc})") from None
        if body0 is None:
            body0 = body
        elif body != body0:
            raise InvalidInputError(f"{path.name}: its manifest differs from the other shards'")
        shards.append((shard, count, int(start), int(stop), path))
    manifest = parse_manifest(body0, where="parquet manifest")
    shards.sort()
    expected = list(range(shards[0][1]))
    if [s[0] for s in shards] != expected or any(s[1] != len(expected) for s in shards):
        raise InvalidInputError(f"shards {[s[0] for s in shards]} found, expected {expected} (a shard is missing)")
    edge = 0
    for _, _, start, stop, path in shards:
        if start != edge or stop <= start:
            raise InvalidInputError(f"{path.name}: rows [{start}, {stop}) do not follow row {edge}")
        edge = stop
    if edge != manifest.num_images:
        raise InvalidInputError(f"the shards hold {edge} rows, the manifest {manifest.num_images} images")
    return manifest, [(path, start, stop) for _, _, start, stop, path in shards]


def _batches(manifest: Manifest, shards: list[tuple[Path, int, int]]) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    import pyarrow.parquet as pq
    from PIL import Image

    m = manifest
    h, w, c = m.image.height, m.image.width, m.image.channels
    mode = "RGB" if c == 3 else "L"
    stored = {n: r for n, r in m.arrays.items() if n not in ("images", "labels")}
    columns = ["image", "label", *[f"ladd_{n}" for n in stored]]
    for path, start, stop in shards:
        file = pq.ParquetFile(path)
        if file.metadata.num_rows != stop - start:
            raise InvalidInputError(f"{path.name}: {file.metadata.num_rows} rows, its metadata says {stop - start}")
        for batch in file.iter_batches(batch_size=256, columns=columns):
            table = batch.to_pydict()
            images = np.empty((len(table["label"]), h, w, c), np.uint8)
            for i, cell in enumerate(table["image"]):
                data = cell.get("bytes") if isinstance(cell, dict) else None
                if not isinstance(data, bytes):
                    raise InvalidInputError(f"{path.name}: row {i} has no image bytes")
                with Image.open(io.BytesIO(data)) as im:
                    if im.format != "PNG" or im.size != (w, h) or im.mode != mode:
                        raise InvalidInputError(f"{path.name}: row {i}: a {im.format} {im.mode} {im.size[0]}x"
                                                f"{im.size[1]} image, expected PNG {mode} {w}x{h}")
                    images[i] = np.asarray(im).reshape(h, w, c)
            labels = np.asarray(table["label"], dtype=np.int64)
            parts = {}
            for name, record in stored.items():
                dtype = np.dtype(record.dtype).newbyteorder("<")
                row_shape = tuple(record.shape[1:])
                row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
                cells = table[f"ladd_{name}"]
                if any(not isinstance(b, bytes) or len(b) != row_bytes for b in cells):
                    raise InvalidInputError(f"{path.name}: ladd_{name} rows must hold {row_bytes} bytes each")
                parts[name] = np.frombuffer(b"".join(cells), dtype=dtype).reshape(-1, *row_shape).astype(
                    np.dtype(record.dtype))
            yield images, labels, parts


def import_parquet(src: str | os.PathLike[str], out: str | os.PathLike[str], *, compression: str | None = "zstd",
                   overwrite: bool = False) -> Path:
    """Rebuild the container that ``ladd export --format parquet`` exported (a folder holding
    ``data/*.parquet``, or one ``.parquet`` file) at ``out``; exact (module doc)."""
    from ..publish import write_stored

    manifest, shards = read_parquet_layout(src)
    try:
        return write_stored(out, manifest, _batches(manifest, shards), publication=manifest.publication,
                            compression=compression, overwrite=overwrite,
                            expect={n: r.sha256 for n, r in manifest.arrays.items()})
    except SchemaError as exc:
        raise InvalidInputError(str(exc)) from None


def cmd(args: Any) -> int:
    """``ladd import parquet SRC OUT``."""
    out = import_parquet(args.src, args.out, overwrite=args.overwrite)
    print(f"imported parquet {args.src} -> {out} (exact: every array digest equals the exported container's)")
    return 0
