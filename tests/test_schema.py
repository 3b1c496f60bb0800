"""The JSON Schema is current and agrees with the model; canonical JSON follows RFC 8785."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ladd_format
from ladd_format.manifest import canonical_json, json_schema, manifest_digest
from ladd_format.testing import write_example

SPEC = Path(__file__).resolve().parent.parent / "spec"


def test_committed_schema_is_current():
    committed = json.loads((SPEC / "manifest.schema.json").read_text())
    assert committed == json_schema(), "run: python spec/make_schema.py"


def test_stored_manifests_satisfy_the_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema())
    manifests = [json.loads(p.read_text()) for p in (SPEC / "vectors" / "v1.0").glob("*.expected.json")]
    with ladd_format.open(write_example(tmp_path / "c.ladd")) as ds:
        manifests.append(ds.manifest.to_json())
    for m in manifests:
        validator.validate(m)
    broken = dict(manifests[-1], num_classes=0)
    assert not validator.is_valid(broken)
    with pytest.raises(ladd_format.SchemaError, match="num_classes"):
        ladd_format.manifest.parse_manifest(broken)


# RFC 8785 section 3.2.2.3 and appendix B number examples.
@pytest.mark.parametrize("value,text", [
    (0.0, "0"), (-0.0, "0"), (1.0, "1"), (4.50, "4.5"), (2e-3, "0.002"), (0.625, "0.625"),
    (1e-7, "1e-7"), (1e-6, "0.000001"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
    (333333333.33333329, "333333333.3333333"), (1e30, "1e+30"), (-1.5e-300, "-1.5e-300"),
    (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"),
    (9007199254740992.0, "9007199254740992"), (295147905179352830000.0, "295147905179352830000"),
    (0.000001234, "0.000001234"), (123456789012345680000.0, "123456789012345680000"),
])
def test_es6_number_format(value, text):
    assert canonical_json(value) == text


def test_canonical_json_structure():
    value = {"b": [1, 2.0, None, True, False], "a": {"é": "x\n\"", "\u20ac": 1, "\U0001f600": 2, "z": 3}}
    # Keys sort by UTF-16 code units: U+20AC comes before the surrogate pair of U+1F600.
    assert canonical_json(value) == '{"a":{"z":3,"é":"x\\n\\"","\u20ac":1,"\U0001f600":2},"b":[1,2,null,true,false]}'
    with pytest.raises(ValueError):
        canonical_json(math.nan)


@given(st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20))
def test_canonical_json_is_valid_json_and_round_trips(value):
    text = canonical_json(value)
    assert canonical_json(json.loads(text)) == text
    assert _as_floats(json.loads(text)) == _as_floats(value)


def _as_floats(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [_as_floats(v) for v in value]
    return {k: _as_floats(v) for k, v in value.items()}


def test_manifest_digest_covers_every_member(tmp_path):
    with ladd_format.open(write_example(tmp_path / "c.ladd")) as ds:
        body = ds.manifest.to_json()
    assert manifest_digest(body) == body["manifest_sha256"]
    for key in body:
        if key != "manifest_sha256":
            assert manifest_digest({**body, key: "changed"}) != body["manifest_sha256"], key
