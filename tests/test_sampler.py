"""The sub-sampler: geometry, the crop function against a float64 reference, golden vectors."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from ladd_format.errors import InvalidInputError
from ladd_format.manifest import SamplerSpec
from ladd_format.sampler import PATHS, UniformSampler, _resize_weights

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "crops"
_spec = importlib.util.spec_from_file_location("make_crops", VECTORS / "make_crops.py")
make_crops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_crops)
reference_crops = make_crops.reference_crops  # float64, written from the spec's formulas

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _tolerance(h, w):
    """On the 0..1 scale: 1e-5 at the sizes where float32 is exact, 1e-3 elsewhere."""
    return 1e-5 if h % 32 == 0 and w % 32 == 0 else 1e-3


# -- geometry -------------------------------------------------------------------------------

@pytest.mark.parametrize("side, crop, offsets", [
    (28, 18, [0, 3, 5, 8, 10]),      # 17.5 -> 18; 2.5 and 7.5 round up
    (32, 20, [0, 3, 6, 9, 12]),
    (64, 40, [0, 6, 12, 18, 24]),
    (128, 80, [0, 12, 24, 36, 48]),
    (224, 140, [0, 21, 42, 63, 84]),
    (20, 13, [0, 2, 4, 5, 7]),       # 12.5 -> 13
])
def test_default_geometry(side, crop, offsets):
    assert UniformSampler().axis(side) == (crop, offsets)


def test_boxes_non_square_row_by_row():
    boxes = UniformSampler().boxes(28, 128)
    assert len(boxes) == 25
    assert boxes[0] == (0, 0, 18, 80) and boxes[4] == (0, 48, 18, 80)
    assert boxes[5] == (3, 0, 18, 80) and boxes[24] == (10, 48, 18, 80)
    assert boxes[7] == (3, 24, 18, 80)


def test_spec_worked_example():
    """The numbers of spec/SPEC.md, "Sub-sampler", worked example (28 px)."""
    s = UniformSampler()
    assert s.axis(28) == (18, [0, 3, 5, 8, 10])
    assert s.boxes(28, 28)[7] == (3, 5, 18, 18)
    weights = _resize_weights(28, 18)
    expected = {0: {0: 1.0}, 1: {0: 15 / 28, 1: 13 / 28}, 2: {1: 25 / 28, 2: 3 / 28},
                14: {8: 5 / 28, 9: 23 / 28}, 27: {17: 1.0}}
    for d, row in expected.items():
        dense = np.zeros(18)
        for i, v in row.items():
            dense[i] = v
        np.testing.assert_allclose(weights[d], dense, rtol=0, atol=1e-15)
    assert UniformSampler(1, 0.7).boxes(9, 7) == [(2, 1, 6, 5)]


@given(side=st.integers(1, 400), n=st.integers(1, 12), ratio=st.floats(1e-3, 1.0))
def test_axis_invariants(side, n, ratio):
    s = UniformSampler(n, ratio)
    if side < n:
        with pytest.raises(InvalidInputError, match="smaller than n"):
            s.axis(side)
        return
    crop, offsets = s.axis(side)
    assert crop == min(max(math.floor(ratio * side + 0.5), 1), side)
    assert len(offsets) == n and offsets == sorted(offsets)
    assert all(0 <= o and o + crop <= side for o in offsets)
    room = side - crop
    if n > 1:
        assert offsets[0] == 0 and offsets[-1] == room
        for i, o in enumerate(offsets):  # half-up rounding of room * i / (n - 1)
            exact = room * i / (n - 1)
            assert exact - 0.5 < o <= exact + 0.5
    else:
        assert offsets == [(room + 1) // 2]


@given(h=st.integers(1, 300), w=st.integers(1, 300), n=st.integers(1, 9),
       ratio=st.floats(0.05, 1.0))
def test_boxes_inside(h, w, n, ratio):
    s = UniformSampler(n, ratio)
    if min(h, w) < n:
        return
    boxes = s.boxes(h, w)
    assert len(boxes) == n * n
    for top, left, bh, bw in boxes:
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
        assert bh >= 1 and bw >= 1


def test_spec_round_trip():
    s = UniformSampler.from_spec(SamplerSpec(n=3, ratio=0.5))
    assert (s.n, s.ratio, s.num_crops) == (3, 0.5, 9)
    assert s.to_spec() == SamplerSpec(n=3, ratio=0.5)
    assert UniformSampler().to_spec() == SamplerSpec()


# -- the crop function ---------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("h, w, c, n, ratio", [
    (28, 28, 1, 5, 0.625), (32, 32, 3, 5, 0.625), (64, 64, 3, 5, 0.625),
    (128, 128, 3, 5, 0.625), (37, 53, 3, 4, 0.55), (24, 20, 3, 3, 0.5), (9, 7, 1, 1, 0.7),
])
def test_crops_match_float64_reference(device, path, h, w, c, n, ratio):
    images = _images((2, c, h, w))
    ref = np.stack([reference_crops(im, n, ratio) for im in images]) / 255
    s = UniformSampler(n, ratio)
    x = torch.from_numpy(images).to(device)
    image_major = s.crops(x, path=path)
    crop_major = s.crops(x, path=path, order="crop")
    assert image_major.shape == (2, n * n, c, h, w) and image_major.dtype == torch.float32
    assert image_major.device.type == device
    tol = _tolerance(h, w)
    np.testing.assert_allclose(image_major.cpu().double().numpy() / 255, ref, rtol=0, atol=tol)
    torch.testing.assert_close(crop_major.transpose(0, 1), image_major, rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [32, 128])
def test_crops_exact_at_multiples_of_32(device, size):
    """Weights are multiples of 1/16 there: float32 on uint8 input is the exact value."""
    images = _images((2, 3, size, size), seed=size)
    ref = torch.from_numpy(np.stack([reference_crops(im, 5, 0.625) for im in images]))
    for path in PATHS:
        out = UniformSampler().crops(torch.from_numpy(images).to(device), path=path).cpu()
        assert torch.equal(out, ref.float()), path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_output_rounds_once(device, dtype):
    images = _images((3, 3, 32, 32), seed=3)
    ref = torch.from_numpy(np.stack([reference_crops(im, 5, 0.625) for im in images]))
    for path in PATHS:
        out = UniformSampler().crops(torch.from_numpy(images).to(device), dtype=dtype, path=path)
        assert out.dtype == dtype
        assert torch.equal(out.cpu(), ref.to(dtype)), path


@pytest.mark.parametrize("device", DEVICES)
def test_float_input(device):
    rng = np.random.default_rng(5)
    images = ((rng.random((2, 3, 40, 24)) - 0.4) / 0.2).astype(np.float32)
    ref = np.stack([reference_crops(im, 5, 0.625) for im in images])
    for path in PATHS:
        out = UniformSampler().crops(torch.from_numpy(images).to(device), path=path)
        np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=0, atol=1e-5)
    out64 = UniformSampler().crops(torch.from_numpy(images), dtype=torch.float64)
    np.testing.assert_allclose(out64.numpy(), ref, rtol=0, atol=1e-12)


@CUDA
@pytest.mark.parametrize("size", [28, 32, 128])
def test_cuda_matches_cpu(size):
    images = torch.from_numpy(_images((8, 3, size, size), seed=7))
    s = UniformSampler()
    cpu = s.crops(images)
    for path in PATHS:
        gpu = s.crops(images.cuda(), path=path).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=0, atol=255 * _tolerance(size, size))
    picks = s.crops_at(images.cuda(), [0, 3, 7, 7], [24, 0, 5, 5]).cpu()
    torch.testing.assert_close(picks, cpu[[0, 3, 7, 7], [24, 0, 5, 5]], rtol=0, atol=1e-3)


@CUDA
def test_cuda_exact_even_with_tf32_enabled():
    images = torch.from_numpy(_images((4, 3, 64, 64), seed=11))
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        out = UniformSampler().crops(images.cuda(), path="gemm").cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert torch.equal(out, UniformSampler().crops(images))


_TF32_PROBE = """
import torch
from ladd_format.sampler import _exact_matmul
m = torch.backends.cuda.matmul
{enable}
def state():
    return m.fp32_precision, torch.get_float32_matmul_precision() if {legacy} else None
