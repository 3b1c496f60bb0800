"""The manifest: the one JSON document that describes a container.

It lives in the root group's attributes under the key ``"ladd"`` and is the single source
of truth for geometry, sampler, dense-label encoding, provenance and digests. The pydantic
models here *are* the schema: ``spec/manifest.schema.json`` is generated from them.
"""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

from ._encodings import get_encoding
from .errors import SchemaError

FORMAT_NAME = "ladd"
FORMAT_VERSION = "1.4"
"""The newest format version this library reads and writes; the writer records the oldest
version that has every feature a container uses (SPEC.md section 9)."""
VERSION_PATTERN = r"^[1-9][0-9]*\.(0|[1-9][0-9]*)$"
"""``MAJOR.MINOR`` without leading zeros; there is no major version 0 (SPEC.md section 9.1)."""
ATTRIBUTE_KEY = "ladd"
MAX_SAFE_INTEGER = 2**53 - 1
"""Manifest integers stay within +-(2**53 - 1): RFC 8785 implementations that parse numbers as
doubles would round larger ones and compute another digest (SPEC.md section 3.4)."""

_Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_JsonDict = dict[str, JsonValue]


class _Model(BaseModel):
    # Unknown members are ignored so that a 1.0 reader can read any later 1.x manifest.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True)


class ImageInfo(_Model):
    """Geometry of every image, and the normalisation a trainer should apply."""

    height: int = Field(ge=1)
    width: int = Field(ge=1)
    channels: Literal[1, 3]
    mean: list[float] = Field(description="Per-channel mean on the 0..1 scale.")
    std: list[float] = Field(description="Per-channel std on the 0..1 scale, > 0.")

    @model_validator(mode="after")
    def _per_channel(self) -> ImageInfo:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} value(s), one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class SamplerSpec(_Model):
    """The static sub-sampler that defines the crops (SPEC.md, "Sub-sampler")."""

    kind: Literal["uniform_grid"] = "uniform_grid"
    n: int = Field(default=5, ge=1, description="Crops per axis; n*n crops per image.")
    ratio: float = Field(default=0.625, gt=0, le=1, description="Crop side / image side.")
    rounding: Literal["half_up"] = "half_up"
    resize: Literal["bilinear_crop_then_resize"] = "bilinear_crop_then_resize"

    @property
    def num_crops(self) -> int:
        return self.n * self.n


class DenseLabelSpec(_Model):
    """How the dense labels are stored. ``encoding`` is open: later minors add names."""

    encoding: str = Field(default="float32", pattern=r"^[a-z0-9_]+$")
    params: _JsonDict = Field(default_factory=dict, description="Encoding parameters.")
    values: Literal["probs", "logits"] = "probs"
    temperature: float = Field(default=1.0, gt=0)


class LabelerInfo(_Model):
    """Provenance of the network that produced the dense labels.

    ``input_size``, ``mean``, ``std`` and ``weights`` are format 1.2: the labeler's input size
    (each crop is cut and resized straight to it, SPEC.md section 6.4), the normalisation it
    was fed with, and where its weights came from (``checkpoint_sha256`` is their file's sha256).
    """

    architecture: str = "unknown"
    epochs: int | None = Field(default=None, ge=0)
    training: _JsonDict = Field(default_factory=dict)
    source_dataset: str = "unknown"
    checkpoint_sha256: _Hex64 | None = None
    input_size: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=2, max_length=2)
    mean: list[float] | None = Field(default=None, min_length=1, max_length=3)
    std: list[Annotated[float, Field(gt=0)]] | None = Field(default=None, min_length=1, max_length=3)
    weights: str | None = None

    @model_validator(mode="after")
    def _paired(self) -> LabelerInfo:
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std or ())):
            raise ValueError("labeler mean and std go together, one value per channel each")
        return self

    ADDED_IN_1_2: ClassVar[tuple[str, ...]] = ("input_size", "mean", "std", "weights")

    @property
    def since(self) -> str:
        """The oldest format version with every member used here."""
        return "1.2" if self.unset_added() != set(self.ADDED_IN_1_2) else "1.0"

    def unset_added(self) -> set[str]:
        """Members of later minor versions left unset: left out of the stored JSON, so a
        container that does not use them is byte for byte what the older version wrote."""
        return {name for name in self.ADDED_IN_1_2 if getattr(self, name) is None}


class DistillationInfo(_Model):
    """Provenance of the distilled images themselves."""

    method: str = "unknown"
    source_dataset: str = "unknown"
    ipc: int | None = Field(default=None, ge=1)
    details: _JsonDict = Field(default_factory=dict)


class PublicationInfo(_Model):
    """Format 1.3: what a publisher states about the set (SPEC.md section 3, ``publication``).

    Every member is optional and left out of the stored JSON when unset. ``license`` is an
    SPDX identifier or a Hugging Face Hub license id; readers accept any such token (the
    list of known ids grows), writers check it against :data:`ladd_format.publish.LICENSES`.
    """

    license: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.+-]*$", max_length=64)
    authors: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    citation: str | None = Field(default=None, min_length=1, description="BibTeX text.")
    homepage: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    description: str | None = Field(default=None, min_length=1)

    since: ClassVar[str] = "1.3"

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ArrayRecord(_Model):
    """What one stored array must be: checked against the Zarr metadata and the bytes."""

    dtype: str
    shape: list[int]
    sha256: _Hex64


