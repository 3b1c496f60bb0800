"""Labeler training options: crop augmentation (so the labeler learns to label crops) and
bfloat16 autocast; both reproducible, recorded in the config and respected by reuse."""

from __future__ import annotations

import pytest
import torch

from ladd_format.errors import InvalidInputError
from ladd_format.labeler import CROP_SCALES, _RandomCrops, load_labeler, train_labeler
from ladd_format.sampler import UniformSampler

from _helpers import synthetic_source

TINY = {"width": 4, "epochs": 1, "batch_size": 32, "progress": False}


@pytest.fixture(scope="module")
def source():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield synthetic_source(64, 10)
    torch.set_num_threads(threads)


def _weights(labeler):
    return labeler.model.state_dict()


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_none_is_the_default_and_unchanged(source):
    default = train_labeler(source, **TINY)
    explicit = train_labeler(source, augmentation="none", amp=True, cpu_amp=False, **TINY)
    assert _same(_weights(default), _weights(explicit))
    assert default.config.training["augmentation"] == "none" and default.config.training["amp"] is False


@pytest.mark.parametrize("augmentation", ["crops", "crops+flip"])
def test_crops_are_reproducible_and_differ_from_none(source, augmentation):
    first = train_labeler(source, augmentation=augmentation, **TINY)
    again = train_labeler(source, augmentation=augmentation, **TINY)
    other_seed = train_labeler(source, augmentation=augmentation, seed=1, **TINY)
    plain = train_labeler(source, **TINY)
    assert _same(_weights(first), _weights(again))
    assert not _same(_weights(first), _weights(other_seed))
    assert not _same(_weights(first), _weights(plain))


def test_crops_are_recorded_and_block_reuse(source, tmp_path):
    plain = train_labeler(source, out_dir=tmp_path, **TINY)
    crops = train_labeler(source, out_dir=tmp_path, augmentation="crops+flip", **TINY)
    assert not crops.reused and crops.checkpoint_sha256 != plain.checkpoint_sha256
    recorded = crops.provenance()["training"]["augmentation"]
    assert recorded == {"name": "crops+flip", "scales": list(CROP_SCALES), "grid": 5, "flip": True}
    assert load_labeler(tmp_path / "epoch_01.pt").config == crops.config  # survives the JSON round trip
    assert train_labeler(source, out_dir=tmp_path, augmentation="crops+flip", **TINY).reused
    assert not train_labeler(source, out_dir=tmp_path, augmentation="crops", **TINY).reused
    assert not train_labeler(source, out_dir=tmp_path, **TINY).reused


@pytest.mark.parametrize("kwargs,match", [({"augmentation": "flip"}, "flip"), ({"augmentation": 1}, "augmentation"),
                                          ({"amp": "yes"}, "amp"), ({"cpu_amp": 1}, "cpu_amp")])
def test_bad_values_are_refused_before_training(source, tmp_path, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        train_labeler(source, out_dir=tmp_path / "lab", **kwargs, **TINY)
    assert not (tmp_path / "lab").exists()


def test_amp_on_a_cpu_is_opt_in(source):
    plain = train_labeler(source, device="cpu", **TINY)
    bf16 = train_labeler(source, device="cpu", cpu_amp=True, **TINY)
    off = train_labeler(source, device="cpu", amp=False, cpu_amp=True, **TINY)
    assert (plain.config.training["amp"], bf16.config.training["amp"], off.config.training["amp"]) == (False, True, False)
    assert not _same(_weights(plain), _weights(bf16)) and _same(_weights(plain), _weights(off))


def test_random_crops_are_the_samplers_crops():
    """Every augmented image is one crop of the sampler's grid at one of the scales, resized
    by the sampler's one crop function."""
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    out = _RandomCrops(flip=False)(images, torch.Generator().manual_seed(0))
    candidates = torch.stack([UniformSampler(5, s).crops(images) for s in CROP_SCALES], 1)  # [B, scales, 25, C, H, W]
    for image, crop in zip(candidates, out):
        assert any(torch.equal(crop, c) for c in image.flatten(0, 1))
