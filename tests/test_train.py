"""Trainer and labeler details a user meets first: presets, micro-batches, test-set checks,
labeler checkpoints (atomic, digest-checked, reused)."""

from __future__ import annotations

import fractions
import json

import numpy as np
import pytest
import torch

import ladd_format
from ladd_format import sources, train as train_module
from ladd_format.errors import IntegrityError, InvalidInputError
from ladd_format.labeler import LabelerError, augment, load_labeler, train_labeler
from ladd_format.presets import PRESETS, get_preset
from ladd_format.train import cross_architecture, train

from _helpers import synthetic_source


@pytest.fixture(scope="module")
def source():
    return synthetic_source(200, 100)


@pytest.fixture(scope="module")
def container(source, tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("train")
    lab = train_labeler(source, width=8, epochs=1, out_dir=out / "lab", progress=False)
    images, labels, _ = sources.random_real(source, ipc=2, seed=0)
    return augment(out / "c.ladd", images, labels, lab, progress=False)


def test_micro_batches_give_the_same_update(container):
    whole = train(container, width=8, epochs=2, crops_per_image=3, batch_size=20, max_pass_inputs=10_000,
                  progress=False)
    split = train(container, width=8, epochs=2, crops_per_image=3, batch_size=20, max_pass_inputs=9,
                  progress=False)  # 2 images (8 inputs) per pass: 10 passes a step
    assert whole.settings["max_pass_inputs"] == 10_000 and split.settings["max_pass_inputs"] == 9
    np.testing.assert_allclose(split.losses, whole.losses, rtol=1e-5)
    for a, b in zip(whole.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["crops-only", "soft"])
def test_micro_batches_in_other_modes(container, mode):
    a = train(container, mode=mode, width=8, epochs=1, crops_per_image="all", max_pass_inputs=10_000, progress=False)
    b = train(container, mode=mode, width=8, epochs=1, crops_per_image="all", max_pass_inputs=30, progress=False)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)


def test_default_pass_size_bounds_activations(monkeypatch):
    """On a CPU the first activation map of a pass (width x H x W float32 per input) stays under 16 MiB."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(train_module, "keeps_freed_memory", lambda: False)  # glibc's defaults
    assert train_module.pass_inputs((28, 28), 64, cpu) == 64 == train_module.CPU_TENSOR_BYTES // (4 * 64 * 32 * 32)
    assert train_module.pass_inputs((28, 28), 128, cpu) == 32 == train_module.pass_inputs((28, 28), None, cpu)
    assert train_module.pass_inputs((128, 128), 128, cpu) == 2 and train_module.pass_inputs((128, 128), 512, cpu) == 1


def test_kept_freed_memory_allows_larger_cpu_passes(monkeypatch):
    """Once keep_freed_memory took effect nothing is faulted in again, so a CPU pass may hold a
    256 MiB first map: the demo's whole LADD step (600 inputs at width 64) in one pass."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(train_module, "keeps_freed_memory", lambda: True)
    assert train_module.pass_inputs((28, 28), 64, cpu) == 1024 == train_module.CPU_TENSOR_BYTES_KEPT // (4 * 64 * 32 * 32)
    assert train_module.pass_inputs((224, 224), 128, cpu) == 10
    monkeypatch.setattr(train_module, "keeps_freed_memory", lambda: False)
    assert train_module.pass_inputs((28, 28), 64, cpu) == 64


def test_presets_fill_what_is_not_given(container):
    r = train(container, preset="cpu", epochs=1, progress=False)
    assert (r.settings["width"], r.settings["crops_per_image"], r.settings["epochs"]) == (64, 5, 1)
    r = train(container, preset="cpu", epochs=1, width=8, crops_per_image=2, progress=False)
    assert (r.settings["width"], r.settings["crops_per_image"]) == (8, 2)
    r = train(container, model="alexnet", preset="cpu", epochs=1, progress=False)
    assert r.settings["width"] is None  # a preset's width is a ConvNet knob
    assert PRESETS["paper"].train["epochs"] == 1000 and get_preset("cpu") is PRESETS["cpu"]
    with pytest.raises(InvalidInputError, match="unknown preset"):
        train(container, preset="gpu")


@pytest.mark.parametrize("kwargs,match", [({"crops_per_image": 0}, "no crops"), ({"epochs": 0}, "epochs"),
                                          ({"lr": float("nan")}, "lr"), ({"crops_per_image": 26}, "crops_per_image"),
                                          ({"max_pass_inputs": 0}, "max_pass_inputs"), ({"device": "tpu"}, "device")])