before = state()
with _exact_matmul(torch.device("cuda")):
    assert m.fp32_precision == "ieee" and not m.allow_tf32
assert state() == before, (state(), before)
"""


@pytest.mark.parametrize("enable, legacy", [
    ("m.allow_tf32 = True", True), ("torch.set_float32_matmul_precision('high')", True),
    ("m.fp32_precision = 'tf32'", False),
])
def test_tf32_switched_off_and_restored(enable, legacy):
    """The crop products run in IEEE float32 whichever TF32 API a trainer used, and the
    trainer's setting comes back afterwards (a fresh process per API: mixing them raises)."""
    code = _TF32_PROBE.format(enable=enable, legacy=legacy)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr


def test_shapes_flatten_single_image_and_numpy():
    s = UniformSampler(3, 0.5)
    images = torch.from_numpy(_images((4, 1, 12, 10)))
    full = s.crops(images)
    assert s.crops(images, flatten=True).shape == (36, 1, 12, 10)
    assert torch.equal(s.crops(images, flatten=True), full.flatten(0, 1))
    assert torch.equal(s.crops(images, order="crop", flatten=True),
                       full.transpose(0, 1).flatten(0, 1))
    assert torch.equal(s.crops(images[2]), full[2:3])
    assert torch.equal(s.crops(images.numpy()), full)
    assert full.is_contiguous()


