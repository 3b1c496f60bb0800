"""Publish a container: one folder that a stranger can validate, browse, cite and index.

:func:`publish` writes ``OUT_DIR/`` (staged in a hidden sibling, then renamed into place):

- ``NAME.ladd.zip``: the container in single-file form, with the publisher's license, authors,
  citation and homepage in its manifest (``publication``, format 1.3, SPEC.md section 3.7);
  every array is copied as stored, so its digests equal the source's.
- ``README.md``: a Hugging Face dataset card: YAML front matter (license, pretty_name,
  task_categories, size_categories, tags, configs) and a body stating classes, IPC, image
  size, crop grid, encoding, storage overhead (:func:`ladd_format.storage.overhead`),
  labeler and distillation provenance, the accuracy table of a results file, how to load it,
  and the citation.
- ``croissant.json``: an MLCommons Croissant 1.0 (JSON-LD) description of the files (sha256,
  size, encoding format) and of the parquet records (image, label, dense labels).
- ``data/train-XXXXX-of-YYYYY.parquet``: the set as parquet (:func:`ladd_format.export.export`
  ``format="parquet"``), which the Hub's dataset viewer shows; needs ``pyarrow``.
- ``SHA256SUMS``: ``sha256sum -c SHA256SUMS`` checks every other file.

Every piece of metadata is checked before anything is written (:class:`PublicationError`).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import difflib
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from ._read import LaddDataset
from ._read import open as open_container
from ._store import place, remove, sibling
from ._write import Writer
from .errors import ContainerExistsError, InvalidInputError, SchemaError
from .manifest import Manifest, PublicationInfo, _describe

__all__ = ["LICENSES", "MissingCardFieldError", "PublicationError", "TextEncodingError", "UnknownLicenseError",
           "check_license", "copy_container", "publication_info", "publish", "register_cli"]


class PublicationError(InvalidInputError):
    """Metadata handed to :func:`publish` is unusable; nothing was written."""


class UnknownLicenseError(PublicationError):
    """The license is neither an SPDX identifier nor a Hugging Face Hub license id we know."""


class MissingCardFieldError(PublicationError):
    """A field the dataset card needs (license, authors) was not given."""


class TextEncodingError(PublicationError):
    """Text that has no UTF-8 form (bytes that are not UTF-8, a lone surrogate)."""


# -- licenses ---------------------------------------------------------------------------------

_HUB_LICENSES = (
    "apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 "
    "bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc "
    "cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 "
    "cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 "
    "cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 "
    "eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c "
    "ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib "
    "pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma unknown other").split()
"""License ids the Hugging Face Hub accepts in a card's ``license`` (lower case)."""

_SPDX = (
    "0BSD AFL-3.0 AGPL-3.0-only AGPL-3.0-or-later Apache-2.0 Artistic-2.0 BSD-2-Clause BSD-3-Clause "
    "BSD-3-Clause-Clear BSL-1.0 CC-BY-2.0 CC-BY-2.5 CC-BY-3.0 CC-BY-4.0 CC-BY-NC-2.0 CC-BY-NC-3.0 CC-BY-NC-4.0 "
    "CC-BY-NC-ND-3.0 CC-BY-NC-ND-4.0 CC-BY-NC-SA-2.0 CC-BY-NC-SA-3.0 CC-BY-NC-SA-4.0 CC-BY-ND-4.0 CC-BY-SA-3.0 "
    "CC-BY-SA-4.0 CC0-1.0 CDLA-Permissive-1.0 CDLA-Permissive-2.0 CDLA-Sharing-1.0 ECL-2.0 EPL-1.0 EPL-2.0 "
    "EUPL-1.1 EUPL-1.2 GFDL-1.3-only GFDL-1.3-or-later GPL-2.0-only GPL-2.0-or-later GPL-3.0-only "
    "GPL-3.0-or-later ISC LGPL-2.1-only LGPL-2.1-or-later LGPL-3.0-only LGPL-3.0-or-later LPPL-1.3c MIT MPL-2.0 "
    "MS-PL NCSA ODbL-1.0 ODC-By-1.0 OFL-1.1 OSL-3.0 PDDL-1.0 PostgreSQL Unlicense WTFPL Zlib").split()
