"""Export a container to what existing evaluation scripts read: a PNG class folder, ``.pt`` or ``.npz``.

Every format keeps the images, hard labels, dense labels and class names, so nothing the
container holds is lost on the way to a script that cannot read Zarr.

``folder``: one PNG per image in one sub-folder per class (named by the zero-padded class
index, since class names may hold characters no file system accepts), plus ``labels.csv``
(index,file,label,class_name) in the container's order, ``classes.csv`` (label,class_name
for every class, including any without images), ``dense_labels.npy`` (float32 probabilities
[M, n*n, K] in the same order, ``numpy.load(allow_pickle=False)`` reads it) and
``manifest.json`` (the container's manifest: sampler, labeler and distillation provenance; its
digests describe the container's arrays, not these files). ``ladd import folder`` reads the
images, labels and class names back.
``pt`` / ``npz``: a flat dict, ``images`` NCHW as the field's code keeps them (uint8, or with
``normalized=True`` float32 normalised with the container's mean/std, like MTT's
``images_best.pt``), ``labels`` int64 [M], ``dense_labels`` float32 probabilities [M, n*n, K],
``mean`` and ``std`` float32 [C], and ``class_names`` (a list of str in ``.pt``, a str array in
``.npz``). A ``.pt`` file holds only tensors and strings, so ``torch.load(weights_only=True)``
reads it; ``numpy.load(allow_pickle=False)`` reads the ``.npz``.
``parquet`` (needs ``pyarrow``): a folder ``data/train-XXXXX-of-YYYYY.parquet`` in the layout of the
Hugging Face Hub (its dataset viewer shows it, ``datasets.load_dataset("parquet", ...)`` and
pandas read it): one row per image with ``image`` (struct ``{bytes: PNG, path: null}``, the Hub's
``Image`` feature), ``label`` (int64, a ``ClassLabel`` with the class names) and ``dense_labels``
(float32 [n*n][K], the decoded probabilities), plus one ``ladd_<array>`` binary column per stored
dense-label array (the row's stored values, C order, little-endian). The schema metadata holds
the ``datasets`` features (key ``huggingface``) and the container's manifest (key ``ladd``), so
``ladd import parquet`` (:func:`ladd_format.importers.import_parquet`) rebuilds the container
exactly: equal arrays (so equal digests) and an equal manifest except ``created_by``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ._read import LaddDataset
from ._read import open as open_container
from ._store import place, remove, sibling
from .errors import ContainerExistsError, InvalidInputError

FORMATS = ("folder", "pt", "npz", "parquet")
_PNG_BATCH = 256


def export(path: str | os.PathLike[str], out: str | os.PathLike[str], *, format: str = "folder",  # noqa: A002
           normalized: bool = False, overwrite: bool = False) -> Path:
    """Write the container at ``path`` to ``out`` in ``format`` (see the module doc); return ``out``.

    The result is built in a hidden sibling and renamed into place, so ``out`` is either
    absent, the old content, or complete. An existing ``out`` is replaced only with ``overwrite``.
    """
    if format not in FORMATS:
        raise InvalidInputError(f"export format must be one of {', '.join(FORMATS)}, not {format!r}")
    if normalized and format == "folder":
        raise InvalidInputError("normalized=True (--normalized on the command line) applies to pt and npz; "
                                "PNG images are always uint8")
    target = Path(out)
    if target.resolve() == Path(path).resolve():
        raise InvalidInputError(f"{target} is the container being exported; choose another output")
    if target.exists() and not overwrite:
        raise ContainerExistsError(f"{target} already exists; pass overwrite=True (--overwrite on the command "
                                   "line) to replace it")
    if target.exists() and target.is_dir() != (format in ("folder", "parquet")):
        raise InvalidInputError(f"{target} exists and is a {'folder' if target.is_dir() else 'file'}; "
                                f"refusing to replace it with a {format} export")
    with open_container(path) as ds:
        if format == "folder":
            _publish(target, lambda tmp: _write_folder(ds, tmp))
        elif format == "parquet":
            _require_pyarrow()
            _publish(target, lambda tmp: (tmp.mkdir(), write_parquet(ds, tmp)))
        else:
            arrays = tensors(ds, normalized=normalized)
            _publish(target, lambda tmp: _write_arrays(arrays, tmp, format, ds.class_names))
    return target


def tensors(ds: LaddDataset, *, normalized: bool = False) -> dict[str, np.ndarray]:
    """The container as plain arrays in the export layout (images NCHW)."""
    m = ds.manifest
    mean = np.asarray(m.image.mean, dtype=np.float32)
    std = np.asarray(m.image.std, dtype=np.float32)
    images = np.ascontiguousarray(np.asarray(ds.images).transpose(0, 3, 1, 2))
    if normalized:
        images = (images.astype(np.float32) / 255 - mean[:, None, None]) / std[:, None, None]
    return {"images": images, "labels": ds.labels.astype(np.int64),
            "dense_labels": np.asarray(ds.dense_labels, dtype=np.float32), "mean": mean, "std": std}


def _write_folder(ds: LaddDataset, folder: Path) -> None:
    from PIL import Image

    folder.mkdir()
    width = max(3, len(str(ds.num_classes - 1)))
    digits = max(6, len(str(len(ds) - 1)))
    names = ds.class_names
    rows = []
    dense = np.lib.format.open_memmap(folder / "dense_labels.npy", mode="w+", dtype=np.float32,
                                      shape=ds.dense_labels.shape)
    for start in range(0, len(ds), _PNG_BATCH):
        batch = ds.images[start:start + _PNG_BATCH]
        dense[start:start + len(batch)] = ds.dense_labels[start:start + len(batch)]
        for offset, image in enumerate(batch):
            index = start + offset
            label = int(ds.labels[index])
            rel = f"{label:0{width}d}/{index:0{digits}d}.png"
            (folder / rel).parent.mkdir(exist_ok=True)
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / rel, format="PNG")
            rows.append((index, rel, label, names[label]))
    dense.flush()
    del dense  # close the memory map before the folder is renamed into place
    _write_csv(folder / "labels.csv", ("index", "file", "label", "class_name"), rows)
    _write_csv(folder / "classes.csv", ("label", "class_name"), list(enumerate(names)))
    (folder / "manifest.json").write_text(json.dumps(ds.manifest.to_json(), indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")


PARQUET_SHARD_BYTES = 256 << 20
"""Parquet shards hold about this many bytes of rows (PNG and dense labels) each."""
PARQUET_METADATA_KEY = b"ladd"


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InvalidInputError("the parquet format needs pyarrow: pip install 'ladd_format[publish]'") from None


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def hf_features(ds: LaddDataset) -> dict:
    """The Hugging Face ``datasets`` features of the parquet layout."""
    stored = {f"ladd_{name}": {"dtype": "binary", "_type": "Value"} for name in ds.manifest.arrays
              if name not in ("images", "labels")}
    return {"image": {"_type": "Image"}, "label": {"names": list(ds.class_names), "_type": "ClassLabel"},
            "dense_labels": {"feature": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"},
                             "_type": "Sequence"}, **stored}


def write_parquet(ds: LaddDataset, folder: Path, *, shard_bytes: int = PARQUET_SHARD_BYTES) -> list[Path]:
    """Write ``folder/data/train-XXXXX-of-YYYYY.parquet`` (module doc) and return the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    m = ds.manifest
    stored_names = [n for n in m.arrays if n not in ("images", "labels")]
    crops, k = m.sampler.num_crops, m.num_classes
    row_bytes = (m.image.height * m.image.width * m.image.channels + 8 + 2 * crops * k * 4
                 + sum(int(np.prod(r.shape[1:])) * np.dtype(r.dtype).itemsize for r in m.arrays.values()))
    rows_per_shard = max(1, shard_bytes // row_bytes)
    shards = -(-len(ds) // rows_per_shard)
    rows_per_shard = -(-len(ds) // shards)  # equal shards
    group = max(1, min(rows_per_shard, (32 << 20) // row_bytes))
    schema = pa.schema([
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64()),
        ("dense_labels", pa.list_(pa.list_(pa.float32()))), *[(f"ladd_{n}", pa.binary()) for n in stored_names]])
    manifest = m.to_json()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    files = []
    for shard in range(shards):
        start, stop = shard * rows_per_shard, min((shard + 1) * rows_per_shard, len(ds))
        meta = {b"huggingface": json.dumps({"info": {"features": hf_features(ds)}}, ensure_ascii=False).encode(),
                PARQUET_METADATA_KEY: json.dumps({"manifest": manifest, "shard": shard, "shards": shards,
                                                  "rows": [start, stop]}, ensure_ascii=False).encode()}
        path = folder / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet"
        with pq.ParquetWriter(path, schema.with_metadata(meta), compression="zstd") as writer:
            for lo in range(start, stop, group):
                hi = min(lo + group, stop)
                images = np.asarray(ds.images[lo:hi])
                dense = np.ascontiguousarray(np.asarray(ds.dense_labels[lo:hi], dtype=np.float32))
                columns = {
                    "image": pa.StructArray.from_arrays(
                        [pa.array([_png(im) for im in images], pa.binary()), pa.nulls(hi - lo, pa.string())],
                        names=["bytes", "path"]),
                    "label": pa.array(ds.labels[lo:hi].astype(np.int64)),
                    "dense_labels": pa.ListArray.from_arrays(
                        pa.array(np.arange(0, (hi - lo) * crops + 1, crops, dtype=np.int32)),
                        pa.ListArray.from_arrays(pa.array(np.arange(0, (hi - lo) * crops * k + 1, k, dtype=np.int32)),
                                                 pa.array(dense.reshape(-1)))),
                }
                for n in stored_names:
                    part = np.asarray(ds._arrays[n][lo:hi])
                    little = np.ascontiguousarray(part, dtype=part.dtype.newbyteorder("<"))
                    columns[f"ladd_{n}"] = pa.array([row.tobytes() for row in little], pa.binary())
                writer.write_table(pa.table(columns, schema=schema.with_metadata(meta)), row_group_size=group)
        files.append(path)
    return files


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_arrays(arrays: dict[str, np.ndarray], file: Path, kind: str, class_names: list[str]) -> None:
    with file.open("wb") as f:
        if kind == "pt":
            import torch

            torch.save({**{k: torch.from_numpy(v) for k, v in arrays.items()}, "class_names": list(class_names)}, f)
        else:
            np.savez(f, **arrays, class_names=np.array(class_names, dtype=str))
        f.flush()
        os.fsync(f.fileno())


def _publish(target: Path, build: Callable[[Path], None]) -> None:
    """Build into a hidden sibling, then rename it onto ``target`` (the old one moved aside first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(target, "tmp")
    try:
        build(tmp)
        place(tmp, target)
    finally:
        remove(tmp)