@pytest.mark.parametrize("path", PATHS)
def test_crops_at_matches_grid(path):
    s = UniformSampler()
    images = torch.from_numpy(_images((5, 3, 28, 28), seed=2))
    grid = s.crops(images)
    img = [4, 0, 0, 2, 4, 1, 3, 3]
    crop = [24, 0, 24, 7, 3, 12, 12, 0]  # unsorted, repeats allowed
    picked = s.crops_at(images, img, crop, path=path)
    torch.testing.assert_close(picked, grid[img, crop], rtol=0, atol=1e-3)
    assert s.crops_at(images, [], []).shape == (0, 3, 28, 28)


def _ops(fn):
    """The aten calls ``fn`` makes (on a GPU, each is a kernel launch or a view)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.calls


def test_crops_at_calls_do_not_grow_with_the_positions():
    """A trainer draws k random positions per image each step: rendering them must not cost
    one pass per distinct position (25 of them cost 25 times the launches before)."""
    s = UniformSampler()
    images = torch.from_numpy(_images((40, 3, 32, 32), seed=5))
    s.crops_at(images, [0], [0])  # the resize weights are cached on the first call
    one = _ops(lambda: s.crops_at(images, list(range(40)), [7] * 40))
    every = _ops(lambda: s.crops_at(images, list(range(40)), [i % 25 for i in range(40)]))
    assert every == one


def test_crops_at_in_chunks_equals_one_pass(monkeypatch):
    """The temporaries' bound splits the pairs into chunks; the crops do not change."""
    import ladd_format.sampler as sampler

    s = UniformSampler()
    images = torch.from_numpy(_images((6, 3, 28, 28), seed=9))
    img, crop = [5, 0, 3, 3, 1, 2, 4], [0, 24, 7, 8, 12, 12, 3]
    whole = s.crops_at(images, img, crop, size=(40, 36))
    monkeypatch.setattr(sampler, "_PAIR_ELEMENTS", 1)  # one pair a chunk
    assert torch.equal(s.crops_at(images, img, crop, size=(40, 36)), whole)
    monkeypatch.setattr(sampler, "_PAIR_ELEMENTS", 3 * 18 * (3 * 18 + 40) * 3)  # three pairs a chunk
    assert torch.equal(s.crops_at(images, img, crop, size=(40, 36)), whole)