"""Common SPDX license identifiers (https://spdx.org/licenses/)."""

_SPDX_TO_HUB = {"AGPL-3.0-only": "agpl-3.0", "AGPL-3.0-or-later": "agpl-3.0", "GPL-2.0-only": "gpl-2.0",
                "GPL-2.0-or-later": "gpl-2.0", "GPL-3.0-only": "gpl-3.0", "GPL-3.0-or-later": "gpl-3.0",
                "LGPL-2.1-only": "lgpl-2.1", "LGPL-2.1-or-later": "lgpl-2.1", "LGPL-3.0-only": "lgpl-3.0",
                "LGPL-3.0-or-later": "lgpl-3.0", "GFDL-1.3-only": "gfdl", "GFDL-1.3-or-later": "gfdl",
                "ODbL-1.0": "odbl", "ODC-By-1.0": "odc-by", "PDDL-1.0": "pddl"}

LICENSES: dict[str, tuple[str, str | None]] = {
    **{hub: (hub, None) for hub in _HUB_LICENSES},
    **{spdx: (_SPDX_TO_HUB.get(spdx, spdx.lower() if spdx.lower() in _HUB_LICENSES else "other"), spdx)
       for spdx in _SPDX},
}
"""Every license id :func:`publish` accepts -> (the Hub's id for the card, the SPDX id or None).
Matching ignores case; an SPDX id and the Hub's spelling of it are both accepted."""

_BY_LOWER = {key.lower(): key for key in LICENSES if key not in _HUB_LICENSES or key.upper() not in LICENSES}
for _spdx in _SPDX:  # an SPDX id wins over the Hub's spelling of the same letters (MIT vs mit)
    _BY_LOWER[_spdx.lower()] = _spdx


def check_license(license_id: str) -> tuple[str, str, str | None]:
    """``(id as recorded, the Hub's id, SPDX id or None)`` for a known license id; otherwise
    :class:`UnknownLicenseError` naming it and the closest known ids."""
    text = _text(license_id, "license")
    key = _BY_LOWER.get(text.lower())
    if key is None:
        close = difflib.get_close_matches(text.lower(), list(_BY_LOWER), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(_BY_LOWER[c] for c in close)}?" if close else ""
        raise UnknownLicenseError(f"unknown license {text!r}: not an SPDX identifier or Hugging Face license id this "
                                  f"library knows{hint} (use 'other' for a custom license)")
    hub, spdx = LICENSES[key]
    return key, hub, spdx


# -- metadata checks ---------------------------------------------------------------------------

def _text(value: Any, field: str, *, multiline: bool = True) -> str:
    """A str with a UTF-8 form (bytes are decoded as strict UTF-8), no NUL, and no line breaks
    where the card needs one line."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextEncodingError(f"{field}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if not isinstance(value, str):
        raise PublicationError(f"{field}: expected text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextEncodingError(f"{field}: character {exc.start} is a lone surrogate, which has no UTF-8 form") from None
    allowed = "\n\t" if multiline else ""
    bad = next((c for c in value if (ord(c) < 32 and c not in allowed) or c == "\x7f"), None)
    if bad is not None:
        raise PublicationError(f"{field}: control character {bad!r} is not allowed"
                               + ("" if multiline else " (one line expected)"))
    if not value.strip():
        raise MissingCardFieldError(f"{field}: empty text")
    return value


def publication_info(*, license: str | None = None, authors: Sequence[str] | str | None = None,  # noqa: A002
                     citation: str | None = None, homepage: str | None = None,
                     description: str | None = None) -> PublicationInfo:
    """Check and build the manifest's ``publication`` member (license against :data:`LICENSES`)."""
    body: dict[str, Any] = {}
    if license is not None:
        body["license"] = check_license(license)[0]
    if authors is not None:
        if isinstance(authors, (str, bytes)):
            authors = [authors]  # type: ignore[list-item]
        body["authors"] = [_text(a, f"authors[{i}]", multiline=False).strip() for i, a in enumerate(authors)]
        if not body["authors"]:
            raise MissingCardFieldError("authors: give at least one name")
    if citation is not None:
        body["citation"] = _text(citation, "citation")
    if homepage is not None:
        body["homepage"] = _text(homepage, "homepage", multiline=False)
        if not re.fullmatch(r"https?://[^\s/]+\S*", body["homepage"]):
            raise PublicationError(f"homepage: expected an http(s) URL, got {body['homepage']!r}")
    if description is not None:
        body["description"] = _text(description, "description")
    try:
        return PublicationInfo.model_validate(body)
    except ValidationError as exc:
        raise PublicationError(f"publication is invalid: {_describe(exc)}") from None


