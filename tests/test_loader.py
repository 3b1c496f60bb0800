"""The device loader and the Dataset view, on real containers.

A fake labeler writes dense labels that encode (image, crop): every crop a loader yields is
identified by regenerating all crops and matching pixels, and must arrive with the dense
label of exactly that (image, crop).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ladd_format
from ladd_format.errors import InvalidInputError
from ladd_format.loader import Batch, CropDataset, DeviceLoader
from ladd_format.sampler import UniformSampler

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MEAN, STD = {1: [0.3], 3: [0.5, 0.4, 0.45]}, {1: [0.25], 3: [0.2, 0.25, 0.3]}


def _write(path, num_images, size, channels, n=5, ratio=0.625, seed=0):
    """A container whose dense label for (image i, crop j) is [p, 1 - p], p = code / (codes + 1)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_images, *size, channels), dtype=np.uint8)
    labels = np.arange(num_images) % 2
    codes = np.arange(num_images * n * n).reshape(num_images, n * n) + 1
    p = codes / (num_images * n * n + 1)
    dense = np.stack([p, 1 - p], axis=-1).astype(np.float32)
    ladd_format.write(path, images, labels, dense, mean=MEAN[channels], std=STD[channels],
                      sampler={"n": n, "ratio": ratio}, encoding="float32")
    return ladd_format.open(path)


def _decode(dense, num_images, num_crops):
    """(image, crop) of each dense row, undoing :func:`_write`'s code."""
    total = num_images * num_crops
    code = np.rint(dense[:, 0].double().cpu().numpy() * (total + 1)).astype(np.int64) - 1
    return code // num_crops, code % num_crops


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("rgb") / "rgb.ladd", 12, (32, 32), 3)


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("gray") / "gray.ladd", 7, (28, 28), 1, n=3, ratio=0.5)


def _all_crops(ds):
    """Every crop of every image, normalised, regenerated: [M, n*n, C*H*W]."""
    images = torch.from_numpy(np.asarray(ds.images)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(ds.manifest.image.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.manifest.image.std).view(1, -1, 1, 1)
    crops = UniformSampler.from_spec(ds.manifest.sampler).crops((images / 255 - mean) / std)
    return crops.flatten(2), ((images / 255 - mean) / std)


def _identify(batch: Batch, ds):
    """(image, crop) of each crop row, found by pixels; asserts the match is unambiguous."""
    reference, images = _all_crops(ds)
    m, n2, _ = reference.shape
    dist = torch.cdist(batch.crops.cpu().flatten(1).double(), reference.flatten(0, 1).double())
    best = dist.topk(2, dim=1, largest=False)
    assert (best.values[:, 0] < 1e-3).all() and (best.values[:, 1] > 1.0).all()
    found = best.indices[:, 0]
    return found // n2, found % n2


def _check_batch(batch: Batch, ds, k):
    m, n2 = len(ds), ds.manifest.sampler.num_crops
    b = len(batch.images)
    assert batch.crops.shape[0] == batch.dense.shape[0] == b * k
    image, crop = _identify(batch, ds)
    code_image, code_crop = _decode(batch.dense, m, n2)
    assert np.array_equal(image.numpy(), code_image) and np.array_equal(crop.numpy(), code_crop)
    assert torch.equal(batch.index.cpu()[batch.crop_image.cpu()], image)
    assert torch.equal(batch.crop_id.cpu(), crop)
    _, images = _all_crops(ds)
    torch.testing.assert_close(batch.images.cpu(), images[batch.index.cpu()], rtol=0, atol=1e-5)
    assert torch.equal(batch.labels.cpu(), torch.from_numpy(ds.labels)[batch.index.cpu()])
    for row in range(b):  # k distinct crops per image
        assert len(set(crop[batch.crop_image.cpu() == row].tolist())) == k
    return list(zip(image.tolist(), crop.tolist()))


@pytest.mark.parametrize("k", ["all", 1, 7])
def test_every_crop_arrives_with_its_dense_label(rgb, k):
    loader = DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=k, seed=3,
                          augment=None)
    per_image = 25 if k == "all" else k
    seen = []
    for batch in loader:
        seen += _check_batch(batch, rgb, per_image)
    assert len(loader) == 3 and len(seen) == 12 * per_image
    if k == "all":
        assert sorted(seen) == [(i, j) for i in range(12) for j in range(25)]
    else:
        assert sorted({i for i, _ in seen}) == list(range(12))


