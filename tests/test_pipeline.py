"""Labeler, label augmentation, trainer, demo and pictures, end to end on small data.

Real Fashion-MNIST is used when installed (a small slice of it); otherwise a synthetic
source with the same shapes, so the suite passes anywhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ladd_format
from ladd_format import sources
from ladd_format.cli import main as cli
from ladd_format.demo import DemoSettings, format_table, run_demo
from ladd_format.labeler import augment, label_batches, label_crops, load_labeler, train_labeler
from ladd_format.sampler import UniformSampler
from ladd_format.show import render
from ladd_format.train import MODES, cross_architecture, evaluate, ladd_loss, train

from _helpers import synthetic_source, write_idx_folder


@pytest.fixture(scope="module")
def source():
    """600 train / 300 test images, 28x28x1, 10 classes: a Fashion-MNIST slice when present."""
    try:
        full = sources.fashion_mnist()
        rng = np.random.default_rng(0)
        tr = np.sort(rng.permutation(len(full.train_labels))[:600])
        te = np.arange(300)
        return sources.from_arrays("fashion-mnist-slice", full.train_images[tr], full.train_labels[tr],
                                   full.test_images[te], full.test_labels[te], class_names=full.class_names,
                                   mean=full.mean, std=full.std)
    except sources.SourceNotFoundError:
        return synthetic_source(600, 300)


@pytest.fixture(scope="module")
def labeler(source, tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("labeler")
    return train_labeler(source, width=16, epochs=2, out_dir=out, progress=False), out


def test_eq5_loss_against_hand_computation():
    full = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 2])
    crops = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [3.0, -1.0, 0.0], [1.0, 1.0, 2.0]])
    dense = torch.tensor([[0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3], [0.9, 0.05, 0.05], [0.0, 0.5, 0.5]])

    def log_softmax(row):
        z = [float(v) for v in row]
        top = max(z)
        lse = top + np.log(sum(np.exp(v - top) for v in z))
        return [v - lse for v in z]

    hard = -(log_softmax(full[0])[0] + log_softmax(full[1])[2]) / 2
    soft = [-sum(float(p) * q for p, q in zip(dense[r], log_softmax(crops[r]))) for r in range(4)]
    got = ladd_loss(full, labels, crops, dense, crop_weight=0.5)
    assert got.item() == pytest.approx(hard + 0.5 * np.mean(soft), rel=1e-6)
    got_sum = ladd_loss(full, labels, crops, dense, crop_reduction="sum", crops_per_image=2)
    assert got_sum.item() == pytest.approx(hard + 2 * np.mean(soft), rel=1e-6)
    assert ladd_loss(None, None, crops, dense).item() == pytest.approx(np.mean(soft), rel=1e-6)
    assert ladd_loss(full, labels, None, None).item() == pytest.approx(hard, rel=1e-6)
    soft_targets = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert ladd_loss(full, soft_targets, None, None).item() == pytest.approx(
        F.cross_entropy(full, soft_targets).item())
    with pytest.raises(ladd_format.InvalidInputError):
        ladd_loss(full, labels, crops, dense, crop_reduction="max")


def test_labeler_checkpoints_reload_exactly(labeler, source):
    lab, out = labeler
    assert sorted(p.name for p in out.glob("*.pt")) == ["epoch_01.pt", "epoch_02.pt"]
    again = load_labeler(out / "epoch_02.pt", device="cpu")
    assert again.checkpoint_sha256 == lab.checkpoint_sha256 and again.epochs == 2
    x = torch.from_numpy(source.test_images[:8]).permute(0, 3, 1, 2)
    assert torch.allclose(again.logits(x), lab.logits(x), atol=1e-4)  # lab may sit on a GPU
    if lab.device.type == "cpu":
        assert torch.equal(again.logits(x), lab.logits(x))
    prov = lab.provenance()
    assert prov["architecture"] == "convnet" and prov["training"]["lr"] == 0.01
    assert prov["training"]["batch_size"] == 256 and prov["source_dataset"] == source.name
    with pytest.raises(ladd_format.InvalidInputError):
        load_labeler(out / "missing.pt")


def test_label_crops_is_algorithm_1(labeler, source):
    lab, _ = labeler
    images = source.train_images[:3]
    dense = label_crops(images, lab, temperature=2.0, progress=False)
    assert dense.shape == (3, 25, 10) and np.allclose(dense.sum(-1), 1, atol=1e-5)
    crops = UniformSampler().crops(torch.from_numpy(images).permute(0, 3, 1, 2))[1, 7:8]
    expected = torch.softmax(lab.logits(crops) / 2.0, -1).numpy()
    assert np.allclose(dense[1, 7], expected[0], atol=1e-5)
    assert np.array_equal(dense, label_crops(images, lab, temperature=2.0, progress=False))
    with pytest.raises(ladd_format.InvalidInputError, match="channel"):
        label_crops(np.zeros((1, 32, 32, 3), np.uint8), lab, progress=False)
    parts = [d for _, d in label_batches(images, lab, temperature=2.0, batch_size=25, progress=False)]
    assert len(parts) == 3 and np.array_equal(np.concatenate(parts), dense)  # one image per pass


def test_end_to_end_training_lowers_the_loss(labeler, source, tmp_path):
    lab, _ = labeler
    images, labels, index = sources.random_real(source, ipc=3, seed=1)
    path = augment(tmp_path / "e2e.ladd", images, labels, lab, distillation={"method": "random-real", "ipc": 3},
                   class_names=list(source.class_names), progress=False)
    with ladd_format.open(path) as ds:
        m = ds.manifest
        assert m.labeler.checkpoint_sha256 == lab.checkpoint_sha256 and m.labeler.epochs == 2
        assert list(m.image.mean) == list(source.mean) and m.distillation.method == "random-real"
        for mode in MODES:
            result = train(ds, mode=mode, width=16, epochs=6, lr=0.01, crops_per_image=4, progress=False)
            assert result.losses[-1] < result.losses[0], (mode, result.losses)
            acc = evaluate(result.model, source.test_images, source.test_labels, m.image.mean, m.image.std)
            assert 0.0 <= acc <= 1.0
        rows = cross_architecture(ds, source.test_images[:50], source.test_labels[:50], models=("convnet",),
                                  seeds=2, epochs=2, width=16, progress=False)
        assert rows[0]["model"] == "convnet" and len(rows[0]["accuracies"]) == 2
    with pytest.raises(ladd_format.InvalidInputError, match="mode"):
        train(path, mode="distill")


def test_training_is_reproducible(labeler, source, tmp_path):
    lab, _ = labeler
    images, labels, _ = sources.random_real(source, ipc=2, seed=0)
    path = augment(tmp_path / "r.ladd", images, labels, lab, progress=False)
    a = train(path, width=8, epochs=2, crops_per_image=3, seed=5, progress=False)
    b = train(path, width=8, epochs=2, crops_per_image=3, seed=5, progress=False)
    assert a.losses == b.losses


def test_demo_runs_and_its_container_validates(source, tmp_path):
    settings = DemoSettings.from_preset("cpu", ipc=2, labeler={"width": 8, "epochs": 1, "train_images": 200},
                                        train={"width": 8, "epochs": 2})
    report = run_demo(tmp_path / "demo", settings, source=source, progress=False)
    assert [r["method"] for r in report["rows"]] == ["baseline", "baseline++", "LADD"]
    assert [r["ipc"] for r in report["rows"]] == [2, 3, 2]
    base, plus, ladd = report["rows"]
    assert base["overhead_percent"] == 0 and plus["bytes"] > base["bytes"] and ladd["bytes"] > base["bytes"]
    assert json.loads((tmp_path / "demo" / "results.json").read_text())["rows"] == report["rows"]
    phases = report["phase_seconds"]  # where the wall time went: every phase named, none negative, they add up
    assert list(phases) == ["labeler", "containers", "baseline", "baseline++", "LADD"]
    assert all(v >= 0 for v in phases.values()) and [r["seconds"] for r in report["rows"]] == list(phases.values())[2:]
    assert sum(phases.values()) == pytest.approx(report["seconds"])
    assert cli(["validate", report["container"]]) == 0
    with ladd_format.open(report["container"]) as ds:
        assert ds.ipc == 2 and ds.manifest.distillation.method == "random-real"
    table = format_table(report)
    for name in ("baseline ", "baseline++", "LADD"):
        assert name in table
    bf16 = settings.train["cpu_amp"]  # where the CPU trains in bfloat16 (AMX units), it tests in it too
    assert {r["test_precision"] for r in report["rows"]} == {"bfloat16 autocast" if bf16 else "float32"}
    assert ("tested in bfloat16 autocast, as the models trained." in table) == bf16


def test_demo_on_dm_images_says_distilled(source, tmp_path):
    """--images dm: both sets distilled by DM (not nested), recorded as such, the table as usual."""
    settings = DemoSettings.from_preset("cpu", ipc=1, seeds=1, images="dm", dm_iterations=2,
                                        labeler={"width": 8, "epochs": 1, "train_images": 200},
                                        train={"width": 8, "epochs": 1})
    assert "images dm (2 iterations)" in settings.describe()
    report = run_demo(tmp_path / "demo", settings, source=source, progress=False)
    assert [r["ipc"] for r in report["rows"]] == [1, 2, 1]
    with ladd_format.open(report["container"]) as ds:
        assert ds.manifest.distillation.method == "dm" and ds.manifest.distillation.details["iterations"] == 2
    for bad in ({"images": "random"}, {"dm_iterations": -1}, {"dm_iterations": 1.5}):
        with pytest.raises(ladd_format.InvalidInputError):
            DemoSettings.from_preset("cpu", **bad)


def test_show_draws_image_and_crops(labeler, source, tmp_path):
    lab, _ = labeler
    images, labels, _ = sources.random_real(source, ipc=1, seed=0)
    path = augment(tmp_path / "s.ladd", images, labels, lab, class_names=list(source.class_names), progress=False)
    with ladd_format.open(path) as ds:
        picture = render(ds, 3)
    assert picture.width > 5 * 112 and picture.height >= 5 * 112
    out = tmp_path / "show.png"
    assert cli(["show", str(path), "--index", "3", "-o", str(out)]) == 0
    assert Image.open(out).size == picture.size
    with ladd_format.open(path) as ds, pytest.raises(IndexError):
        render(ds, 10)


def test_cli_pipeline(tmp_path, capsys):
    folder = write_idx_folder(tmp_path / "fm", 60, 20)
    assert cli(["train-labeler", "--source", str(folder), "--source-name", "fake-idx", "--out", str(tmp_path / "lab"), "--epochs", "1",
                "--width", "8"]) == 0
    out = tmp_path / "a.ladd"
    assert cli(["augment", str(tmp_path / "lab" / "epoch_01.pt"), str(out), "--random-real", str(folder), "--source-name", "fake-idx",
                "--ipc", "2", "--encoding", "float16"]) == 0
    assert cli(["augment", str(tmp_path / "lab" / "epoch_01.pt"), str(tmp_path / "b.ladd"),
                "--from", str(out), "--temperature", "3"]) == 0
    with ladd_format.open(tmp_path / "b.ladd") as ds:
        assert ds.manifest.dense_labels.temperature == 3 and ds.manifest.distillation.ipc == 2
    capsys.readouterr()
    assert cli(["train", str(out), "--test-source", str(folder), "--source-name", "fake-idx", "--epochs", "2", "--width", "8",
                "--model", "convnet,alexnet", "--seeds", "2", "--ipc", "1", "--crops", "3"]) == 0
    text = capsys.readouterr().out
    assert "convnet" in text and "alexnet" in text and "+/-" in text