# -- copying a container exactly ----------------------------------------------------------------

class _ExactWriter(Writer):
    """A :class:`Writer` fed the *stored* dense arrays of an existing container (no re-encoding,
    so every digest stays), that may set ``publication`` and checks the result's digests
    against ``expect`` before committing."""

    def __init__(self, path: Path, manifest: Manifest, *, publication: PublicationInfo | None,
                 compression: str | None, overwrite: bool, expect: Mapping[str, str] | None = None) -> None:
        self._publication, self._expect = publication, expect
        self._next: dict[str, np.ndarray] | None = None
        m = manifest
        super().__init__(path, num_images=m.num_images, image_shape=(m.image.height, m.image.width, m.image.channels),
                         num_classes=m.num_classes, class_names=m.class_names, mean=m.image.mean, std=m.image.std,
                         sampler=m.sampler, encoding=m.dense_labels.encoding, encoding_params=m.dense_labels.params,
                         values=m.dense_labels.values, temperature=m.dense_labels.temperature, labeler=m.labeler,
                         distillation=m.distillation, extra=m.extra, compression=compression,  # type: ignore[arg-type]
                         overwrite=overwrite)

    def append_stored(self, images: np.ndarray, labels: np.ndarray, stored: Mapping[str, np.ndarray]) -> None:
        self._next = dict(stored)
        try:
            self.append(images, labels, np.zeros(0, np.float32))
        finally:
            self._next = None

    def _encode(self, dense: np.ndarray, b: int) -> dict[str, np.ndarray]:
        parts = self._next
        names = [n for n in self._specs if n not in ("images", "labels")]
        if parts is None or sorted(parts) != sorted(names):
            raise InvalidInputError(f"stored dense arrays {sorted(parts or ())} given, the encoding stores {names}")
        out = {}
        for name in names:
            dtype, shape = self._specs[name]
            arr = np.asarray(parts[name])
            if arr.dtype != np.dtype(dtype) or arr.shape != (b, *shape[1:]):
                raise InvalidInputError(f"{name}: expected {dtype} {[b, *shape[1:]]}, got {arr.dtype} {list(arr.shape)}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InvalidInputError(f"{name}: a non-finite stored value")
            out[name] = arr
        try:
            self._enc.check(out)
        except SchemaError as exc:
            raise InvalidInputError(str(exc)) from None
        return out

    def _manifest(self, **kwargs: Any) -> Manifest:
        base = super()._manifest(**kwargs)
        digests = kwargs.get("digests") or {}
        if self._expect is not None and digests:
            differ = sorted(n for n, d in digests.items() if self._expect.get(n) != d)
            if differ:
                raise InvalidInputError(f"the copy's {', '.join(differ)} differ from the source's recorded digests; "
                                        "nothing was written")
        if self._publication is None:
            return base
        body = base.model_dump()
        body["publication"] = self._publication
        if base.version < (1, 3):
            body["format_version"] = PublicationInfo.since
        try:
            return Manifest.model_validate(body)
        except ValidationError as exc:
            raise InvalidInputError(f"metadata is invalid: {_describe(exc)}") from None


def write_stored(target: str | os.PathLike[str], manifest: Manifest,
                 batches: Iterable[tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray]]], *,
                 publication: PublicationInfo | None = None, compression: str | None = "zstd",
                 overwrite: bool = False, expect: Mapping[str, str] | None = None) -> Path:
    """Write a container from ``(images, labels, stored dense arrays)`` batches described by
    ``manifest`` (geometry, sampler, encoding, provenance; its digests are recomputed).
    ``expect``: digests the result must have (else nothing is written)."""
    writer = _ExactWriter(Path(target), manifest, publication=publication, compression=compression,
                          overwrite=overwrite, expect=expect)
    with writer:
        for images, labels, stored in batches:
            writer.append_stored(images, labels, stored)
    return writer.path


