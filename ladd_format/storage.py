"""What dense labels cost: the LADD paper's measurement beside the container's real bytes.

The paper counts images as uint8 and labels as float32 and compresses them with Python's
``zipfile`` (deflate). :func:`overhead` reproduces that count (dense labels as float32, as the
paper counts them, and in the container's own encoding), reports the bytes the container
really stores (directory and packed zip), and what one more image per class would cost
instead (the paper's "baseline++"). :func:`reencode` rewrites a container in another encoding.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_args import positive_int
from ._encodings import NAMES, TOPK_RULES
from ._read import LaddDataset
from ._read import open as open_container
from ._store import pack_dir
from ._write import write


@dataclass(frozen=True)
class Overhead:
    """Bytes and overheads of one container; ``to_json()`` gives a JSON-ready dict.

    ``paper_*``: deflate-compressed sizes as the paper measures them (images uint8 [M, H, W, C],
    hard labels one float32 class index per image, dense labels float32 [M, n*n, K] or the
    stored arrays of the container's encoding); ``raw_*``: the same before compression;
    ``stored_bytes``: each array as the container stores it (chunks after its codec, plus
    metadata; equal in both forms); ``zip_bytes``: the single-file form's size.

    One definition per name: ``baseline_bytes`` is the hard-label baseline on disk (the stored
    images + hard labels, exactly what a set without dense labels stores); ``stored_percent``
    is *the* overhead (dense labels' on-disk bytes / ``baseline_bytes``, as ``ladd inspect``
    and the demo report it); ``baseline_plus_plus_*`` is an on-disk *estimate* of one more
    image per class at this container's mean bytes per image (the demo measures it instead).
    ``paper_*`` percentages are relative to the paper's deflated images + hard labels.
    """

    location: str
    num_images: int
    num_classes: int
    crops: int
    image_shape: list[int]
    encoding: str
    encoding_params: dict[str, Any]
    raw_bytes: dict[str, int]
    raw_float32_percent: float
    raw_encoded_percent: float
    paper_base_bytes: int
    paper_float32_bytes: int
    paper_encoded_bytes: int
    paper_float32_percent: float
    paper_encoded_percent: float
    stored_bytes: dict[str, int]
    baseline_bytes: int
    stored_percent: float
    zip_bytes: int
    baseline_plus_plus_bytes: int
    baseline_plus_plus_percent: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def overhead(dataset: LaddDataset | str | os.PathLike[str]) -> Overhead:
    """Measure what the dense labels of a container (open dataset or path) cost."""
    if not isinstance(dataset, LaddDataset):
        with open_container(dataset) as ds:
            return overhead(ds)
    m = dataset.manifest
    images = np.ascontiguousarray(np.asarray(dataset.images))
    hard = dataset.labels.astype("<f4")
    dense32 = np.asarray(dataset._dense_values, dtype="<f4")
    encoded = {name: np.asarray(array[:]) for name, array in dataset._arrays.items()
               if name not in ("images", "labels")}
    base_parts = {"images": images, "hard_labels": hard}
    base = _deflated(base_parts)
    with_float32 = _deflated({**base_parts, "dense_float32": dense32})
    with_encoded = _deflated({**base_parts, **encoded})
    raw = {"images": images.nbytes, "hard_labels": hard.nbytes, "dense_float32": dense32.nbytes,
           "dense_encoded": sum(a.nbytes for a in encoded.values())}
    raw_base = raw["images"] + raw["hard_labels"]
    stored = dataset.stored_bytes()
    stored_base = stored["images"] + stored["labels"]
    extra_images = m.num_classes  # baseline++: one more image per class, at the average size
    return Overhead(
        location=dataset.location, num_images=m.num_images, num_classes=m.num_classes, crops=m.sampler.num_crops,
        image_shape=[m.image.height, m.image.width, m.image.channels], encoding=m.dense_labels.encoding,
        encoding_params=dict(m.dense_labels.params), raw_bytes=raw,
        raw_float32_percent=_percent(raw["dense_float32"], raw_base),
        raw_encoded_percent=_percent(raw["dense_encoded"], raw_base),
        paper_base_bytes=base, paper_float32_bytes=with_float32, paper_encoded_bytes=with_encoded,
        paper_float32_percent=_percent(with_float32 - base, base),
        paper_encoded_percent=_percent(with_encoded - base, base),
        stored_bytes=stored, baseline_bytes=stored_base,
        stored_percent=_percent(sum(stored.values()) - stored_base, stored_base),
        zip_bytes=_zip_size(dataset),
        baseline_plus_plus_bytes=round(stored_base * (m.num_images + extra_images) / m.num_images),
        baseline_plus_plus_percent=_percent(extra_images, m.num_images),
    )


def reencode(source: str | os.PathLike[str], target: str | os.PathLike[str], encoding: str, *,
             encoding_params: Mapping[str, Any] | None = None, compression: str | None = "zstd",
             overwrite: bool = False) -> Path:
    """Write the container ``source`` again at ``target`` with another dense-label encoding.

    Images, hard labels and every metadata member are kept; the decoded dense values are
    encoded anew and every digest is recomputed (a lossy source stays as lossy as it was).
    """
    with open_container(source) as ds:
        m = ds.manifest
        return write(target, np.asarray(ds.images), ds.labels, np.asarray(ds._dense_values),
                     class_names=m.class_names, mean=m.image.mean, std=m.image.std, sampler=m.sampler,
                     encoding=encoding, encoding_params=encoding_params, values=m.dense_labels.values,
                     temperature=m.dense_labels.temperature, labeler=m.labeler, distillation=m.distillation,
                     extra=m.extra, compression=compression, overwrite=overwrite)


def _deflated(arrays: Mapping[str, np.ndarray]) -> int:
    """Size of a zip archive holding each array's raw bytes as one deflated entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            zf.writestr(f"{name}.bin", np.ascontiguousarray(array).tobytes())
    return buffer.getbuffer().nbytes


def _zip_size(dataset: LaddDataset) -> int:
    location = Path(dataset.location)
    if location.is_file():
        return location.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        packed = Path(tmp) / "c.ladd.zip"
        pack_dir(location, packed)
        return packed.stat().st_size


def _percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 4)


