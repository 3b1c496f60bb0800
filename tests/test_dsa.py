"""DSA: each family against a transcription of the DC/DSA code base, fed the same draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ladd_format.dsa import FAMILIES, STRATEGY, DSAParams, apply_dsa, apply_dsa_many, dsa, sample_dsa
from ladd_format.errors import InvalidInputError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _reference(x, family, v):
    """The DSA functions (utils.py of the DC/DSA code), with the random draws passed in."""
    if family == "color":
        x = x + (v["brightness"].view(-1, 1, 1, 1) - 0.5) * 1.0
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (v["saturation"].view(-1, 1, 1, 1) * 2.0) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * (v["contrast"].view(-1, 1, 1, 1) + 0.5) + m
    if family == "crop":
        tx, ty = v["shift_y"].view(-1, 1, 1), v["shift_x"].view(-1, 1, 1)
        gb, gx, gy = torch.meshgrid(torch.arange(x.size(0)), torch.arange(x.size(2)),
                                    torch.arange(x.size(3)), indexing="ij")
        gx = torch.clamp(gx + tx + 1, 0, x.size(2) + 1)
        gy = torch.clamp(gy + ty + 1, 0, x.size(3) + 1)
        x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
        return x_pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)
    if family == "cutout":
        size = int(x.size(2) * 0.5 + 0.5), int(x.size(3) * 0.5 + 0.5)
        ox, oy = v["centre_y"].view(-1, 1, 1), v["centre_x"].view(-1, 1, 1)
        gb, gx, gy = torch.meshgrid(torch.arange(x.size(0)), torch.arange(size[0]),
                                    torch.arange(size[1]), indexing="ij")
        gx = torch.clamp(gx + ox - size[0] // 2, min=0, max=x.size(2) - 1)
        gy = torch.clamp(gy + oy - size[1] // 2, min=0, max=x.size(3) - 1)
        mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
        mask[gb, gx, gy] = 0
        return x * mask.unsqueeze(1)
    if family == "flip":
        return torch.where(v["flip"].view(-1, 1, 1, 1) < 0.5, x.flip(3), x)
    if family == "scale":
        theta = [[[v["sx"][i], 0, 0], [0, v["sy"][i], 0]] for i in range(x.shape[0])]
    else:
        a = v["angle"]
        theta = [[[torch.cos(a[i]), torch.sin(-a[i]), 0], [torch.sin(a[i]), torch.cos(a[i]), 0]]
                 for i in range(x.shape[0])]
    grid = F.affine_grid(torch.tensor(theta, dtype=torch.float), x.shape, align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _x(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(32, 32), (28, 20)])
def test_family_matches_dsa_code(family, channels, size):
    x = _x((16, channels, *size), seed=channels)
    g = torch.Generator().manual_seed(len(family))
    params = sample_dsa(16, *size, strategy=family, generator=g)
    assert params.family == family and len(params) == 16
    out = apply_dsa(x, params)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, _reference(x, family, params.values), rtol=1e-5, atol=1e-5)
    assert not torch.equal(out, x)


def test_parameter_ranges():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        p = sample_dsa(64, 32, 20, generator=g)
        seen.add(p.family)
        v = p.values
        if p.family == "crop":  # int(32 * 0.125 + 0.5) = 4, int(20 * 0.125 + 0.5) = 3
            assert v["shift_y"].abs().max() <= 4 and v["shift_x"].abs().max() <= 3
        elif p.family == "cutout":  # cutout sides 16 (even) and 10 (even): centres 0..L
            assert 0 <= v["centre_y"].min() and v["centre_y"].max() <= 32
            assert 0 <= v["centre_x"].min() and v["centre_x"].max() <= 20
        elif p.family == "scale":
            for t in (v["sx"], v["sy"]):
                assert 1 / 1.2 <= t.min() and t.max() <= 1.2
        elif p.family == "rotate":
            assert v["angle"].abs().max() <= math.radians(15) + 1e-7
        elif p.family in ("color", "flip"):
            assert all(0 <= t.min() and t.max() < 1 for t in v.values())
    assert seen == set(FAMILIES)  # one family per draw, all reachable


def test_seeded_and_shared_draws():
    x = _x((8, 3, 16, 16), seed=1)
    y = _x((8, 3, 16, 16), seed=2)
    for seed in range(6):
        a = dsa(x, generator=torch.Generator().manual_seed(seed))
        b = dsa(x, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)
        ax, ay = dsa(x, y, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ax, a)  # the same draw for every tensor handed over together
        p = sample_dsa(8, 16, 16, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ay, apply_dsa(y, p))


def test_select_gives_crops_their_image_parameters():
    images = _x((4, 3, 16, 16), seed=3)
    g = torch.Generator().manual_seed(4)
    while (p := sample_dsa(4, 16, 16, generator=g)).family != "rotate":
        pass
    rows = torch.arange(4).repeat_interleave(3)
    out = apply_dsa(images[rows], p.select(rows))
    torch.testing.assert_close(out, apply_dsa(images, p)[rows])
    assert len(p.select(slice(1, 3))) == 2


def test_bfloat16_and_large_affine_batches():
    x = _x((3, 3, 16, 16)).to(torch.bfloat16)
    for family in FAMILIES:
        out = dsa(x, strategy=family, generator=torch.Generator().manual_seed(0))
        assert out.dtype == torch.bfloat16 and out.shape == x.shape
    big = _x((300, 1, 256, 256))  # more than one affine-grid chunk
    p = sample_dsa(300, 256, 256, strategy="rotate", generator=torch.Generator().manual_seed(1))
    tail = apply_dsa(big[-5:], p.select(slice(-5, None)))
    torch.testing.assert_close(apply_dsa(big, p)[-5:], tail)


@pytest.mark.parametrize("strategy", ["", "color_blur", "Color", None])
def test_bad_strategy(strategy):
    with pytest.raises(InvalidInputError, match="strategy"):
        sample_dsa(4, 8, 8, strategy=strategy)


def test_bad_tensors():
    p = sample_dsa(4, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InvalidInputError, match="drawn for 4"):
        apply_dsa(torch.zeros(5, 3, 8, 8), p)
    with pytest.raises(InvalidInputError, match="drawn for 4"):
        apply_dsa(torch.zeros(4, 3, 8, 9), p)
    with pytest.raises(InvalidInputError, match="float"):
        apply_dsa(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), p)
    with pytest.raises(InvalidInputError, match="N, C, H, W"):
        dsa(torch.zeros(3, 8, 8))
    with pytest.raises(InvalidInputError, match="non-empty"):
        sample_dsa(0, 8, 8)
    assert isinstance(p, DSAParams) and STRATEGY.split("_") == list(FAMILIES)


@CUDA
def test_cuda_matches_cpu():
    x = _x((32, 3, 32, 32), seed=5)
    for seed in range(12):
        cpu = dsa(x, generator=torch.Generator().manual_seed(seed))
        gpu = dsa(x.cuda(), generator=torch.Generator().manual_seed(seed)).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


def test_dsa_across_seeds_equals_dsa_per_seed():
    """One call per family for many batches (one per seed) gives each batch its own draw."""
    xs = [torch.randn(4 + s % 3, 3, 16, 16) for s in range(13)]
    draws = [sample_dsa(len(x), 16, 16, generator=torch.Generator().manual_seed(s)) for s, x in enumerate(xs)]
    assert len({p.family for p in draws}) < len(draws)  # some family is applied to several batches at once
    for x, p, got in zip(xs, draws, apply_dsa_many(xs, draws)):
        torch.testing.assert_close(got, apply_dsa(x, p), rtol=0, atol=1e-6)
    with pytest.raises(InvalidInputError):
        apply_dsa_many(xs, draws[:2])