def _stored_batches(ds: LaddDataset, rows: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    names = [n for n in ds.manifest.arrays if n not in ("images", "labels")]
    for start in range(0, len(ds), rows):
        stop = min(start + rows, len(ds))
        yield (np.asarray(ds._arrays["images"][start:stop]), np.asarray(ds._arrays["labels"][start:stop]),
               {n: np.asarray(ds._arrays[n][start:stop]) for n in names})


def copy_container(source: str | os.PathLike[str], target: str | os.PathLike[str], *,
                   publication: PublicationInfo | Mapping[str, Any] | None = None,
                   compression: str | None = "zstd", overwrite: bool = False) -> Path:
    """Write ``source`` again at ``target`` (directory or ``.zip``) with every stored array as it
    is (equal digests) and, when given, ``publication`` set (format 1.3)."""
    pub = publication if publication is None or isinstance(publication, PublicationInfo) \
        else publication_info(**dict(publication))
    with open_container(source) as ds:
        m = ds.manifest
        return write_stored(target, m, _stored_batches(ds), publication=pub if pub is not None else m.publication,
                            compression=compression, overwrite=overwrite,
                            expect={n: r.sha256 for n, r in m.arrays.items()})


# -- results, card, croissant -----------------------------------------------------------------

def _read_results(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """A results file as (columns, rows of text): CSV with a header, or JSON (a list of objects,
    or an object with a ``rows``/``results`` list, or one object of name -> value)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PublicationError(f"results: cannot read {p} ({exc.strerror})") from None
    text = _text(raw, f"results file {p.name}")
    rows: list[dict[str, Any]]
    if p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PublicationError(f"results: {p.name} is neither CSV (by its name) nor JSON ({exc})") from None
        if isinstance(body, dict):
            body = body.get("rows", body.get("results", [body]))
        if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
            raise PublicationError(f"results: {p.name} must hold a list of objects (one row each)")
        rows = body
    if not rows:
        raise PublicationError(f"results: {p.name} holds no rows")
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    return columns, cells


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


_YAML_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+<>/-]*$")


def _yaml_str(value: str) -> str:
    """A YAML scalar for ``value``: plain when unambiguous, else double-quoted with escapes for
    everything YAML does not print (so any str round-trips through a YAML parser)."""
    if _YAML_PLAIN.match(value) and value.lower() not in ("yes", "no", "on", "off", "true", "false", "null", "y",
                                                          "n", "~") and not re.fullmatch(r"[0-9.eE+-]+", value):
        return value
    out = []
    for c in value:
        o = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif (0x20 <= o <= 0x7E or 0xA0 <= o <= 0xD7FF and o not in (0x2028, 0x2029)  # YAML line breaks
              or 0xE000 <= o <= 0xFFFD and o != 0xFEFF or o >= 0x10000):
            out.append(c)
        elif o <= 0xFF:
            out.append(f"\\x{o:02x}")
        else:
            out.append(f"\\u{o:04x}")
    return '"' + "".join(out) + '"'


_SIZE_BUCKETS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                 (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(num_images: int) -> str:
    """The Hub's ``size_categories`` bucket for a number of examples."""
    return next((name for bound, name in _SIZE_BUCKETS if num_images < bound), "n>1B")


def _tag(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _front_matter(m: Manifest, pub: PublicationInfo, pretty_name: str, parquet: bool) -> str:
    _, hub, spdx = check_license(pub.license or "other")
    tags = ["dataset-distillation", "label-augmentation", "ladd", "soft-labels"]
    for t in (m.distillation.method, m.distillation.source_dataset, m.labeler.architecture):
        if t and _tag(t) not in ("", "unknown", "none", "other") and _tag(t) not in tags:
            tags.append(_tag(t))
    lines = ["---", f"license: {_yaml_str(hub)}"]
    if hub == "other":
        lines += [f"license_name: {_yaml_str(_tag(pub.license or 'other') or 'other')}"]
        if pub.homepage:
            lines += [f"license_link: {_yaml_str(pub.homepage)}"]
    lines += [f"pretty_name: {_yaml_str(pretty_name)}", "task_categories:", "- image-classification",
              "size_categories:", f"- {_yaml_str(size_category(m.num_images))}", "tags:"]
    lines += [f"- {_yaml_str(t)}" for t in tags]
    if parquet:
        lines += ["configs:", "- config_name: default", "  data_files:", "  - split: train",
                  "    path: data/train-*"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _bibtex(pub: PublicationInfo, pretty_name: str, key: str) -> str:
    if pub.citation:
        return pub.citation.strip()
    year = datetime.date.today().year
    fields = [f"  title = {{{pretty_name}}}", f"  author = {{{' and '.join(pub.authors or ['unknown'])}}}",
              f"  year = {{{year}}}", "  note = {Label-augmented distilled dataset (LADD container)}"]
    if pub.homepage:
        fields.append(f"  howpublished = {{\\url{{{pub.homepage}}}}}")
    return f"@misc{{{_tag(key).replace('-', '_') or 'ladd'},\n" + ",\n".join(fields) + "\n}"


def _card(m: Manifest, pub: PublicationInfo, *, pretty_name: str, zip_name: str, zip_sha: str, ov: Any,
          results: tuple[list[str], list[list[str]]] | None, parquet_files: list[str]) -> str:
    h, w, c = m.image.height, m.image.width, m.image.channels
    dense = m.dense_labels
    params = f" {json.dumps(dense.params)}" if dense.params else ""
    lab, dist = m.labeler, m.distillation
    out = [_front_matter(m, pub, pretty_name, bool(parquet_files)), f"# {pretty_name}", ""]
    if pub.description:
        out += [pub.description.strip(), ""]
    out += [f"A label-augmented distilled dataset (LADD): {m.num_images} images and, for each image, dense soft "
            f"labels for the {m.sampler.n} x {m.sampler.n} crops of a fixed grid. It is stored as a LADD container "
            f"(`{zip_name}`, format {m.format_version}, a Zarr v3 hierarchy in one zip)"
            + (" and as parquet files for browsing (`data/`)." if parquet_files else "."), "",
            "## Contents", "", "| | |", "|---|---|",
            f"| images | {m.num_images} |", f"| classes | {m.num_classes} |",
            f"| images per class (IPC) | {dist.ipc if dist.ipc is not None else 'varies'} |",
            f"| image size | {h} x {w} x {c} ({'RGB' if c == 3 else 'greyscale'}, uint8) |",
            f"| crop grid | {m.sampler.n} x {m.sampler.n} = {m.sampler.num_crops} crops, side ratio "
            f"{m.sampler.ratio:g}, {m.sampler.resize} |",
            f"| dense-label encoding | `{dense.encoding}`{params} ({dense.values}, temperature {dense.temperature:g}) |",
            f"| normalisation | mean {[round(v, 4) for v in m.image.mean]}, std {[round(v, 4) for v in m.image.std]} |",
            "", "Classes (label: name): " + ", ".join(f"{i}: `{n}`" for i, n in enumerate(m.class_names[:100]))
            + (f", ... ({m.num_classes - 100} more in the manifest)" if m.num_classes > 100 else ""), "",
            "## Storage", "",
            f"The dense labels cost **{ov.stored_percent:+.2f}%** of the hard-label baseline on disk (images + hard "
            f"labels: {ov.baseline_bytes:,} bytes); the single file is {ov.zip_bytes:,} bytes. Counted as the LADD "
            f"paper counts (zipfile deflate): {ov.paper_encoded_percent:+.2f}% as stored, "
            f"{ov.paper_float32_percent:+.2f}% as float32. One more image per class (baseline++) would cost about "
            f"{ov.baseline_plus_plus_percent:+.2f}%.", "",
            "## Provenance", "",
            f"- Distillation: method `{dist.method}`, source dataset `{dist.source_dataset}`"
            + (f", IPC {dist.ipc}" if dist.ipc is not None else "") + ".",
            f"- Labeler (produced the dense labels): `{lab.architecture}`, trained on `{lab.source_dataset}`"
            + (f", {lab.epochs} epochs" if lab.epochs is not None else "")
            + (f", input size {lab.input_size[0]} x {lab.input_size[1]}" if lab.input_size else "")
            + (f", weights `{lab.weights}`" if lab.weights else "")
            + (f", checkpoint sha256 `{lab.checkpoint_sha256}`" if lab.checkpoint_sha256 else "") + ".",
            f"- Authors: {', '.join(pub.authors or ['unknown'])}." + (f" Homepage: <{pub.homepage}>." if pub.homepage else ""),
            ""]
    if results is not None:
        columns, rows = results
        out += ["## Results", "", "| " + " | ".join(_cell(c) for c in columns) + " |",
                "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
    out += ["## Loading", "", "With `ladd_format` (`pip install ladd_format`), from a local copy or straight from the Hub "
            "(`pip install huggingface_hub` gives fsspec the `hf://` protocol):", "", "```python", "import ladd_format",
            "", f'ds = ladd_format.open("{zip_name}")  # or "hf://datasets/USER/REPO/{zip_name}"',
            "images, labels = ds.images, ds.labels         # uint8 [M, H, W, C], int [M]",
            "dense = ds.dense_labels                       # float32 [M, n*n, K] probabilities, crop j of image i",
            "```", "", "Check it: `ladd validate " + zip_name + "` (every digest), `sha256sum -c SHA256SUMS`."]
    if parquet_files:
        out += ["", "Without `ladd_format`, the parquet files (`image` PNG, `label`, `dense_labels` [n*n][K]):", "",
                "```python", "from datasets import load_dataset", "",
                'ds = load_dataset("parquet", data_files="data/train-*.parquet", split="train")', "```", "",
                "`ladd import parquet . copy.ladd.zip` rebuilds the container from them exactly."]
    out += ["", "## Files", "", "| file | sha256 |", "|---|---|", f"| `{zip_name}` | `{zip_sha}` |",
            "", "`croissant.json` describes the files and records (MLCommons Croissant); `SHA256SUMS` lists every file.",
            "", "## Citation", "", "```bibtex", _bibtex(pub, pretty_name, Path(zip_name).name.split(".")[0]), "```",
            "", "## License", "", f"`{pub.license}`" + (f" ({pub.homepage})" if pub.homepage and
                                                        check_license(pub.license or 'other')[1] == 'other' else "")
            + ".", ""]
    return "\n".join(out)


CROISSANT_CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/", "equivalentProperty": "cr:equivalentProperty", "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract",
    "field": "cr:field", "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset", "jsonPath": "cr:jsonPath",
    "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path", "recordSet": "cr:recordSet",
    "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated", "replace": "cr:replace",
    "samplingRate": "cr:samplingRate", "sc": "https://schema.org/", "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField",
    "transform": "cr:transform"}
"""The JSON-LD context of Croissant 1.0."""


def _croissant(m: Manifest, pub: PublicationInfo, *, pretty_name: str, files: Mapping[str, tuple[int, str]],
               zip_name: str, parquet_files: list[str], bibtex: str) -> dict[str, Any]:
    _, hub, spdx = check_license(pub.license or "other")
    description = (pub.description.strip() if pub.description else
                   f"Label-augmented distilled dataset: {m.num_images} images of {m.num_classes} classes, "
                   f"{m.image.height}x{m.image.width}x{m.image.channels}, with dense labels for a "
                   f"{m.sampler.n}x{m.sampler.n} crop grid (encoding {m.dense_labels.encoding}).")

    def file_object(name: str, fmt: str, what: str) -> dict[str, Any]:
        size, sha = files[name]
        return {"@type": "cr:FileObject", "@id": name, "name": name, "description": what, "contentUrl": name,
                "encodingFormat": fmt, "contentSize": f"{size} B", "sha256": sha}

    distribution = [file_object(zip_name, "application/zip",
                                f"LADD container (format {m.format_version}): Zarr v3 arrays images, labels and the "
                                f"{m.dense_labels.encoding} dense labels, and the manifest")]
    body: dict[str, Any] = {
        "@context": CROISSANT_CONTEXT, "@type": "sc:Dataset", "conformsTo": "http://mlcommons.org/croissant/1.0",
        "name": pretty_name, "description": description,
        "license": f"https://spdx.org/licenses/{spdx}.html" if spdx else pub.license,
        "creator": [{"@type": "sc:Person", "name": a} for a in pub.authors or []],
        "citeAs": bibtex, "datePublished": datetime.date.today().isoformat(), "version": "1.0.0",
        "keywords": ["dataset distillation", "label augmentation", "soft labels", "image classification"],
        "distribution": distribution,
    }
    if pub.homepage:
        body["url"] = pub.homepage
    if parquet_files:
        distribution += [file_object(p, "application/x-parquet", "the set as parquet (PNG image, label, dense labels)")
                         for p in parquet_files]
        distribution.append({"@type": "cr:FileSet", "@id": "parquet-files", "name": "parquet-files",
                             "description": "every parquet shard", "encodingFormat": "application/x-parquet",
                             "includes": "data/*.parquet"})
        src = {"fileSet": {"@id": "parquet-files"}}
        body["recordSet"] = [
            {"@type": "cr:RecordSet", "@id": "classes", "name": "classes", "description": "class index and name",
             "key": {"@id": "classes/label"},
             "field": [{"@type": "cr:Field", "@id": "classes/label", "name": "label", "dataType": "sc:Integer"},
                       {"@type": "cr:Field", "@id": "classes/name", "name": "name", "dataType": "sc:Text"}],
             "data": [{"classes/label": i, "classes/name": n} for i, n in enumerate(m.class_names)]},
            {"@type": "cr:RecordSet", "@id": "train", "name": "train", "description": "one record per image",
             "field": [
                 {"@type": "cr:Field", "@id": "train/image", "name": "image", "description": "the image, PNG",
                  "dataType": "sc:ImageObject",
                  "source": {**src, "extract": {"column": "image"}, "transform": {"jsonPath": "bytes"}}},
                 {"@type": "cr:Field", "@id": "train/label", "name": "label", "description": "hard label",
                  "dataType": "sc:Integer", "references": {"field": {"@id": "classes/label"}},
                  "source": {**src, "extract": {"column": "label"}}},
                 {"@type": "cr:Field", "@id": "train/dense_labels", "name": "dense_labels",
                  "description": f"per crop (row j = crop j of the {m.sampler.n}x{m.sampler.n} grid) the "
                                 f"{m.num_classes} class probabilities, float32",
                  "dataType": "sc:Float", "repeated": True,
                  "source": {**src, "extract": {"column": "dense_labels"}}},
             ]},
        ]
    return body


# -- publish -----------------------------------------------------------------------------------

def _name_of(path: Path) -> str:
    name = path.name
    for suffix in (".zip", ".ladd"):
        name = name.removesuffix(suffix)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    return name or "dataset"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, license: str | None = None,  # noqa: A002
            authors: Sequence[str] | str | None = None, citation: str | None = None, homepage: str | None = None,
            description: str | None = None, results: str | os.PathLike[str] | None = None,
            pretty_name: str | None = None, parquet: bool | None = None, overwrite: bool = False) -> Path:
    """Write ``out_dir``: the container as ``NAME.ladd.zip`` with ``publication`` set, a dataset card
    ``README.md``, ``croissant.json``, ``data/*.parquet`` and ``SHA256SUMS`` (module doc).

    ``license`` (an SPDX id or Hub id, :data:`LICENSES`) and ``authors`` are required unless the
    container's manifest already has them; ``citation`` (BibTeX; generated when absent),
    ``homepage`` and ``description`` are optional. ``results``: a CSV or JSON file of rows
    (e.g. accuracies) shown as a table. ``parquet``: None writes the parquet files when pyarrow
    is installed. Every check runs before anything is written; ``out_dir`` appears complete or
    not at all, and replaces an existing one only with ``overwrite``.
    """
    source, out = Path(path), Path(out_dir)
    if out.exists() and not overwrite:
        raise ContainerExistsError(f"{out} already exists; pass overwrite=True (--overwrite on the command line) "
                                   "to replace it")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a folder; refusing to replace it")
    if out.resolve() == source.resolve() or source.resolve().is_relative_to(out.resolve()):
        raise InvalidInputError(f"{out} holds the container being published; choose another output folder")
    if parquet is None:
        try:
            import pyarrow  # noqa: F401
            parquet = True
        except ImportError:
            parquet = False
    elif parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise PublicationError("parquet files need pyarrow: pip install 'ladd_format[publish]', or pass "
                                   "parquet=False (--no-parquet)") from None
    table = _read_results(results) if results is not None else None
    if pretty_name is not None:
        pretty_name = _text(pretty_name, "pretty_name", multiline=False).strip()
    from .export import write_parquet
    from .storage import overhead

    with open_container(source) as ds:
        m = ds.manifest
        old = m.publication or PublicationInfo()
        given = {"license": license, "authors": authors, "citation": citation, "homepage": homepage,
                 "description": description}
        merged = {k: v if v is not None else getattr(old, k) for k, v in given.items()}
        for field, hint in (("license", "an SPDX id such as CC-BY-4.0 or MIT (--license)"),
                            ("authors", "one or more names (--author, repeatable)")):
            if merged[field] is None:
                raise MissingCardFieldError(f"{field} is required for the dataset card: give {hint}")
        pub = publication_info(**merged)
        name = _name_of(source)
        pretty = pretty_name or name
        zip_name = f"{name}.ladd.zip"
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = sibling(out, "tmp")
        try:
            stage.mkdir()
            write_stored(stage / zip_name, m, _stored_batches(ds), publication=pub,
                         expect={n: r.sha256 for n, r in m.arrays.items()})
            with open_container(stage / zip_name) as packed:
                parquet_files = [p.relative_to(stage).as_posix() for p in write_parquet(packed, stage)] \
                    if parquet else []
                ov = overhead(packed)
                pm = packed.manifest
            files = {rel: ((stage / rel).stat().st_size, _sha256_file(stage / rel))
                     for rel in [zip_name, *parquet_files]}
            bibtex = _bibtex(pub, pretty, name)
            (stage / "README.md").write_text(
                _card(pm, pub, pretty_name=pretty, zip_name=zip_name, zip_sha=files[zip_name][1], ov=ov,
                      results=table, parquet_files=parquet_files), encoding="utf-8")
            croissant = _croissant(pm, pub, pretty_name=pretty, files=files, zip_name=zip_name,
                                   parquet_files=parquet_files, bibtex=bibtex)
            (stage / "croissant.json").write_text(json.dumps(croissant, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
            listed = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
            (stage / "SHA256SUMS").write_text("".join(f"{_sha256_file(stage / rel)}  {rel}\n" for rel in listed),
                                              encoding="utf-8")
            place(stage, out)
        finally:
            remove(stage)
    return out


# -- command line ------------------------------------------------------------------------------

def _cmd_publish(args: argparse.Namespace) -> int:
    out = publish(args.path, args.out_dir, license=args.license, authors=args.author, citation=_maybe_file(args.citation),
                  homepage=args.homepage, description=args.description, results=args.results,
                  pretty_name=args.pretty_name, parquet=args.parquet, overwrite=args.overwrite)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    print(f"published {args.path} -> {out} ({len(files)} files: {', '.join(files[:6])}"
          f"{', ...' if len(files) > 6 else ''})")
    return 0


def _maybe_file(value: str | None) -> str | None:
    """``@FILE`` reads the text from FILE (BibTeX is rarely one line)."""
    if value is None or not value.startswith("@") or "{" in value:
        return value
    try:
        raw = Path(value[1:]).read_bytes()
    except OSError as exc:
        raise PublicationError(f"citation: cannot read {value[1:]} ({exc.strerror})") from None
    return _text(raw, f"citation file {value[1:]}")


def register_cli(subparsers: Any) -> None:
    """Add ``ladd publish`` to the ``ladd`` command line."""
    s = subparsers.add_parser("publish", help="a folder ready to upload: container, dataset card, Croissant, "
                                              "parquet, checksums")
    s.add_argument("path", help="the container to publish")
    s.add_argument("out_dir")
    s.add_argument("--license", help="SPDX id or Hugging Face license id, e.g. CC-BY-4.0, MIT, other")
    s.add_argument("--author", action="append", help="an author's name (repeat for several)")
    s.add_argument("--citation", help="BibTeX text, or @FILE to read it from FILE (default: generated)")
    s.add_argument("--homepage", help="an http(s) URL")
    s.add_argument("--description", help="a paragraph for the card and Croissant")
    s.add_argument("--results", help="a CSV or JSON file of result rows (e.g. accuracies) for the card")
    s.add_argument("--pretty-name", help="the card's title (default: the container's name)")
    s.add_argument("--parquet", action=argparse.BooleanOptionalAction, default=None,
                   help="write data/*.parquet (default: when pyarrow is installed)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    s.set_defaults(func=_cmd_publish)