def _cmd_overhead(args: argparse.Namespace) -> int:
    report = overhead(args.path)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    h, w, c = report.image_shape
    params = f" {report.encoding_params}" if report.encoding_params else ""
    print(f"{report.location}: {report.num_images} images {h}x{w}x{c}, K = {report.num_classes}, "
          f"{report.crops} crops, encoding {report.encoding}{params}")
    print("  on disk (chunks after codecs, plus metadata):")
    for name, size in report.stored_bytes.items():
        print(f"    {name:34s}{size:>14,d} bytes")
    print(f"    hard-label baseline (images+labels){report.baseline_bytes:>13,d} bytes")
    print(f"    overhead of the dense labels      {report.stored_percent:>+13.2f}%")
    print(f"    baseline++ estimate (+1 image/class){report.baseline_plus_plus_bytes:>12,d} bytes  "
          f"{report.baseline_plus_plus_percent:+.2f}%  (mean bytes per image; not measured)")
    print(f"    single-file form (.ladd.zip)      {report.zip_bytes:>14,d} bytes")
    print("  the paper's count (zipfile deflate; images uint8, hard labels float32):")
    print(f"    images + hard labels              {report.paper_base_bytes:>14,d} bytes")
    print(f"    + dense labels as float32         {report.paper_float32_bytes:>14,d} bytes  "
          f"{report.paper_float32_percent:+.2f}%  (before compression {report.raw_float32_percent:+.2f}%)")
    print(f"    + dense labels as stored          {report.paper_encoded_bytes:>14,d} bytes  "
          f"{report.paper_encoded_percent:+.2f}%  (before compression {report.raw_encoded_percent:+.2f}%)")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    params = {"topk": {"k": args.k, "rule": args.rule}, "coarse": {"scale": args.scale}}.get(args.encoding)
    compression = None if args.compression == "none" else args.compression
    out = reencode(args.source, args.target, args.encoding, encoding_params=params, compression=compression,
                   overwrite=args.overwrite)
    print(f"wrote {out} (dense labels as {args.encoding}{'' if params is None else f' {params}'})")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``ladd overhead`` and ``ladd encode`` to the ``ladd`` command line."""
    s = subparsers.add_parser("overhead", help="what the dense labels cost: the paper's count and the bytes on disk")
    s.add_argument("path")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.set_defaults(func=_cmd_overhead)

    s = subparsers.add_parser("encode", help="rewrite a container with another dense-label encoding")
    s.add_argument("source")
    s.add_argument("target")
    s.add_argument("--encoding", required=True, choices=NAMES)
    s.add_argument("--k", type=positive_int, default=5, help="topk: classes kept per crop")
    s.add_argument("--rule", default="smoothing", choices=TOPK_RULES, help="topk: how the rest of the mass decodes")
    s.add_argument("--scale", type=positive_int, default=15,
                   help="coarse: each crop's label in steps of 1/scale (1 to 254, default 15)")
    s.add_argument("--compression", default="zstd", choices=["zstd", "gzip", "none"],
                   help="chunk codec of the new container, for every array: none stores the images "
                        "uncompressed too")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_encode)


__all__ = ["Overhead", "overhead", "reencode", "register_cli"]