def test_grayscale_fractional_geometry(gray):
    loader = DeviceLoader(gray, batch_size=3, device="cpu", crops_per_image=4, seed=0,
                          augment=None, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    for batch in batches:
        assert batch.images.shape == (3, 1, 28, 28) and batch.crops.shape == (12, 1, 28, 28)
        _check_batch(batch, gray, 4)


def test_epochs_shuffle_and_seed(rgb):
    def epoch_orders(loader, epochs):
        return [torch.cat([b.index for b in loader]).tolist() for _ in range(epochs)]

    a = epoch_orders(DeviceLoader(rgb, batch_size=4, device="cpu", seed=7, augment=None), 3)
    b = epoch_orders(DeviceLoader(rgb, batch_size=4, device="cpu", seed=7, augment=None), 3)
    c = epoch_orders(DeviceLoader(rgb, batch_size=4, device="cpu", seed=8, augment=None), 1)
    assert a == b and a[0] != a[1] and a[1] != a[2] and a[0] != c[0]
    assert all(sorted(order) == list(range(12)) for order in a)
    plain = epoch_orders(DeviceLoader(rgb, batch_size=5, device="cpu", shuffle=False,
                                      augment=None), 2)
    assert plain == [list(range(12))] * 2
    partial = DeviceLoader(rgb, batch_size=4, device="cpu", seed=7, augment=None)
    next(iter(partial))  # an abandoned epoch still counts as one
    assert epoch_orders(partial, 1) == a[1:2]


def test_seeded_batches_are_reproducible(rgb):
    def run(seed):
        loader = DeviceLoader(rgb, batch_size=6, device="cpu", crops_per_image=3, seed=seed)
        return [b for _ in range(2) for b in loader]

    first, second, other = run(1), run(1), run(2)
    for x, y in zip(first, second):
        for name in ("images", "labels", "crops", "dense", "index", "crop_image", "crop_id"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
    assert any(not torch.equal(x.crops, y.crops) for x, y in zip(first, other))


def test_seeded_views_share_one_upload(rgb):
    """with_seed: the arrays are not copied, and each view draws what a loader of that seed draws."""
    base = DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=4, seed=0)
    view = base.with_seed(9)
    assert view._images is base._images and view._labels is base._labels and view._stored is base._stored
    assert view.memory() == base.memory() and view.epoch == 0 and base.seed == 0
    own = DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=4, seed=9)
    for _ in range(2):
        for x, y in zip(view, own):
            for name in ("images", "crops", "dense", "index", "crop_id"):
                assert torch.equal(getattr(x, name), getattr(y, name)), name


def test_plain_batches_are_the_batches_before_dsa(rgb):
    from ladd_format.dsa import apply_dsa

    augmented = list(DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=3, seed=2))
    plain = list(DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=3, seed=2).plain_batches())
    for aug, (batch, params) in zip(augmented, plain):
        b = len(batch.images)
        assert torch.equal(aug.images, apply_dsa(batch.images, params.select(slice(0, b))))
        assert torch.equal(aug.crops, apply_dsa(batch.crops, params.select(slice(b, None))))
        assert torch.equal(aug.dense, batch.dense) and torch.equal(aug.index, batch.index)
    bare = DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=3, seed=2, augment=None)
    assert all(params is None for _, params in bare.plain_batches())


def test_dsa_keeps_labels_paired(rgb):
    loader = DeviceLoader(rgb, batch_size=4, device="cpu", crops_per_image=5, seed=0,
                          augment="dsa")
    plain = DeviceLoader(rgb, batch_size=4, device="cpu", crops_per_image=5, seed=0,
                         augment=None)
    for aug, ref in zip(loader, plain):
        assert aug.crops.shape == ref.crops.shape and aug.images.shape == ref.images.shape
        image, crop = _decode(aug.dense, 12, 25)
        assert np.array_equal(aug.index.cpu()[aug.crop_image.cpu()].numpy(), image)
        assert np.array_equal(aug.crop_id.cpu().numpy(), crop)
    assert not torch.equal(aug.crops, ref.crops) or not torch.equal(aug.images, ref.images)


def test_bfloat16_output(rgb):
    batch = next(iter(DeviceLoader(rgb, batch_size=4, device="cpu", seed=0, augment="dsa",
                                   dtype=torch.bfloat16)))
    assert batch.images.dtype == batch.crops.dtype == torch.bfloat16
    assert batch.dense.dtype == torch.float32 and batch.labels.dtype == torch.int64