def test_bad_train_arguments(container, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        train(container, width=8, **{"epochs": 1, **kwargs}, progress=False)


def test_cross_architecture_checks_the_test_set_before_training(container, source, monkeypatch):
    monkeypatch.setattr(train_module, "run_seeds", lambda *a, **k: pytest.fail("trained"))
    rgb = np.zeros((5, 28, 28, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="28x28x3"):
        cross_architecture(container, rgb, np.zeros(5, np.int64))
    with pytest.raises(InvalidInputError, match="classes"):
        cross_architecture(container, source.test_images, source.test_labels + 10)
    with pytest.raises(InvalidInputError, match="seeds"):
        cross_architecture(container, source.test_images, source.test_labels, seeds=0)
    with pytest.raises(InvalidInputError, match="seeds"):
        cross_architecture(container, source.test_images, source.test_labels, seeds=[1, 1])


def test_evaluate_with_amp_runs_the_forward_under_bf16_autocast(source):
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(28 * 28, 10)

        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return self.head(x.flatten(1))

    net = Probe()
    images, labels = source.test_images[:40], source.test_labels[:40]
    plain = train_module.evaluate(net, images, labels, [0.5], [0.25], batch_size=16)
    assert seen == [False] * 3
    mixed = train_module.evaluate(net, images, labels, [0.5], [0.25], batch_size=16, amp=True)
    assert seen[3:] == [True] * 3 and 0 <= mixed <= 1 and 0 <= plain <= 1


def test_grid_units_are_spread_longest_first():
    """Units of the evaluation grid: (architecture, its seeds) when there are enough
    architectures, else (architecture, seed); the costliest first to the least loaded rank."""
    assert train_module._units(["convnet", "resnet18"], 3, 2) == [(0, [0, 1, 2]), (1, [0, 1, 2])]
    assert train_module._units(["vgg11"], 2, 2) == [(0, [0]), (0, [1])]
    models = ["convnet", "alexnet", "vgg11", "resnet18", "vit"]
    costs = [train_module.ARCHITECTURE_COST[m] * 3 for m in models]  # 3, 3, 12, 24, 12
    assert train_module._assign(costs, 2) == [[0, 3], [1, 2, 4]]  # 27 each
    assert train_module._assign(costs, 3) == [[3], [0, 2], [1, 4]]
    assert train_module._assign([1, 1], 4) == [[0], [1], [], []]


def test_distributed_arguments_are_checked(container, source, monkeypatch):
    with pytest.raises(InvalidInputError, match="parallel"):
        cross_architecture(container, source.test_images, source.test_labels, parallel="model")
    with pytest.raises(InvalidInputError, match="data_parallel"):
        train(container, data_parallel="yes", epochs=1, progress=False)
    with pytest.raises(InvalidInputError, match="eval_amp"):
        cross_architecture(container, source.test_images, source.test_labels, eval_amp="yes")
    monkeypatch.setattr(train_module, "rank_world", lambda: (0, 4))
    with pytest.raises(InvalidInputError, match="smaller than the 4 ranks"):
        train(container, batch_size=3, epochs=1, progress=False)


def test_labeler_checkpoint_is_digest_checked(source, tmp_path):
    lab = train_labeler(source, width=8, epochs=1, out_dir=tmp_path, progress=False)
    pt = tmp_path / "epoch_01.pt"
    meta = json.loads((tmp_path / "epoch_01.pt.json").read_text())
    assert meta["weights_sha256"] == lab.checkpoint_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_01.pt", "epoch_01.pt.json"]  # no temporaries
    assert load_labeler(pt).checkpoint_sha256 == lab.checkpoint_sha256
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_labeler(pt)


def test_labeler_checkpoints_that_are_not_ours_are_typed_errors(source, tmp_path):
    train_labeler(source, width=8, epochs=1, out_dir=tmp_path, progress=False)
    pt, meta_path = tmp_path / "epoch_01.pt", tmp_path / "epoch_01.pt.json"
    meta = json.loads(meta_path.read_text())
    torch.save({"weight": fractions.Fraction(1, 2)}, pt)  # a class outside the allow-list: needs unpickling
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "weights_sha256"}))
    with pytest.raises(LabelerError, match="unpickling"):
        load_labeler(pt)
    torch.save({"nothing": torch.zeros(1)}, pt)
    with pytest.raises(LabelerError, match="not weights"):
        load_labeler(pt)
    meta_path.write_text(json.dumps({"config": {"architecture": "convnet"}, "epochs": 1}))
    with pytest.raises(LabelerError, match="not a labeler description"):
        load_labeler(pt)
    meta_path.unlink()
    with pytest.raises(LabelerError, match="json"):
        load_labeler(pt)
    with pytest.raises(LabelerError, match="no such"):
        load_labeler(tmp_path / "missing.pt")


