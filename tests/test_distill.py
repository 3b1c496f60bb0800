"""Distribution Matching (ladd_format.distill) on a tiny source: 3 classes of 28 px images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ladd_format
from ladd_format import distill, sources
from ladd_format.distill import distill_dm, matching_loss, to_uint8
from ladd_format.errors import InvalidInputError

_SMALL = {"batch_real": 16, "width": 8}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: on a shared 2-core machine a second thread made each iteration
    80x slower (2 s against 24 ms); the count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def source() -> sources.SourceDataset:
    """Classes differ in where their bright blob sits, so their embeddings differ."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for cls in range(3):
        base = np.zeros((28, 28), np.float64)
        base[4 + 8 * cls:12 + 8 * cls, 6:22] = 200
        noise = rng.normal(0, 30, (24, 28, 28))
        images.append(np.clip(base + noise, 0, 255).astype(np.uint8)[..., None])
        labels.append(np.full(24, cls))
    train = np.concatenate(images)
    return sources.from_arrays("blobs", train, np.concatenate(labels), train[:3], np.arange(3))


def test_same_seed_same_images(source):
    a = distill_dm(source, 2, iterations=3, seed=5, progress=False, **_SMALL)
    b = distill_dm(source, 2, iterations=3, seed=5, progress=False, **_SMALL)
    c = distill_dm(source, 2, iterations=3, seed=6, progress=False, **_SMALL)
    np.testing.assert_array_equal(a.normalised, b.normalised)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.losses == b.losses
    assert not np.array_equal(a.normalised, c.normalised)


def test_global_torch_rng_is_left_alone(source):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    distill_dm(source, 1, iterations=2, progress=False, **_SMALL)
    assert torch.equal(torch.rand(3), expected)


def test_matching_loss_decreases(source):
    start = distill_dm(source, 2, iterations=0, progress=False, **_SMALL)
    done = distill_dm(source, 2, iterations=40, lr=1.0, progress=False, **_SMALL)
    before = matching_loss(source, start.normalised, start.labels, networks=4, **_SMALL)
    after = matching_loss(source, done.normalised, done.labels, networks=4, **_SMALL)
    assert after < 0.7 * before
    assert np.mean(done.losses[-10:]) < np.mean(done.losses[:10])


def test_zero_iterations_returns_the_random_real_images(source):
    d = distill_dm(source, 3, iterations=0, seed=2, progress=False, **_SMALL)
    images, labels, index = sources.random_real(source, 3, seed=2)
    np.testing.assert_array_equal(d.images, images)
    np.testing.assert_array_equal(d.labels, labels)
    assert d.distillation["details"]["init_train_indices"] == index.tolist()
    assert d.losses == ()


def test_output_shapes_dtypes_and_labels(source):
    d = distill_dm(source, 4, iterations=2, progress=False, **_SMALL)
    assert d.images.dtype == np.uint8 and d.images.shape == (12, 28, 28, 1)
    assert d.normalised.dtype == np.float32 and d.normalised.shape == (12, 28, 28, 1)
    assert d.labels.dtype == np.int64
    np.testing.assert_array_equal(d.labels, np.repeat(np.arange(3), 4))
    assert len(d.losses) == 2 and all(math.isfinite(x) and x >= 0 for x in d.losses)


def test_to_uint8_denormalises_clamps_and_rounds():
    mean, std = [0.5], [0.25]
    raw = torch.tensor([-10.0, 0.0, 100.4, 100.6, 300.0]) / 255
    pixels = ((raw - 0.5) / 0.25).view(1, 1, 1, 5)
    assert to_uint8(pixels, mean, std).ravel().tolist() == [0, 0, 100, 101, 255]


@pytest.mark.parametrize("kwargs", [
    {"ipc": 0}, {"ipc": 25}, {"ipc": 1.0}, {"iterations": -1}, {"iterations": 2.5}, {"lr": float("nan")},
    {"lr": float("inf")}, {"lr": 0.0}, {"lr": "1"}, {"batch_real": 0}, {"seed": -1}, {"momentum": 1.0},
    {"width": 0}, {"clip": 1},
])
def test_bad_arguments_raise_before_any_work(source, monkeypatch, kwargs):
    def no_work(*args, **kw):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(distill, "random_real", no_work)
    args = {"ipc": 1, "iterations": 1, **_SMALL, **kwargs}
    with pytest.raises(InvalidInputError):
        distill_dm(source, args.pop("ipc"), progress=False, **args)


def test_divergence_is_an_error_not_garbage(source):
    with pytest.raises(InvalidInputError, match="lower lr"):
        distill_dm(source, 1, iterations=3, lr=1e38, progress=False, **_SMALL)


def test_provenance_says_dm_and_survives_a_container(source, tmp_path):
    d = distill_dm(source, np.int64(2), iterations=np.int64(2), lr=0.5, seed=np.int64(3), progress=False,
                   **_SMALL)  # numpy integers, as array code passes them, must still give JSON metadata
    assert d.distillation["method"] == "dm" and d.distillation["ipc"] == 2
    details = d.distillation["details"]
    assert {k: details[k] for k in ("iterations", "lr", "momentum", "batch_real", "seed", "architecture",
                                    "width", "depth")} == {
        "iterations": 2, "lr": 0.5, "momentum": 0.5, "batch_real": 16, "seed": 3, "architecture": "convnet",
        "width": 8, "depth": 3}
    dense = np.full((len(d.images), 25, 3), 1 / 3, np.float32)
    path = ladd_format.write(tmp_path / "dm.ladd", d.images, d.labels, dense, distillation=d.distillation)
    with ladd_format.open(path) as ds:
        assert ds.manifest.distillation.method == "dm"
        assert ds.manifest.distillation.details["iterations"] == 2
        np.testing.assert_array_equal(np.asarray(ds.images), d.images)


def test_real_and_synthetic_images_share_one_dsa_draw(source, monkeypatch):
    calls = []

    def recording(x, params):
        calls.append((len(x), params))
        return x

    monkeypatch.setattr(distill, "apply_dsa", recording)
    distill_dm(source, 2, iterations=2, progress=False, **_SMALL)
    assert [n for n, _ in calls] == [16, 2] * 6  # per iteration and class: the real batch, then the class's images
    for (_, real), (_, syn) in zip(calls[::2], calls[1::2]):
        assert real.family == syn.family
        for key, values in real.values.items():
            assert torch.all(values == values[0]) and torch.all(syn.values[key] == values[0])
    assert len({p.family for _, p in calls}) > 1 or len({float(next(iter(p.values.values()))[0])
                                                         for _, p in calls}) > 1  # draws differ between classes


def test_clip_keeps_the_pixels_storable(source):
    def raw(d):
        return d.normalised * np.asarray(source.std) + np.asarray(source.mean)

    free = distill_dm(source, 2, iterations=5, lr=20.0, progress=False, **_SMALL)
    clipped = distill_dm(source, 2, iterations=5, lr=20.0, clip=True, progress=False, **_SMALL)
    assert raw(free).min() < -0.01 or raw(free).max() > 1.01  # the unclipped run leaves the range
    assert raw(clipped).min() >= -1e-6 and raw(clipped).max() <= 1 + 1e-6
    np.testing.assert_allclose(clipped.images / 255, raw(clipped), atol=0.5 / 255 + 1e-6)
    assert clipped.distillation["details"]["clip"] is True and free.distillation["details"]["clip"] is False