class Manifest(_Model):
    """The whole manifest. ``manifest_sha256`` covers every other member (RFC 8785 JSON)."""

    format: Literal["ladd"] = FORMAT_NAME
    format_version: str = Field(default=FORMAT_VERSION, pattern=VERSION_PATTERN)
    created_by: str = "unknown"
    num_images: int = Field(ge=1)
    num_classes: int = Field(ge=1)
    class_names: list[str]
    image: ImageInfo
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    dense_labels: DenseLabelSpec = Field(default_factory=DenseLabelSpec)
    labeler: LabelerInfo = Field(default_factory=LabelerInfo)
    distillation: DistillationInfo = Field(default_factory=DistillationInfo)
    extra: _JsonDict = Field(default_factory=dict, description="Free-form user metadata.")
    publication: PublicationInfo | None = Field(
        default=None, description="Since 1.3: license, authors, citation, homepage, description.")
    arrays: dict[str, ArrayRecord]
    manifest_sha256: _Hex64 | None = None

    @model_validator(mode="before")
    @classmethod
    def _portable(cls, data: Any) -> Any:
        _check_portable(data)
        return data

    @field_validator("class_names")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for num_classes={self.num_classes}"
            )
        needed, feature = self.labeler.since, "labeler input_size, mean, std or weights"
        dense = self.dense_labels
        try:
            since = get_encoding(dense.encoding, dense.params, self.num_classes, dense.values).since
        except SchemaError:  # an encoding this reader does not know: the reader refuses it by name
            since = "1.0"
        if _as_tuple(since) > _as_tuple(needed):
            needed, feature = since, f"encoding {dense.encoding!r}"
        if self.publication is not None and _as_tuple(self.publication.since) > _as_tuple(needed):
            needed, feature = self.publication.since, "publication"
        if self.version < _as_tuple(needed):
            raise ValueError(f"format_version {self.format_version} is older than the {needed} that its "
                             f"{feature} needs")
        return self

    @property
    def version(self) -> tuple[int, int]:
        return _as_tuple(self.format_version)

    def to_json(self) -> dict[str, Any]:
        """The JSON object as stored (``manifest_sha256`` filled in)."""
        body = self.model_dump(mode="json", exclude={"manifest_sha256": True, "labeler": self.labeler.unset_added(),
                                                     "publication": True})
        if self.publication is not None:  # since 1.3; left out when unset, members too
            body["publication"] = self.publication.to_json()
        body["manifest_sha256"] = manifest_digest(body)
        return body


def _as_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def _check_portable(data: Any) -> None:
    """Refuse what RFC 8785 implementations would serialise differently: strings with a lone
    surrogate (they have no UTF-8 form) and integers beyond +-(2**53 - 1). Iterative, so that
    nesting depth is pydantic's to refuse."""
    pending = [(data, "")]
    while pending:
        value, path = pending.pop()
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{path or 'value'}: a string with a lone surrogate has no UTF-8 form") from None
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
            digits = str(abs(value))
            raise ValueError(f"{path or 'value'}: an integer of {len(digits)} digits ({digits[:6]}...) is beyond "
                             "+-(2**53 - 1)")
        elif isinstance(value, (list, tuple)):
            pending.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                pending += [(key, path), (item, f"{path}.{key}".lstrip("."))]


def manifest_digest(body: dict[str, Any]) -> str:
    """sha256 of the RFC 8785 canonical form of ``body`` without ``manifest_sha256``."""
    clean = {k: v for k, v in body.items() if k != "manifest_sha256"}
    return hashlib.sha256(canonical_json(clean).encode("utf-8")).hexdigest()


def parse_manifest(body: Any, *, where: str = "manifest") -> Manifest:
    """Validate a stored manifest object, raising :class:`SchemaError` with the field path."""
    if not isinstance(body, dict):
        raise SchemaError(f"{where}: expected a JSON object, got {type(body).__name__}")
    try:
        return Manifest.model_validate(body)
    except ValidationError as exc:
        raise SchemaError(f"{where} is invalid: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """One line per problem, ``field.path: message (got value)``, without pydantic's URLs."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{loc or 'value'}: {err['msg']}{got}")
    return "; ".join(parts)


def canonical_json(value: Any) -> str:
    """RFC 8785 (JCS) serialisation: sorted keys, no spaces, ECMAScript number format."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _es_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{canonical_json(value[k])}"
                              for k in keys) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _es_number(x: float) -> str:
    # ECMAScript Number::toString, which RFC 8785 prescribes; repr gives the shortest digits.
    if not math.isfinite(x):
        raise ValueError("non-finite numbers have no JSON form")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(x))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exponent = int(exponent) + (len(digit_tuple) - len(digits))
    k = len(digits)
    n = exponent + k  # the decimal point sits after the n-th digit
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest, as committed in ``spec/manifest.schema.json``."""
    schema = Manifest.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ladd-format.invalid/spec/manifest.schema.json",
        **schema,
        "title": f"LADD container manifest, format {FORMAT_VERSION}",
    }
