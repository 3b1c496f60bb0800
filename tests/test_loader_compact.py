"""The device loader holds dense labels in their stored encoding and decodes each batch's rows.

Every decoded row must be the reader's row bit for bit (``np.asarray(ds.dense_labels)``),
except softmax for logits containers, within :data:`SOFTMAX_RTOL` (exp and sums round
differently in torch and numpy). The loader must hold the stored bytes, never the float32
labels.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
import zarr

import ladd_format
from ladd_format._encodings import get_encoding
from ladd_format.errors import InvalidInputError, SchemaError
from ladd_format.loader import DeviceLoader
from ladd_format.testing import example_arrays

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SOFTMAX_RTOL = 1e-6  # documented bound: measured at most 6.2e-7 on CPU, K = 2 to 21,841
FIELDS = ("images", "labels", "crops", "dense", "index", "crop_image", "crop_id")
CASES = {
    "float32": {"encoding": "float32"},
    "float16": {"encoding": "float16"},
    "uint8": {"encoding": "uint8"},
    "uint16": {"encoding": "uint16"},
    "top3-smoothing": {"encoding": "topk", "encoding_params": {"k": 3, "rule": "smoothing"}},
    "top3-renorm": {"encoding": "topk", "encoding_params": {"k": 3, "rule": "renorm"}},
    "coarse15": {"encoding": "coarse", "encoding_params": {"scale": 15}},
    "logits-T2": {"encoding": "float32", "values": "logits", "temperature": 2.0},
    "logits-float16-T2": {"encoding": "float16", "values": "logits", "temperature": 2.0},
}


def _write(path, num_classes=6, ipc=3, size=12, **kwargs):
    images, labels, dense = example_arrays(num_classes=num_classes, ipc=ipc, size=size)
    if kwargs.get("values") == "logits":
        dense = np.log(dense) * 3  # logits with a wide range, so softmax(z / 2) is not trivial
    return ladd_format.open(ladd_format.write(path, images, labels, dense, **kwargs))


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    ds = _write(tmp_path_factory.mktemp("compact") / f"{request.param}.ladd", **CASES[request.param])
    return request.param, ds


def _stored_nbytes(ds):
    return {name: a.nbytes for name, a in ds._arrays.items() if name.startswith("dense")}


def _check_rows(batch, reference, logits):
    """The batch's dense rows are the reference rows of (image, crop), on the batch's device."""
    want = reference[batch.index.cpu()[batch.crop_image.cpu()], batch.crop_id.cpu()]
    got = batch.dense.cpu()
    assert got.dtype == torch.float32 and got.shape == want.shape
    if logits:
        torch.testing.assert_close(got, want, rtol=SOFTMAX_RTOL, atol=1e-38)
    else:
        assert _bits(got, want)


def _bits(a, b):
    """Equal bit for bit (torch.equal alone would take -0.0 for 0.0)."""
    return torch.equal(a.view(torch.int32), b.contiguous().view(torch.int32))


@pytest.mark.parametrize("num_classes, encodings", [
    (4, CASES), (300, CASES), (70_000, ["top3-smoothing", "top3-renorm"]),  # K > 65,536: uint32 indices
])
def test_torch_decode_is_the_numpy_decode(num_classes, encodings):
    rng = np.random.default_rng(num_classes)
    p = rng.random((4, 9, num_classes)) ** 6
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
    for name in encodings:
        spec = CASES[name]
        if spec.get("values") == "logits":
            continue
        enc = get_encoding(spec["encoding"], spec.get("encoding_params"), num_classes)
        stored = enc.encode(p)
        want = enc.decoder({a: (lambda sel, v=v: v[sel]) for a, v in stored.items()})(slice(None))
        got = enc.torch_decode({a: torch.from_numpy(v) for a, v in stored.items()})
        assert _bits(got, torch.from_numpy(want)), name


@pytest.mark.parametrize("k", ["all", 3, 0])
def test_rows_are_the_readers_rows(case, k):
    name, ds = case
    reference = torch.from_numpy(np.asarray(ds.dense_labels))
    loader = DeviceLoader(ds, batch_size=5, device="cpu", crops_per_image=k, seed=1, augment=None)
    per_image = {"all": 25, 3: 3, 0: 0}[k]
    for _ in range(3):
        rows = 0
        for batch in loader:
            _check_rows(batch, reference, name.startswith("logits"))
            rows += len(batch.dense)
        assert rows == len(ds) * per_image
    assert loader.memory()["device"] == {"images": ds._arrays["images"].nbytes, "labels": len(ds) * 8,
                                         **_stored_nbytes(ds)}
    assert loader.memory()["host"] == {}


def test_softmax_differs_by_rounding_only(tmp_path):
    """Logits rows: within the bound, mostly equal, and summing to 1 to float32 rounding."""
    ds = _write(tmp_path / "c.ladd", num_classes=100, ipc=1, encoding="float32", values="logits", temperature=2.0)
    batch = next(iter(DeviceLoader(ds, batch_size=len(ds), device="cpu", shuffle=False, augment=None)))
    _check_rows(batch, torch.from_numpy(np.asarray(ds.dense_labels)), logits=True)
    want = torch.from_numpy(np.asarray(ds.dense_labels))[batch.index[batch.crop_image], batch.crop_id]
    assert (batch.dense == want).double().mean() > 0.3
    torch.testing.assert_close(batch.dense.double().sum(-1), torch.ones(len(want), dtype=torch.float64),
                               rtol=0, atol=1e-5)


def test_subset_views(tmp_path):
    ds = _write(tmp_path / "c.ladd", encoding="topk", encoding_params={"k": 2, "rule": "smoothing"})
    view = ds.subset([17, 3, 3, 9, 0, 12, 5])
    nested = view.subset([6, 1, 4, 2])
    for v in (view, nested):
        reference = torch.from_numpy(np.asarray(v.dense_labels))
        images = torch.from_numpy(np.asarray(v.images)).permute(0, 3, 1, 2)
        for k in ("all", 3):
            loader = DeviceLoader(v, batch_size=3, device="cpu", crops_per_image=k, seed=0, augment=None)
            for batch in loader:
                _check_rows(batch, reference, logits=False)
                assert torch.equal(batch.labels, torch.from_numpy(v.labels)[batch.index])
                pixels = images[batch.index].float() / 255
                mean = torch.tensor(v.manifest.image.mean).view(1, -1, 1, 1)
                std = torch.tensor(v.manifest.image.std).view(1, -1, 1, 1)
                torch.testing.assert_close(batch.images, (pixels - mean) / std, rtol=0, atol=1e-5)
        held = loader.memory()["device"]
        assert held["dense_labels"] == len(v) * 25 * 2 and held["dense_index"] == len(v) * 25 * 2
    assert np.array_equal(nested.labels, ds.labels[[5, 3, 0, 3]])


@pytest.mark.parametrize("k", ["all", 2, 0])
def test_host_images_give_the_same_batches(tmp_path, k):
    ds = _write(tmp_path / "c.ladd", encoding="uint8")
    on_device = DeviceLoader(ds, batch_size=4, device="cpu", crops_per_image=k, seed=5)
    on_host = DeviceLoader(ds, batch_size=4, device="cpu", crops_per_image=k, seed=5, images_on="pinned")
    for _ in range(2):
        for a, b in zip(on_device, on_host, strict=True):
            for field in FIELDS:
                assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert on_host.memory()["host"] == {"images": ds._arrays["images"].nbytes}
    assert "images" not in on_host.memory()["device"]


def test_memory_is_the_stored_bytes_not_the_decoded_ones(tmp_path):
    """K = 1,000 top-3: the float32 labels (20 MB) would be 270x the stored labels. The
    loader holds the stored bytes and its host allocations stay far below the decoded size."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    dense = rng.random((200, 25, 1000), dtype=np.float32) ** 8
    dense /= dense.sum(-1, keepdims=True)
    labels = dense.sum(1).argmax(-1)
    path = ladd_format.write(tmp_path / "c.ladd", images, labels, dense, encoding="topk",
                             encoding_params={"k": 3, "rule": "smoothing"})
    ds = ladd_format.open(path)
    decoded = len(ds) * 25 * 1000 * 4
    tracemalloc.start()
    try:
        loader = DeviceLoader(ds, batch_size=64, device="cpu", crops_per_image=2, seed=0, augment=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stored = ds._arrays["images"].nbytes + sum(_stored_nbytes(ds).values())
    held = sum(loader.memory()["device"].values())
    assert held <= 1.1 * stored + len(ds) * 8
    assert held < decoded / 40 and peak < decoded / 10
    batch = next(iter(loader))
    assert batch.dense.shape == (64 * 2, 1000)
    _check_rows(batch, torch.from_numpy(np.asarray(ds.dense_labels)), logits=False)


def test_rows_that_break_the_encoding_are_refused_at_load(tmp_path):
    path = ladd_format.write(tmp_path / "c.ladd", *example_arrays(num_classes=4, ipc=2, size=8), encoding="uint8")
    array = zarr.open_array(path / "dense_labels", mode="r+")
    row = array[3, 7]
    row[0] = (int(row[0]) + 1) % 256
    array[3, 7] = row
    with pytest.raises(SchemaError, match="sum to 255"):
        DeviceLoader(ladd_format.open(path, verify=False), device="cpu")


def test_bad_images_on(tmp_path):
    ds = _write(tmp_path / "c.ladd", encoding="uint8")
    with pytest.raises(InvalidInputError, match="images_on"):
        DeviceLoader(ds, device="cpu", images_on="disk")


def test_import_stays_torch_free():
    code = "import sys, ladd_format, ladd_format._encodings; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@CUDA
@pytest.mark.parametrize("images_on", ["device", "pinned"])
@pytest.mark.parametrize("k", ["all", 3])
def test_cuda_rows_are_the_readers_rows(case, k, images_on):
    name, ds = case
    reference = torch.from_numpy(np.asarray(ds.dense_labels))
    gpu = DeviceLoader(ds, batch_size=5, device="cuda", crops_per_image=k, seed=2, images_on=images_on)
    cpu = DeviceLoader(ds, batch_size=5, device="cpu", crops_per_image=k, seed=2)
    for g, c in zip(gpu, cpu, strict=True):
        assert g.dense.device.type == "cuda" and g.images.device.type == "cuda"
        _check_rows(g, reference, name.startswith("logits"))
        for field in ("labels", "index", "crop_image", "crop_id"):
            assert torch.equal(getattr(g, field).cpu(), getattr(c, field)), field
