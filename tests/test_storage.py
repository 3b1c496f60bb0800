"""ladd_format.storage: the paper's storage count, the container's bytes, re-encoding, CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import ladd_format
from ladd_format import InvalidInputError
from ladd_format.storage import overhead, reencode, register_cli
from ladd_format.testing import example_arrays


@pytest.fixture(scope="module")
def paper_geometry(tmp_path_factory):
    """The paper's example: 128x128x3 images, 10 classes, N = 5, IPC 1, float32 dense labels."""
    images, labels, dense = example_arrays(num_classes=10, ipc=1, size=128)
    path = tmp_path_factory.mktemp("paper") / "p.ladd"
    return ladd_format.write(path, images, labels, dense, encoding="float32")


def test_reproduces_the_papers_arithmetic(paper_geometry):
    report = overhead(paper_geometry)
    m = report.num_images
    assert report.raw_bytes["dense_float32"] // m == 25 * 10 * 4 == 1000
    assert report.raw_bytes["images"] // m == 128 * 128 * 3 == 49152
    assert report.raw_bytes["hard_labels"] // m == 4  # one float32 per image, as the paper counts labels
    assert round(100 * 1000 / 49152, 2) == round(report.raw_float32_percent, 2) == 2.03
    assert report.raw_encoded_percent == report.raw_float32_percent  # float32 is stored as it is
    assert report.baseline_plus_plus_percent == 100.0  # IPC 1: one more image per class doubles it


def test_report_is_consistent_and_json_ready(paper_geometry, tmp_path):
    report = overhead(paper_geometry)
    body = json.loads(json.dumps(report.to_json()))
    assert body["encoding"] == "float32" and body["image_shape"] == [128, 128, 3] and body["crops"] == 25
    base = report.paper_base_bytes
    assert report.paper_float32_bytes > base
    assert report.paper_float32_percent == round(100 * (report.paper_float32_bytes - base) / base, 4)
    with ladd_format.open(paper_geometry) as ds:
        assert report.stored_bytes == ds.stored_bytes()
        assert overhead(ds) == report
    packed = ladd_format.pack(paper_geometry, tmp_path / "p.ladd.zip")
    assert report.zip_bytes == packed.stat().st_size
    assert overhead(packed).zip_bytes == report.zip_bytes


def test_uint8_at_the_papers_geometry_costs_a_quarter(paper_geometry, tmp_path):
    compact = overhead(reencode(paper_geometry, tmp_path / "u.ladd", "uint8"))
    assert compact.raw_bytes["dense_encoded"] == compact.raw_bytes["dense_float32"] // 4
    assert compact.paper_encoded_percent < 1.1  # the goal: half the paper's bytes or less
    sparse = overhead(reencode(paper_geometry, tmp_path / "t.ladd", "topk",
                               encoding_params={"k": 3, "rule": "smoothing"}))
    assert set(sparse.stored_bytes) == {"images", "labels", "dense_labels", "dense_index"}
    assert sparse.raw_bytes["dense_encoded"] == 10 * 25 * 3 * 2  # uint8 value + uint8 index


def test_reencode_keeps_everything_but_the_encoding(tmp_path):
    images, labels, dense = example_arrays(num_classes=4, ipc=2, size=12, channels=1, n=3)
    source = ladd_format.write(
        tmp_path / "s.ladd.zip", images, labels, dense, encoding="float32", class_names=["a", "b", "c", "é"],
        mean=[0.3], std=[0.2], sampler={"n": 3, "ratio": 0.5}, temperature=2.0,
        labeler={"architecture": "ConvNetD3", "epochs": 10}, distillation={"method": "MTT", "ipc": 2},
        extra={"note": "x"})
    target = reencode(source, tmp_path / "t.ladd", "topk", encoding_params={"k": 2, "rule": "renorm"})
    with ladd_format.open(source) as src, ladd_format.open(target, verify=True) as out:
        keep = {"created_by", "format_version", "dense_labels", "arrays", "manifest_sha256"}
        assert src.manifest.model_dump(exclude=keep) == out.manifest.model_dump(exclude=keep)
        assert out.manifest.dense_labels.temperature == 2.0 and out.manifest.format_version == "1.1"
        assert out.manifest.dense_labels.params == {"k": 2, "rule": "renorm"}
        assert np.array_equal(np.asarray(out.images), images) and np.array_equal(out.labels, labels)
        assert out.manifest.arrays["images"].sha256 == src.manifest.arrays["images"].sha256
    back = reencode(target, tmp_path / "b.ladd", "float32")
    with ladd_format.open(back) as ds, ladd_format.open(target) as sparse:
        assert ds.manifest.format_version == "1.0"
        assert np.array_equal(np.asarray(ds.dense_labels), np.asarray(sparse.dense_labels))
    with pytest.raises(InvalidInputError, match="1 <= k < K = 4"):
        reencode(source, tmp_path / "x.ladd", "topk", encoding_params={"k": 4, "rule": "renorm"})
    assert not (tmp_path / "x.ladd").exists()


def _cli(argv):
    parser = argparse.ArgumentParser(prog="ladd")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_overhead_and_encode(paper_geometry, tmp_path, capsys):
    assert _cli(["overhead", str(paper_geometry)]) == 0
    text = capsys.readouterr().out
    assert "+2.03%" in text and "baseline++" in text and "dense_labels" in text
    assert _cli(["overhead", "--json", str(paper_geometry)]) == 0
    assert json.loads(capsys.readouterr().out) == overhead(paper_geometry).to_json()
    out = tmp_path / "t.ladd.zip"
    assert _cli(["encode", str(paper_geometry), str(out), "--encoding", "topk", "--k", "2",
                 "--rule", "renorm"]) == 0
    with ladd_format.open(out) as ds:
        assert ds.manifest.dense_labels.params == {"k": 2, "rule": "renorm"}
    with pytest.raises(ladd_format.ContainerExistsError):
        _cli(["encode", str(paper_geometry), str(out), "--encoding", "uint8"])
    assert _cli(["encode", str(paper_geometry), str(out), "--encoding", "uint8", "--overwrite",
                 "--compression", "none"]) == 0
    with ladd_format.open(out) as ds:
        assert ds.manifest.dense_labels.encoding == "uint8"
    assert _cli(["encode", str(paper_geometry), str(out), "--encoding", "coarse", "--scale", "7", "--overwrite"]) == 0
    with ladd_format.open(out) as ds:
        assert ds.manifest.dense_labels.params == {"scale": 7} and ds.manifest.format_version == "1.4"
    with pytest.raises(SystemExit):
        _cli(["encode", str(paper_geometry), str(out), "--encoding", "int4"])