def test_pillow_agrees():
    """Pillow's crop().resize(BILINEAR) has the same geometry and weights; it differs only by
    rounding its first (horizontal) pass to uint8, so it matches that two-pass model exactly
    at sizes with dyadic weights, and the exact crops within 1 everywhere."""
    s = UniformSampler()
    for size in (28, 32, 128):
        image = _images((3, size, size), seed=size)[0:3]
        pil = Image.fromarray(image.transpose(1, 2, 0))
        ours = s.crops(torch.from_numpy(image))[0].numpy()
        for j, (top, left, ch, cw) in enumerate(s.boxes(size, size)):
            got = np.asarray(pil.crop((left, top, left + cw, top + ch))
                             .resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
            assert np.abs(got - ours[j]).max() <= 1.0 + 1e-3
            if size % 32 == 0:
                patch = image[:, top:top + ch, left:left + cw].astype(np.float64)
                first = np.floor(make_crops._resize_axis(patch, size, 2) + 0.5)
                model = np.floor(make_crops._resize_axis(first, size, 1) + 0.5)
                assert np.array_equal(got, model)


@given(h=st.integers(1, 40), w=st.integers(1, 40), n=st.integers(1, 6),
       ratio=st.floats(0.1, 1.0), channels=st.sampled_from([1, 3]), seed=st.integers(0, 99))
def test_random_sizes_match_reference(h, w, n, ratio, channels, seed):
    if min(h, w) < n:
        return
    image = _images((channels, h, w), seed=seed)
    ref = reference_crops(image, n, ratio)
    s = UniformSampler(n, ratio)
    for path in PATHS:
        out = s.crops(torch.from_numpy(image), path=path)[0].double().numpy()
        np.testing.assert_allclose(out, ref, rtol=0, atol=255 * 1e-5)


# -- output size (a labeler's input size) -----------------------------------------------------

def _reference_sized(image, n, ratio, size):
    """float64 [n*n, C, H_out, W_out]: SPEC 6.2's integer form with L the output side,
    the crop boxes from make_crops (spec formulas); written here, not shared with the library."""
    x = np.asarray(image, dtype=np.float64)
    _, h, w = x.shape

    def matrix(out, c):
        m = np.zeros((out, c))
        for d in range(out):
            q = max((2 * d + 1) * c - out, 0)
            i0 = q // (2 * out)
            f = (q - 2 * out * i0) / (2 * out)
            m[d, i0] += 1 - f
            m[d, min(i0 + 1, c - 1)] += f
        return m

    crops = []
    for top, left, ch, cw in make_crops.reference_boxes(h, w, n, ratio):
        patch = x[:, top:top + ch, left:left + cw]
        crops.append(matrix(size[0], ch) @ patch @ matrix(size[1], cw).T)
    return np.stack(crops)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("h, w, c, n, ratio, size", [
    (32, 32, 3, 5, 0.625, (224, 224)),   # a 224 px teacher on 32 px images: crop 20 -> 224
    (64, 64, 3, 5, 0.625, (56, 56)),     # smaller than the image, still enlarging the 40 px crop
    (128, 128, 3, 5, 0.625, (56, 56)),   # shrinking the 80 px crop: plain bilinear, no averaging
    (28, 28, 1, 5, 0.625, (32, 32)),
    (32, 32, 3, 5, 0.625, (224, 160)),   # non-square output
    (37, 53, 3, 4, 0.55, (20, 90)),      # non-square both: shrinks height, enlarges width
    (9, 7, 1, 1, 0.7, (3, 11)),
    (20, 20, 3, 2, 0.5, (1, 1)),
])
def test_sized_crops_match_float64_reference(device, path, h, w, c, n, ratio, size):
    images = _images((2, c, h, w), seed=h + w)
    ref = np.stack([_reference_sized(im, n, ratio, size) for im in images])
    s = UniformSampler(n, ratio)
    x = torch.from_numpy(images).to(device)
    out = s.crops(x, size=size, path=path)
    assert out.shape == (2, n * n, c, *size) and out.dtype == torch.float32
    assert out.device.type == device and out.is_contiguous()
    np.testing.assert_allclose(out.cpu().double().numpy() / 255, ref / 255, rtol=0, atol=1e-5)
    crop_major = s.crops(x, size=size, path=path, order="crop", flatten=True)
    assert crop_major.shape == (n * n * 2, c, *size)
    torch.testing.assert_close(crop_major.view(n * n, 2, c, *size).transpose(0, 1), out,
                               rtol=0, atol=1e-3)


def test_sized_crops_float_input_and_float64():
    rng = np.random.default_rng(8)
    images = ((rng.random((2, 3, 40, 24)) - 0.4) / 0.2).astype(np.float32)
    ref = np.stack([_reference_sized(im, 5, 0.625, (64, 48)) for im in images])
    for path in PATHS:
        out = UniformSampler().crops(torch.from_numpy(images), size=(64, 48), path=path)
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-5)
    out64 = UniformSampler().crops(torch.from_numpy(images), size=(64, 48), dtype=torch.float64)
    np.testing.assert_allclose(out64.numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 1, 28, 36), (2, 3, 37, 53)])
def test_size_none_is_the_image_size(path, shape):
    images = torch.from_numpy(_images(shape, seed=4))
    s = UniformSampler()
    default = s.crops(images, path=path)
    assert torch.equal(default, s.crops(images, size=shape[2:], path=path))
    assert torch.equal(default, s.crops(images, size=np.array(shape[2:]), path=path))
    picks = s.crops_at(images, [1, 0], [3, 3], path=path)
    assert torch.equal(picks, s.crops_at(images, [1, 0], [3, 3], size=shape[2:], path=path))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size", [(224, 224), (56, 40), (17, 9)])