def test_dataset_view_matches_loader(rgb):
    view = CropDataset(rgb)
    assert len(view) == 12
    loader = DeviceLoader(rgb, batch_size=12, device="cpu", shuffle=False, augment=None)
    batch = next(iter(loader))
    for i in (0, 5, 11, -1):
        image, label, crops, dense = view[i]
        i %= 12
        assert crops.shape == (25, 3, 32, 32) and dense.shape == (25, 2)
        torch.testing.assert_close(image, batch.images[i], rtol=0, atol=1e-6)
        assert int(label) == int(rgb.labels[i])
        rows = batch.crop_image == i
        order = batch.crop_id[rows].argsort()
        torch.testing.assert_close(crops, batch.crops[rows][order], rtol=0, atol=1e-5)
        torch.testing.assert_close(dense, batch.dense[rows][order], rtol=0, atol=0)
    with pytest.raises(IndexError):
        view[12]
    images, labels, crops, dense = next(iter(torch.utils.data.DataLoader(view, batch_size=4)))
    assert crops.shape == (4, 25, 3, 32, 32) and dense.shape == (4, 25, 2)
    assert labels.dtype == torch.int64


@pytest.mark.parametrize("k", [0, 3, "all"])
def test_shares_of_a_global_batch_are_its_rows(rgb, k):
    """Data-parallel shares: rank r's images are its contiguous slice of the global batch, with
    their crops and DSA draws as one process renders them (a last batch of 2 leaves rank 0 empty)."""
    whole = DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=k, seed=3)
    shares = [DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=k, seed=3, share=(r, 3))
              for r in range(3)]
    for epoch in range(2):
        for full, *parts in zip(whole, *shares):
            assert torch.equal(torch.cat([p.images for p in parts]), full.images)
            assert [p.global_images for p in parts] == [len(full.images)] * 3
            crops = {(int(full.index[i]), int(c)): full.crops[r] for r, (i, c) in
                     enumerate(zip(full.crop_image, full.crop_id))}
            rendered = [((int(p.index[i]), int(c)), p.crops[r]) for p in parts
                        for r, (i, c) in enumerate(zip(p.crop_image, p.crop_id))]
            assert len(rendered) == len(crops) and all(torch.equal(crops[key], crop) for key, crop in rendered)
    assert [len(p.images) for p in parts] == [0, 1, 1]


def test_full_images_only(rgb):
    loader = DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=0, seed=1)
    seen = []
    for batch in loader:
        assert batch.crops.shape == (0, 3, 32, 32) and batch.dense.shape == (0, 2)
        assert len(batch.images) == len(batch.labels) == len(batch.index)
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(12))


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.0}, "batch_size"),
    ({"crops_per_image": -1}, "crops_per_image"), ({"crops_per_image": 26}, "crops_per_image"),
    ({"crops_per_image": "some"}, "crops_per_image"), ({"augment": "flip"}, "augment"),
    ({"dtype": torch.int64}, "dtype"), ({"share": (2, 2)}, "share"), ({"share": (0,)}, "share"),
])
def test_bad_parameters(rgb, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        DeviceLoader(rgb, device="cpu", **kwargs)


@CUDA
@pytest.mark.parametrize("k", ["all", 3])
def test_cuda_matches_cpu(rgb, k):
    gpu = DeviceLoader(rgb, batch_size=5, device="cuda", crops_per_image=k, seed=4)
    cpu = DeviceLoader(rgb, batch_size=5, device="cpu", crops_per_image=k, seed=4)
    for g, c in zip(gpu, cpu):
        assert g.crops.device.type == "cuda"
        for name in ("labels", "dense", "index", "crop_image", "crop_id"):
            assert torch.equal(getattr(g, name).cpu(), getattr(c, name)), name
        torch.testing.assert_close(g.images.cpu(), c.images, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g.crops.cpu(), c.crops, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_normalise_gives_nchw_whatever_the_strides(channels):
    """A one-channel NHWC batch permuted to NCHW has strides that also read as channels-last;
    normalise lays its result out NCHW (oneDNN was up to 2.7x slower on the other layout) with
    the values of the plain formula."""
    from ladd_format._torch import normalise

    nhwc = torch.randint(0, 256, (4, 6, 5, channels), dtype=torch.uint8)
    pixels = nhwc.permute(0, 3, 1, 2)
    mean, std = [0.5] * channels, [0.25] * channels
    out = normalise(pixels, mean, std)
    assert out.stride() == torch.empty(out.shape).stride() == (channels * 30, 30, 5, 1)
    expected = (pixels.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    assert torch.equal(out, expected)