def test_finished_labeler_is_reused_only_with_the_same_settings(source, tmp_path):
    first = train_labeler(source, width=8, epochs=1, out_dir=tmp_path, progress=False)
    again = train_labeler(source, width=8, epochs=1, out_dir=tmp_path, progress=False)
    assert not first.reused and again.reused and again.checkpoint_sha256 == first.checkpoint_sha256
    other = train_labeler(source, width=8, epochs=1, out_dir=tmp_path, seed=1, progress=False)
    assert not other.reused and other.checkpoint_sha256 != first.checkpoint_sha256
    fresh = train_labeler(source, width=8, epochs=1, out_dir=tmp_path, seed=1, reuse=False, progress=False)
    assert not fresh.reused


@pytest.mark.parametrize("kwargs,match", [({"train_images": 0}, "train_images"), ({"epochs": 0}, "epochs"),
                                          ({"width": 0}, "width"), ({"preset": "huge"}, "preset")])
def test_bad_labeler_arguments(source, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        train_labeler(source, **kwargs, progress=False)


def test_demo_settings_from_preset():
    from ladd_format.demo import DemoSettings

    s = DemoSettings.from_preset("cpu", ipc=3, train={"epochs": 7})
    assert s.labeler["train_images"] == 6000 and s.train["epochs"] == 7 and s.train["crops_per_image"] == 5
    assert "labeler.train_images 6000" in s.describe()
    assert s.seeds == 3 and "seeds 3" in s.describe()  # mean +/- std by default
    for bad in ({"ipc": 0}, {"seeds": 0}, {"ipc": -1}):
        with pytest.raises(InvalidInputError):
            DemoSettings.from_preset("cpu", **bad)
    assert isinstance(ladd_format.errors.IndexOutOfRangeError("x"), IndexError)


def test_augment_streams_batches_into_the_writer(source, tmp_path, monkeypatch):
    lab = train_labeler(source, width=8, epochs=1, progress=False)
    images, labels, _ = sources.random_real(source, ipc=3, seed=0)
    appended = []
    original = ladd_format.Writer.append
    monkeypatch.setattr(ladd_format.Writer, "append", lambda self, i, l, d: (appended.append(len(i)),
                                                                            original(self, i, l, d)))
    path = augment(tmp_path / "s.ladd", images, labels, lab, encoding="float32", batch_size=50, progress=False)
    assert appended == [2] * 15  # 50 crops per pass = 2 images per batch, each appended as it comes
    from ladd_format.labeler import label_crops

    with ladd_format.open(path) as ds:
        assert np.array_equal(np.asarray(ds.dense_labels), label_crops(images, lab, progress=False))
        assert ds.manifest.labeler.input_size == [28, 28] and ds.manifest.format_version == "1.2"
    with pytest.raises(InvalidInputError, match="classes"):
        augment(tmp_path / "bad.ladd", images, labels + 10, lab, progress=False)
    assert not (tmp_path / "bad.ladd").exists()


def test_labeler_passes_can_be_smaller_than_one_image(source):
    from ladd_format.labeler import crops_per_pass, label_batches, label_crops

    lab = train_labeler(source, width=8, epochs=1, progress=False)
    calls = []
    original = lab.logits
    lab.logits = lambda x: (calls.append(len(x)), original(x))[1]
    images = source.train_images[:3]
    parts = [d for _, d in label_batches(images, lab, batch_size=10, progress=False)]
    assert calls == [10, 10, 5] * 3 and len(parts) == 3  # one image a batch, its 25 crops in 3 passes
    lab.logits = original
    np.testing.assert_allclose(np.concatenate(parts), label_crops(images, lab, progress=False), rtol=0, atol=1e-6)
    cpu = torch.device("cpu")
    assert [crops_per_pass((s, s), cpu) for s in (28, 64, 128, 224)] == [445, 85, 21, 6]


def test_demo_table_gives_mean_and_std_for_every_row():
    from ladd_format.demo import format_table

    rows = [{"method": m, "ipc": 10, "labels": labels, "accuracy_mean": 0.5, "accuracy_std": s, "accuracies": a,
             "bytes": 1000, "overhead_percent": 0.0}
            for m, labels, s, a in (("baseline", "hard", 0.01, [0.49, 0.51]), ("LADD", "ladd", 0.0, [0.5, 0.5]))]
    table = format_table({"rows": rows})
    assert "50.00 +/- 1.00" in table and "50.00 +/- 0.00" in table and "2 seeds" in table