def test_crops_at_with_size_matches_grid(path, size):
    s = UniformSampler()
    images = torch.from_numpy(_images((5, 3, 64, 64), seed=6))
    grid = s.crops(images, size=size, path=path)
    img = [4, 0, 0, 2, 4, 1, 3, 3]
    crop = [24, 0, 24, 7, 3, 12, 12, 0]
    picked = s.crops_at(images, img, crop, size=size, path=path)
    assert picked.shape == (8, 3, *size)
    torch.testing.assert_close(picked, grid[img, crop], rtol=0, atol=1e-3)
    assert s.crops_at(images, [], [], size=size).shape == (0, 3, *size)


@pytest.mark.parametrize("size", [(0, 5), (5, -1), (3,), (1, 2, 3), "ab", 32, (2.5, 3), (True, 3),
                                  ("8", 8)])
def test_bad_size(size):
    images = torch.zeros(1, 3, 8, 8)
    with pytest.raises(InvalidInputError, match="size must"):
        UniformSampler().crops(images, size=size)
    with pytest.raises(InvalidInputError, match="size must"):
        UniformSampler().crops_at(images, [0], [0], size=size)


# -- golden vectors -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.stem for p in VECTORS.glob("*.npz")))
def test_golden_vectors(name):
    v = np.load(VECTORS / f"{name}.npz")
    s = UniformSampler(int(v["n"]), float(v["ratio"]))
    _, h, w = v["image"].shape
    assert s.boxes(h, w) == [tuple(b) for b in v["boxes"].tolist()]
    atol = 1e-5 * (255 if v["image"].dtype == np.uint8 else 1)
    for path in PATHS:
        out = s.crops(torch.from_numpy(v["image"]), path=path)[0].numpy()
        np.testing.assert_allclose(out, v["crops"], rtol=0, atol=atol)


def test_golden_vectors_present_and_generator_refuses_overwrite(tmp_path, capsys):
    assert len(list(VECTORS.glob("*.npz"))) == 5
    assert make_crops.main(["--out", str(tmp_path)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert make_crops.main(["--out", str(tmp_path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    for p in tmp_path.iterdir():  # the committed vectors are what the generator makes
        stored, fresh = np.load(VECTORS / p.name), np.load(p)
        for key in fresh.files:
            np.testing.assert_array_equal(stored[key], fresh[key])


# -- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("n, ratio, message", [
    (0, 0.625, "n must be"), (-1, 0.5, "n must be"), (2.5, 0.5, "n must be"),
    (True, 0.5, "n must be"), ("5", 0.5, "n must be"), (5, 0.0, "ratio"), (5, 1.5, "ratio"),
    (5, float("nan"), "ratio"), (5, "0.5", "ratio"), (5, -0.2, "ratio"),
])
def test_bad_parameters(n, ratio, message):
    with pytest.raises(InvalidInputError, match=message):
        UniformSampler(n, ratio)


@pytest.mark.parametrize("images, kwargs, message", [
    (torch.zeros(2, 3, 4, 8, dtype=torch.uint8), {}, "smaller than n"),
    (torch.zeros(2, 3, 8, 4, dtype=torch.uint8), {}, "smaller than n"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.int32), {}, "uint8 or floating"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.bool), {}, "uint8 or floating"),
    (torch.zeros(2, 2, 8, 8), {}, "1 or 3 channels"),
    (torch.zeros(2, 8, 8, 3), {}, "1 or 3 channels"),
    (torch.zeros(8, 8), {}, "got shape"),
    (torch.zeros(1, 2, 3, 8, 8), {}, "got shape"),
    ([[1, 2]], {}, "torch.Tensor or numpy"),
    (torch.zeros(1, 3, 8, 8), {"dtype": torch.int64}, "output dtype"),
    (torch.zeros(1, 3, 8, 8), {"path": "fast"}, "path must be"),
    (torch.zeros(1, 3, 8, 8), {"order": "random"}, "order must be"),
])
def test_bad_images(images, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        UniformSampler().crops(images, **kwargs)


@pytest.mark.parametrize("img, crop, message", [
    ([0, 1], [0], "differ in length"), ([2], [0], "image_index out of range"),
    ([0], [25], "crop_index out of range"), ([0], [-1], "crop_index out of range"),
    ([0.5], [0], "integers"), ([[0]], [[0]], "1-D"),
])
def test_bad_crop_indices(img, crop, message):
    with pytest.raises(InvalidInputError, match=message):
        UniformSampler().crops_at(torch.zeros(2, 1, 8, 8), img, crop)
