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


# -- parquet: the Hub's layout, and an exact way back -------------------------------------------------

def _same_container(a_path, b_path):
    with ladd_format.open(a_path) as a, ladd_format.open(b_path, verify=True) as b:
        assert a.manifest.model_dump(exclude={"created_by"}) == b.manifest.model_dump(exclude={"created_by"})
        for name in a.manifest.arrays:
            x, y = np.asarray(a._arrays[name][:]), np.asarray(b._arrays[name][:])
            assert x.dtype == y.dtype and np.array_equal(x, y), name


@pytest.mark.parametrize("kwargs", [
    dict(encoding="float16"), dict(encoding="uint8"), dict(encoding="topk", encoding_params={"k": 3, "rule": "renorm"}),
    dict(encoding="topk", encoding_params={"k": 2, "rule": "smoothing"}, channels=1),
], ids=["float16", "uint8", "topk-renorm", "topk-smoothing-grey"])
def test_parquet_round_trip_is_exact(tmp_path, kwargs):
    pytest.importorskip("pyarrow")
    from ladd_format.importers import import_parquet

    source = write_example(tmp_path / "src.ladd", num_classes=6, ipc=2, size=12, **kwargs)
    folder = export(source, tmp_path / "pq", format="parquet")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet")) == [
        "data/train-00000-of-00001.parquet"]
    back = import_parquet(folder, tmp_path / "back.ladd")
    _same_container(source, back)


def test_parquet_reads_without_ladd_format(tmp_path, container):
    pq = pytest.importorskip("pyarrow.parquet")
    import io

    folder = export(container, tmp_path / "pq", format="parquet")
    table = pq.read_table(folder / "data" / "train-00000-of-00001.parquet")
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert features["label"] == {"names": ["T-shirt/top", "b", "c", "d"], "_type": "ClassLabel"}
    assert table.schema.field("image").type.names == ["bytes", "path"]
    rows = table.to_pylist()
    with ladd_format.open(container) as ds:
        assert [r["label"] for r in rows] == ds.labels.tolist()
        for i in (0, len(ds) - 1):
            assert rows[i]["image"]["path"] is None
            png = np.asarray(Image.open(io.BytesIO(rows[i]["image"]["bytes"])))
            assert np.array_equal(png, np.asarray(ds.images[i]))
            np.testing.assert_array_equal(np.array(rows[i]["dense_labels"], np.float32), np.asarray(ds.dense_labels[i]))


def test_parquet_shards_and_logits(tmp_path):
    pytest.importorskip("pyarrow")
    from ladd_format.export import write_parquet
    from ladd_format.importers import import_parquet

    images, labels, _ = example_arrays(num_classes=3, ipc=3, size=10)
    logits = np.random.default_rng(0).normal(0, 3, (len(labels), 25, 3)).astype(np.float32)
    source = ladd_format.write(tmp_path / "l.ladd", images, labels, logits, values="logits", temperature=2.0)
    with ladd_format.open(source) as ds:
        files = write_parquet(ds, tmp_path / "pq", shard_bytes=3500)
    assert [f.name for f in files] == [f"train-{i:05d}-of-00005.parquet" for i in range(5)]
    _same_container(source, import_parquet(tmp_path / "pq", tmp_path / "back.ladd.zip"))
    files[2].unlink()
    with pytest.raises(InvalidInputError, match="a shard is missing"):
        import_parquet(tmp_path / "pq", tmp_path / "none.ladd")
    assert not (tmp_path / "none.ladd").exists()


def test_parquet_import_refuses_tampering(tmp_path, container):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from ladd_format.importers import import_parquet

    folder = export(container, tmp_path / "pq", format="parquet")
    path = folder / "data" / "train-00000-of-00001.parquet"
    table = pq.read_table(path)
    stored = table.column("ladd_dense_labels").to_pylist()
    first = bytearray(stored[0])
    first[0], first[1] = first[1], first[0]  # still a valid uint8 row (same sum), other values
    stored[0] = bytes(first)
    table = table.set_column(table.schema.get_field_index("ladd_dense_labels"), "ladd_dense_labels",
                             pa.array(stored, pa.binary()))
    pq.write_table(table, path)
    with pytest.raises(InvalidInputError, match="differ from the source's recorded digests"):
        import_parquet(folder, tmp_path / "back.ladd")
    assert leftovers(tmp_path) == sorted(["pq", "src.ladd"])


def test_cli_export_and_import_parquet(tmp_path, container, capsys):
    pytest.importorskip("pyarrow")
    assert _cli(["export", str(container), str(tmp_path / "pq"), "--format", "parquet"]) == 0
    out = capsys.readouterr().out
    assert out == f"exported {container} -> {tmp_path / 'pq'} (parquet)\n"
    assert _cli(["import", "parquet", str(tmp_path / "pq"), str(tmp_path / "back.ladd")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("imported parquet")
    _same_container(container, tmp_path / "back.ladd")
    assert _cli(["import", "parquet", str(tmp_path / "nowhere"), str(tmp_path / "x.ladd")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
