"""Damaged, incomplete, edited and too-new containers give their typed error, also from the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from _helpers import chunk_files, edit_manifest, flip_byte, zip_dir

import ladd_format
from ladd_format import IncompleteContainerError, IntegrityError, SchemaError, VersionError
from ladd_format.cli import main as cli
from ladd_format.testing import write_example


@pytest.fixture(params=[None, "zstd"])
def container(request, tmp_path):
    return write_example(tmp_path / "c.ladd", num_classes=4, ipc=3, size=12, compression=request.param)


def _check(path, error, match, capsys, *, verify_false_too=False):
    with pytest.raises(error, match=match):
        ladd_format.open(path, verify=True)
    if verify_false_too:
        with pytest.raises(error, match=match):
            ladd_format.open(path, verify=False)
    capsys.readouterr()
    assert cli(["validate", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    names = [e.__name__ for e in (error if isinstance(error, tuple) else (error,))]
    assert err.count("\n") == 0 and any(name in err for name in names)


def _both_forms(container, tmp_path):
    yield container
    yield zip_dir(container, tmp_path / "damaged.ladd.zip")


@pytest.mark.parametrize("array", ["images", "labels", "dense_labels"])
@pytest.mark.parametrize("offset", [0, 7, -1])
def test_flipped_byte_in_a_chunk(container, tmp_path, capsys, array, offset):
    chunk = chunk_files(container, array)[0]
    flip_byte(chunk, offset)
    # A flipped label byte may instead push a hard label out of range, caught as SchemaError.
    error = (IntegrityError, SchemaError) if array == "labels" else IntegrityError
    for path in _both_forms(container, tmp_path):
        _check(path, error, array, capsys)


def test_flipped_label_is_caught(tmp_path, capsys):
    path = write_example(tmp_path / "c.ladd", num_classes=4, ipc=3, size=12, compression=None)
    flip_byte(chunk_files(path, "labels")[0], 0)  # label 0 -> 255: outside [0, 4)
    _check(path, SchemaError, "outside", capsys, verify_false_too=True)


@pytest.mark.parametrize("array", ["images", "labels", "dense_labels"])
def test_deleted_chunk(container, tmp_path, capsys, array):
    chunk_files(container, array)[0].unlink()
    for path in _both_forms(container, tmp_path):
        _check(path, IncompleteContainerError, f"{array}.*chunks", capsys, verify_false_too=True)


def test_deleted_array_and_metadata(container, tmp_path, capsys):
    shutil.rmtree(container / "dense_labels")
    _check(container, IncompleteContainerError, "dense_labels", capsys, verify_false_too=True)
    (container / "zarr.json").unlink()
    _check(container, IncompleteContainerError, "zarr.json", capsys, verify_false_too=True)


def test_missing_manifest_means_unfinished(container, capsys):
    meta = json.loads((container / "zarr.json").read_text())
    del meta["attributes"]["ladd"]
    (container / "zarr.json").write_text(json.dumps(meta))
    _check(container, IncompleteContainerError, "did not finish", capsys, verify_false_too=True)


@pytest.mark.parametrize("edit", [
    lambda m: m["class_names"].__setitem__(0, "edited"),
    lambda m: m["image"].__setitem__("mean", [0.1, 0.2, 0.3]),
    lambda m: m["sampler"].__setitem__("n", 4),
    lambda m: m["labeler"].__setitem__("architecture", "ResNet50"),
    lambda m: m.__setitem__("extra", {"injected": True}),
])
def test_edited_manifest(container, tmp_path, capsys, edit):
    edit_manifest(container, edit)
    for path in _both_forms(container, tmp_path):
        _check(path, IntegrityError, "manifest was modified", capsys, verify_false_too=True)


def test_edited_digest_with_recomputed_manifest_digest(container, capsys):
    edit_manifest(container, lambda m: m["arrays"]["images"].__setitem__("sha256", "0" * 64), redigest=True)
    _check(container, IntegrityError, "images.*digest", capsys)
    ladd_format.open(container, verify=False).close()  # structure alone is fine


def test_manifest_that_disagrees_with_arrays(container, capsys):
    edit_manifest(container, lambda m: m.__setitem__("num_images", m["num_images"] + 1), redigest=True)
    _check(container, SchemaError, "shape", capsys, verify_false_too=True)


def test_manifest_that_breaks_the_schema(container, capsys):
    edit_manifest(container, lambda m: m["image"].pop("channels"), redigest=True)
    _check(container, SchemaError, "image.channels", capsys, verify_false_too=True)


def test_unknown_encoding_is_refused_clearly(container, capsys):
    edit_manifest(container, lambda m: m["dense_labels"].__setitem__("encoding", "topk_sparse"), redigest=True)
    _check(container, ladd_format.UnsupportedEncodingError, "topk_sparse", capsys, verify_false_too=True)


@pytest.mark.parametrize("version", ["2.0", "10.3"])
def test_newer_major_version_is_refused(container, tmp_path, capsys, version):
    edit_manifest(container, lambda m: m.__setitem__("format_version", version), redigest=True)
    for path in _both_forms(container, tmp_path):
        _check(path, VersionError, f"{version}.*upgrade", capsys, verify_false_too=True)


def test_newer_minor_version_is_read(container):
    def later_minor(m):
        m["format_version"] = "1.9"
        m["a_field_from_the_future"] = {"x": 1}
        m["sampler"]["future_option"] = True

    edit_manifest(container, later_minor, redigest=True)
    with ladd_format.open(container, verify=True) as ds:
        assert ds.manifest.version == (1, 9)


def test_not_a_ladd_group(container, capsys):
    edit_manifest(container, lambda m: m.__setitem__("format", "something-else"))
    _check(container, SchemaError, "not a LADD manifest", capsys, verify_false_too=True)
