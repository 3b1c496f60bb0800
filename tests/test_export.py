"""Export to PNG folders, .pt and .npz: layout, round trips, atomic placement, overwrite."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from _helpers import leftovers
from PIL import Image

import ladd_format
from ladd_format import ContainerExistsError, InvalidInputError
from ladd_format.export import export
from ladd_format.cli import main as cli_main
from ladd_format.importers import NORMALIZATIONS, import_distilled
from ladd_format.testing import example_arrays, write_example


def _cli(argv: list[str]) -> int:
    return cli_main(argv)


@pytest.fixture
def container(tmp_path):
    # A class name with a slash (Fashion-MNIST has one) must survive the folder form.
    names = ["T-shirt/top", "b", "c", "d"]
    return write_example(tmp_path / "src.ladd", num_classes=4, ipc=3, size=12, class_names=names)


def test_folder_layout_and_labels_csv(tmp_path, container):
    out = export(container, tmp_path / "out", format="folder")
    with ladd_format.open(container) as ds:
        images, labels = np.asarray(ds.images), ds.labels
    with (out / "labels.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(len(labels)))
    assert [int(r["label"]) for r in rows] == list(labels)
    assert rows[0]["class_name"] == "T-shirt/top" and rows[0]["file"] == "000/000000.png"
    for row in rows:
        with Image.open(out / row["file"]) as im:
            assert im.format == "PNG" and np.array_equal(np.asarray(im), images[int(row["index"])])
    assert sorted(p.name for p in out.iterdir()) == ["000", "001", "002", "003", "classes.csv", "dense_labels.npy",
                                                    "labels.csv", "manifest.json"]
    assert leftovers(tmp_path) == ["out", "src.ladd"]


def test_folder_keeps_dense_labels_and_manifest(tmp_path, container, monkeypatch):
    monkeypatch.setattr("ladd_format.export._PNG_BATCH", 5)  # dense labels are copied batch by batch
    out = export(container, tmp_path / "out", format="folder")
    dense = np.load(out / "dense_labels.npy", allow_pickle=False)
    with ladd_format.open(container) as ds:
        assert dense.dtype == np.float32 and dense.shape == (len(ds), ds.manifest.sampler.num_crops, 4)
        assert np.array_equal(dense, np.asarray(ds.dense_labels))
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        assert manifest == ds.manifest.to_json() and manifest["class_names"][0] == "T-shirt/top"
    # The folder reads back: same images, labels and class names.
    back = import_distilled("folder", out, tmp_path / "back.ladd")
    with ladd_format.open(container) as a, ladd_format.open(back) as b:
        assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
        assert np.array_equal(a.labels, b.labels) and a.class_names == b.class_names


@pytest.mark.parametrize("channels", [1, 3])
def test_import_export_import_is_identity(tmp_path, channels):
    stats = NORMALIZATIONS["mnist" if channels == 1 else "cifar10"]
    rng = np.random.default_rng(channels)
    u8 = rng.integers(0, 256, (6, channels, 9, 9), dtype=np.uint8)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in stats)
    (tmp_path / "mtt").mkdir()
    torch.save((torch.from_numpy(u8).float() / 255 - mean) / std, tmp_path / "mtt" / "images_best.pt")
    torch.save(torch.tensor([3, 1, 4, 1, 5, 9]), tmp_path / "mtt" / "labels_best.pt")
    first = import_distilled("mtt", tmp_path / "mtt", tmp_path / "a.ladd",
                             normalization="mnist" if channels == 1 else "cifar10")
    export(first, tmp_path / "folder", format="folder")
    second = import_distilled("folder", tmp_path / "folder", tmp_path / "b.ladd")
    with ladd_format.open(first) as a, ladd_format.open(second) as b:
        assert np.array_equal(np.asarray(b.images), u8.transpose(0, 2, 3, 1))
        assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
        assert np.array_equal(a.labels, b.labels) and a.class_names == b.class_names


def test_pt_holds_tensors_and_class_names_loadable_without_pickle(tmp_path, container):
    out = export(container, tmp_path / "c.pt", format="pt")
    body = torch.load(out, weights_only=True)
    with ladd_format.open(container) as ds:
        assert set(body) == {"images", "labels", "dense_labels", "mean", "std", "class_names"}
        assert body["class_names"] == ds.class_names == ["T-shirt/top", "b", "c", "d"]
        assert body["images"].dtype == torch.uint8
        assert np.array_equal(body["images"].numpy(), np.asarray(ds.images).transpose(0, 3, 1, 2))
        assert body["labels"].dtype == torch.int64 and np.array_equal(body["labels"].numpy(), ds.labels)
        assert np.array_equal(body["dense_labels"].numpy(), np.asarray(ds.dense_labels))
        assert np.allclose(body["mean"].numpy(), ds.manifest.image.mean)


def test_normalized_export_matches_the_field(tmp_path, container):
    out = export(container, tmp_path / "c.pt", format="pt", normalized=True)
    body = torch.load(out, weights_only=True)
    with ladd_format.open(container) as ds:
        m = ds.manifest
        x = torch.from_numpy(np.asarray(ds.images)).permute(0, 3, 1, 2).float() / 255
        want = (x - torch.tensor(m.image.mean).view(1, -1, 1, 1)) / torch.tensor(m.image.std).view(1, -1, 1, 1)
    assert body["images"].dtype == torch.float32 and torch.allclose(body["images"], want, atol=1e-5)
    with pytest.raises(InvalidInputError, match=r"normalized=True \(--normalized on the command line\) applies "
                       "to pt and npz"):
        export(container, tmp_path / "f", format="folder", normalized=True)


def test_npz_loads_without_pickle(tmp_path, container):
    out = export(container, tmp_path / "c.npz", format="npz")
    with np.load(out, allow_pickle=False) as z, ladd_format.open(container) as ds:
        assert list(z["class_names"]) == ds.class_names
        assert np.array_equal(z["images"], np.asarray(ds.images).transpose(0, 3, 1, 2))
        assert z["dense_labels"].dtype == np.float32 and z["labels"].dtype == np.int64


def test_logit_containers_export_probabilities(tmp_path):
    images, labels, probs = example_arrays(num_classes=3, ipc=1, size=8)
    logits = np.log(probs) + 2.0
    path = ladd_format.write(tmp_path / "l.ladd", images, labels, logits, values="logits")
    with np.load(export(path, tmp_path / "l.npz", format="npz")) as z:
        assert np.allclose(z["dense_labels"], probs, atol=1e-6)
    folder = export(path, tmp_path / "l", format="folder")
    assert np.allclose(np.load(folder / "dense_labels.npy"), probs, atol=1e-6)
    body = torch.load(export(path, tmp_path / "l.pt", format="pt"), weights_only=True)
    assert np.allclose(body["dense_labels"].numpy(), probs, atol=1e-6) and body["class_names"] == ["0", "1", "2"]


@pytest.mark.parametrize("fmt, name", [("folder", "out"), ("pt", "out.pt"), ("npz", "out.npz")])
def test_existing_output_is_kept_unless_overwrite(tmp_path, container, fmt, name):
    target = tmp_path / name
    if fmt == "folder":
        target.mkdir()
        (target / "mine.txt").write_text("keep")
    else:
        target.write_text("keep")
    with pytest.raises(ContainerExistsError, match="already exists"):
        export(container, target, format=fmt)
    assert (target / "mine.txt" if fmt == "folder" else target).read_text() == "keep"
    export(container, target, format=fmt, overwrite=True)
    assert not (target / "mine.txt").exists() if fmt == "folder" else target.stat().st_size > 100
    assert leftovers(tmp_path) == sorted([name, "src.ladd"])


def test_wrong_kind_of_target_and_format_are_refused(tmp_path, container):
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(InvalidInputError, match="is a folder"):
        export(container, tmp_path / "dir.pt", format="pt", overwrite=True)
    with pytest.raises(InvalidInputError, match="is the container being exported"):
        export(container, container, format="folder", overwrite=True)
    with pytest.raises(InvalidInputError, match="export format must be one of"):
        export(container, tmp_path / "x", format="tar")


def test_a_failure_midway_leaves_nothing(tmp_path, container, monkeypatch):
    calls = []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    original = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export(container, tmp_path / "out", format="folder")
    assert leftovers(tmp_path) == ["src.ladd"]


def test_cli_export(tmp_path, container, capsys):
    assert _cli(["export", str(container), str(tmp_path / "c.npz"), "--format", "npz"]) == 0
    assert "exported" in capsys.readouterr().out and (tmp_path / "c.npz").is_file()
    assert _cli(["export", str(container), str(tmp_path / "c.npz"), "--format", "npz"]) == 1
    err = capsys.readouterr().err
    assert "ContainerExistsError" in err
