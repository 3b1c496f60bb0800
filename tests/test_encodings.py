"""Dense-label encodings: stated error bounds, exact row sums, round trips, clear refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from _helpers import edit_manifest, leftovers
from hypothesis import given
from hypothesis import strategies as st

import ladd_format
from ladd_format import InvalidInputError, SchemaError, UnsupportedEncodingError
from ladd_format._encodings import get_encoding
from ladd_format.testing import example_arrays

ENCODINGS = [("float32", None), ("float16", None), ("uint8", None), ("uint16", None),
             ("topk", {"k": 3, "rule": "smoothing"}), ("topk", {"k": 1, "rule": "renorm"}),
             ("coarse", {"scale": 15}), ("coarse", {"scale": 1})]
VERSIONS = {"float32": "1.0", "float16": "1.0", "uint8": "1.1", "uint16": "1.1", "topk": "1.1", "coarse": "1.4"}
SUM_ATOL = 1e-6  # decoded rows sum to 1 within this (float64 sum of the float32 values)


@st.composite
def prob_rows(draw, max_classes=40):
    """Probability rows [m, crops, K]: peaked, flat, with exact ties and zeros, float32/64."""
    k = draw(st.integers(2, max_classes))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), k)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    z = rng.normal(0, draw(st.sampled_from([0.0, 0.5, 3.0, 12.0])), shape)
    if draw(st.booleans()):
        z = np.round(z)  # exact ties
    p = np.exp(z - z.max(-1, keepdims=True))
    if draw(st.booleans()):
        p[..., : k // 2] = 0  # classes with no mass at all
        p[..., -1] += 1e-3
    p /= p.sum(-1, keepdims=True)
    return p.astype(draw(st.sampled_from([np.float32, np.float64])))


def _decode(name, params, p):
    enc = get_encoding(name, params, p.shape[-1])
    stored = enc.encode(p)
    for array, (dtype, shape) in enc.stored_specs(*p.shape).items():
        assert stored[array].dtype == np.dtype(dtype) and stored[array].shape == shape
    out = enc.decoder({array: (lambda sel, a=a: a[sel]) for array, a in stored.items()})(slice(None))
    assert out.dtype == np.float32 and out.shape == p.shape
    assert np.abs(out.sum(-1, dtype=np.float64) - 1).max() <= SUM_ATOL
    return stored, out.astype(np.float64)


def _exact(p):
    p = p.astype(np.float64)
    return p / p.sum(-1, keepdims=True)


@given(prob_rows(), st.sampled_from([("uint8", 255), ("uint16", 65535)]))
def test_quantised_error_is_below_one_step(p, case):
    name, scale = case
    stored, out = _decode(name, None, p)
    q = stored["dense_labels"].astype(np.int64)
    assert (q.sum(-1) == scale).all()  # largest-remainder rounding: rows sum exactly
    assert np.abs(q - _exact(p) * scale).max() < 1  # q is floor or ceil of p * scale
    assert np.abs(out - _exact(p)).max() <= 1 / scale + 1e-7


@given(prob_rows(), st.integers(1, 254))
def test_coarse_error_is_below_one_step(p, scale):
    stored, out = _decode("coarse", {"scale": scale}, p)
    q = stored["dense_labels"].astype(np.int64)
    assert (q.sum(-1) == scale).all()
    assert np.abs(q - _exact(p) * scale).max() < 1
    assert np.abs(out - _exact(p)).max() <= 1 / scale + 1e-7
    assert np.array_equal(out, (q.astype(np.float32) / np.float32(scale)).astype(np.float64))


def test_coarse_scale_one_is_the_most_probable_class():
    p = np.array([[[0.1, 0.45, 0.45, 0.0], [0.2, 0.3, 0.1, 0.4]]])
    stored, _ = _decode("coarse", {"scale": 1}, p)
    assert stored["dense_labels"].tolist() == [[[0, 1, 0, 0], [0, 0, 0, 1]]]  # a tie goes to the lower class


def test_coarse_torch_decode_is_the_numpy_decode():
    import torch

    rng = np.random.default_rng(3)
    p = rng.random((4, 9, 300)) ** 6
    for scale in (1, 3, 15, 254):
        enc = get_encoding("coarse", {"scale": scale}, 300)
        stored = enc.encode(p)
        want = enc.decoder({"dense_labels": lambda sel: stored["dense_labels"][sel]})(slice(None))
        got = enc.torch_decode({"dense_labels": torch.from_numpy(stored["dense_labels"])}).numpy()
        assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), want.view(np.int32)), scale


@given(prob_rows(), st.integers(1, 39), st.sampled_from(["smoothing", "renorm"]))
def test_topk_keeps_the_k_largest_within_one_step(p, k, rule):
    k = min(k, p.shape[-1] - 1)
    stored, out = _decode("topk", {"k": k, "rule": rule}, p)
    exact = _exact(p)
    index = stored["dense_index"].astype(np.int64)
    assert all(len(set(row)) == k for row in index.reshape(-1, k))
    kept = np.take_along_axis(exact, index, -1)
    chosen = np.zeros(p.shape, bool)
    np.put_along_axis(chosen, index, True, -1)
    assert (kept.min(-1) >= np.where(chosen, -1, exact).max(-1)).all()  # the k largest (any among ties)
    decoded_kept = np.take_along_axis(out, index, -1)
    tail = np.where(chosen, np.nan, out)
    if rule == "smoothing":
        assert np.abs(decoded_kept - kept).max() <= 1 / 255 + 1e-7
        assert (np.nanmax(tail, -1) == np.nanmin(tail, -1)).all()  # the rest spread evenly
    else:
        assert np.abs(decoded_kept - kept / kept.sum(-1, keepdims=True)).max() <= 1 / 255 + 1e-7
        assert (np.nan_to_num(tail) == 0).all()


@given(prob_rows())
def test_float_encodings_are_the_ieee_conversion(p):
    for name in ("float32", "float16"):
        enc = get_encoding(name, None, p.shape[-1])
        stored = enc.encode(p)
        decoded = enc.decoder({"dense_labels": lambda sel: stored["dense_labels"][sel]})(slice(None))
        assert np.array_equal(decoded, p.astype(name).astype(np.float32))


def test_topk_at_a_thousand_classes():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (2, 25, 1000))
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    stored, out = _decode("topk", {"k": 10, "rule": "smoothing"}, p)
    assert stored["dense_index"].dtype == np.uint16 and stored["dense_labels"].shape == (2, 25, 10)
    best = np.take_along_axis(p, np.argmax(out, -1)[..., None], -1)[..., 0]
    assert (best >= p.max(-1) - 1 / 255).all()  # the decoded favourite is within a step of the true one


@pytest.mark.parametrize("name,params", ENCODINGS)
@pytest.mark.parametrize("suffix", [".ladd", ".ladd.zip"])
def test_every_encoding_round_trips_through_the_container(tmp_path, name, params, suffix):
    images, labels, dense = example_arrays(num_classes=6, ipc=2, size=9, n=3)
    path = ladd_format.write(tmp_path / f"c{suffix}", images, labels, dense, sampler={"n": 3},
                             encoding=name, encoding_params=params)
    enc = get_encoding(name, params, 6)
    want = enc.decoder({a: (lambda sel, v=v: v[sel]) for a, v in enc.encode(dense).items()})(slice(None))
    with ladd_format.open(path, verify=True) as ds:
        m = ds.manifest
        assert (m.dense_labels.encoding, m.dense_labels.params) == (name, params or {})
        assert m.format_version == VERSIONS[name]
        assert set(m.arrays) == {"images", "labels", *enc.stored_specs(12, 9, 6)}
        assert set(ds.stored_bytes()) == set(m.arrays)
        assert np.array_equal(np.asarray(ds.dense_labels), want)
        assert np.array_equal(ds.dense_labels[[3, 1]], want[[3, 1]])
        assert np.array_equal(ds.subset([5, 0]).dense_labels[1], want[0])
    if name == "float32":
        assert np.array_equal(want, dense)


def test_default_encoding_is_uint8_for_probs_and_float32_for_logits(tmp_path):
    images, labels, dense = example_arrays(num_classes=3, ipc=1, size=8)
    with ladd_format.open(ladd_format.write(tmp_path / "p.ladd", images, labels, dense)) as ds:
        assert ds.manifest.dense_labels.encoding == "uint8" and ds.manifest.format_version == "1.1"
    logits = np.log(dense)
    with ladd_format.open(ladd_format.write(tmp_path / "l.ladd", images, labels, logits, values="logits")) as ds:
        assert ds.manifest.dense_labels.encoding == "float32" and ds.manifest.format_version == "1.0"
        assert np.array_equal(np.asarray(ds.dense_logits), logits)


@pytest.mark.parametrize("name,params,message", [
    ("topk", {"k": 3}, "k and rule"),
    ("topk", {"k": 3, "rule": "smoothing", "width": 8}, "k and rule"),
    ("topk", {"k": 0, "rule": "smoothing"}, "1 <= k < K = 3"),
    ("topk", {"k": 3, "rule": "smoothing"}, "1 <= k < K = 3"),
    ("topk", {"k": 2.0, "rule": "smoothing"}, "integer k"),
    ("topk", {"k": True, "rule": "smoothing"}, "integer k"),
    ("topk", {"k": 1, "rule": "softmax"}, "rule"),
    ("uint8", {"bits": 8}, "no parameters"),
    ("int4", None, "int4"),
    ("coarse", None, "parameter scale"),
    ("coarse", {"scale": 3, "k": 1}, "parameter scale"),
    ("coarse", {"scale": 0}, "1 <= scale <= 254"),
    ("coarse", {"scale": 255}, "255 is the uint8 encoding"),
    ("coarse", {"scale": 15.0}, "integer scale"),
    ("coarse", {"scale": True}, "integer scale"),
])
def test_invalid_parameters_are_refused_before_writing(tmp_path, name, params, message):
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
    with pytest.raises(InvalidInputError, match=message):
        ladd_format.write(tmp_path / "x.ladd", images, labels, dense, encoding=name, encoding_params=params)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["uint8", "uint16", "topk", "coarse"])
def test_compact_encodings_refuse_logits(tmp_path, name):
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
    params = {"topk": {"k": 1, "rule": "renorm"}, "coarse": {"scale": 7}}.get(name)
    with pytest.raises(InvalidInputError, match="logits"):
        ladd_format.write(tmp_path / "x.ladd", images, labels, np.log(dense), values="logits",
                          encoding=name, encoding_params=params)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("params,message", [
    ({"k": 9, "rule": "smoothing"}, "1 <= k < K"),
    ({"k": 2, "rule": "nearest"}, "rule"),
    ({"k": 2}, "k and rule"),
])
def test_reader_refuses_unknown_parameters(tmp_path, params, message):
    path = ladd_format.write(tmp_path / "c.ladd", *example_arrays(num_classes=4, ipc=1, size=8),
                             encoding="topk", encoding_params={"k": 2, "rule": "renorm"})
    edit_manifest(path, lambda m: m["dense_labels"].__setitem__("params", params), redigest=True)
    with pytest.raises(UnsupportedEncodingError, match=message):
        ladd_format.open(path)


@pytest.mark.parametrize("params,message", [({"scale": 300}, "1 <= scale <= 254"), ({}, "parameter scale")])
def test_reader_refuses_unknown_coarse_parameters(tmp_path, params, message):
    path = ladd_format.write(tmp_path / "c.ladd", *example_arrays(num_classes=4, ipc=1, size=8),
                             encoding="coarse", encoding_params={"scale": 7})
    edit_manifest(path, lambda m: m["dense_labels"].__setitem__("params", params), redigest=True)
    with pytest.raises(UnsupportedEncodingError, match=message):
        ladd_format.open(path)


def test_coarse_needs_format_1_4(tmp_path):
    """A 1.3 reader would refuse the encoding by name: a container claiming 1.3 is refused."""
    path = ladd_format.write(tmp_path / "c.ladd", *example_arrays(num_classes=4, ipc=1, size=8),
                             encoding="coarse", encoding_params={"scale": 7})
    edit_manifest(path, lambda m: m.__setitem__("format_version", "1.3"), redigest=True)
    with pytest.raises(SchemaError, match="older than the 1.4 that its encoding 'coarse'"):
        ladd_format.open(path)


def test_reader_refuses_logits_in_a_probabilities_encoding(tmp_path):
    path = ladd_format.write(tmp_path / "c.ladd", *example_arrays(num_classes=4, ipc=1, size=8))
    edit_manifest(path, lambda m: m["dense_labels"].__setitem__("values", "logits"), redigest=True)
    with pytest.raises(UnsupportedEncodingError, match="'uint8' stores probabilities"):
        ladd_format.open(path)


def test_reader_requires_every_array_of_the_encoding(tmp_path):
    path = ladd_format.write(tmp_path / "c.ladd", *example_arrays(num_classes=4, ipc=1, size=8),
                             encoding="topk", encoding_params={"k": 2, "rule": "smoothing"})
    unlisted = shutil.copytree(path, tmp_path / "u.ladd")
    edit_manifest(unlisted, lambda m: m["arrays"].pop("dense_index"), redigest=True)
    with pytest.raises(SchemaError, match="dense_index"):
        ladd_format.open(unlisted)
    shutil.rmtree(path / "dense_index")
    with pytest.raises(ladd_format.IncompleteContainerError, match="dense_index"):
        ladd_format.open(path)


def test_decoder_refuses_values_that_break_the_encoding():
    enc = get_encoding("uint8", None, 3)
    with pytest.raises(SchemaError, match="sum to 255"):
        enc.decoder({"dense_labels": lambda sel: np.array([[[200, 0, 0]]], np.uint8)})(slice(None))
    coarse = get_encoding("coarse", {"scale": 15}, 3)
    with pytest.raises(SchemaError, match="sum to 15 as 'coarse'"):
        coarse.decoder({"dense_labels": lambda sel: np.array([[[15, 1, 0]]], np.uint8)})(slice(None))
    topk = get_encoding("topk", {"k": 2, "rule": "smoothing"}, 3)
    arrays = {"dense_labels": np.array([[[200, 50]]], np.uint8), "dense_index": np.array([[[1, 1]]], np.uint8)}
    with pytest.raises(SchemaError, match="distinct"):
        topk.decoder({a: (lambda sel, v=v: v[sel]) for a, v in arrays.items()})(slice(None))
    arrays["dense_index"] = np.array([[[0, 3]]], np.uint8)
    with pytest.raises(SchemaError, match="below 3"):
        topk.decoder({a: (lambda sel, v=v: v[sel]) for a, v in arrays.items()})(slice(None))
    arrays = {"dense_labels": np.array([[[200, 100]]], np.uint8), "dense_index": np.array([[[0, 1]]], np.uint8)}
    with pytest.raises(SchemaError, match="more than 255"):
        topk.decoder({a: (lambda sel, v=v: v[sel]) for a, v in arrays.items()})(slice(None))
    renorm = get_encoding("topk", {"k": 2, "rule": "renorm"}, 3)
    arrays["dense_labels"] = np.zeros((1, 1, 2), np.uint8)
    with pytest.raises(SchemaError, match="all zero"):
        renorm.decoder({a: (lambda sel, v=v: v[sel]) for a, v in arrays.items()})(slice(None))


@pytest.mark.parametrize("scale", [255, 65535])
@pytest.mark.parametrize("k", [2, 7, 1000])
def test_largest_remainder_matches_a_ranking_reference(scale, k):
    """The threshold form of _quantise equals ranking every remainder (stable: ties to the lower class)."""
    from ladd_format._encodings import _quantise

    rng = np.random.default_rng(k)
    z = rng.normal(0, 3, (400, k))
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[:20] = 1.0 / k  # all remainders tied
    p[20:30] = 0.0
    p[20:30, -1] = 1.0  # one-hot: nothing left over
    x = p * scale
    q = np.floor(x)
    short = scale - q.sum(-1, keepdims=True)
    order = np.argsort(q - x, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(k), axis=-1)
    assert np.array_equal(_quantise(p, scale), (q + (rank < short)).astype(_quantise(p, scale).dtype))
