"""ladd publish: a folder a stranger can validate, browse, cite and index; format 1.3's publication."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import ladd_format
from ladd_format.cli import main
from ladd_format.manifest import parse_manifest
from ladd_format.publish import (
    MissingCardFieldError,
    PublicationError,
    TextEncodingError,
    UnknownLicenseError,
    _yaml_str,
    check_license,
    copy_container,
    publish,
    size_category,
)
from ladd_format.testing import write_example

yaml = pytest.importorskip("yaml")
VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
CITATION = "@article{doe2026,\n  title = {Distilled {\\\"U}ber Sets},\n  author = {Doe, J.},\n  year = {2026}\n}"


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pub")
    source = write_example(tmp / "fmnist-ipc2.ladd")
    results = tmp / "results.csv"
    results.write_text("model,accuracy,std\nConvNet,0.731,0.004\nResNet-18,0.702,0.011\n")
    out = publish(source, tmp / "out", license="cc-by-4.0", authors=["Ada Lovelace", "Émile Noël"],
                  citation=CITATION, homepage="https://example.org/ladd", results=results,
                  pretty_name="Fashion: IPC 2 \"demo\"", description="A small set.\nTwo lines.")
    return source, out


def test_published_folder_is_complete_and_checksummed(published):
    source, out = published
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "SHA256SUMS", "croissant.json", "data/train-00000-of-00001.parquet",
                     "fmnist-ipc2.ladd.zip"]
    listed = dict(reversed(line.split("  ", 1)) for line in (out / "SHA256SUMS").read_text().splitlines())
    assert sorted(listed) == [f for f in files if f != "SHA256SUMS"]
    assert all(_sha256(out / name) == digest for name, digest in listed.items())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]  # no stage left behind


def test_packed_container_validates_and_keeps_every_array(published):
    source, out = published
    assert main(["validate", str(out / "fmnist-ipc2.ladd.zip")]) == 0
    with ladd_format.open(source) as a, ladd_format.open(out / "fmnist-ipc2.ladd.zip", verify=True) as b:
        assert b.manifest.format_version == "1.3"
        assert {n: r.sha256 for n, r in a.manifest.arrays.items()} == {n: r.sha256 for n, r in b.manifest.arrays.items()}
        assert np.array_equal(np.asarray(a.dense_labels), np.asarray(b.dense_labels))
        pub = b.manifest.publication
        assert (pub.license, pub.authors, pub.citation, pub.homepage) == (
            "CC-BY-4.0", ["Ada Lovelace", "Émile Noël"], CITATION, "https://example.org/ladd")
        same = {"publication", "format_version", "manifest_sha256"}
        assert a.manifest.model_dump(exclude=same) == b.manifest.model_dump(exclude=same)


def test_card_front_matter_and_body(published):
    _, out = published
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = _front_matter(card)
    assert meta["license"] == "cc-by-4.0"
    assert meta["pretty_name"] == 'Fashion: IPC 2 "demo"'
    assert meta["task_categories"] == ["image-classification"]
    assert meta["size_categories"] == ["n<1K"]
    assert {"dataset-distillation", "label-augmentation", "ladd"} <= set(meta["tags"])
    assert meta["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*"}
    for text in ("| images per class (IPC) | 2 |", "| classes | 10 |", "32 x 32 x 3", "5 x 5 = 25 crops",
                 "`uint8`", "of the hard-label baseline on disk", "## Provenance", "synthetic-example",
                 "| model | accuracy | std |", "| ResNet-18 | 0.702 | 0.011 |", "ladd_format.open(",
                 "load_dataset(\"parquet\"", CITATION, "Ada Lovelace, Émile Noël", "A small set.\nTwo lines."):
        assert text in card, text
    with ladd_format.open(out / "fmnist-ipc2.ladd.zip") as ds:
        overhead = ladd_format.storage.overhead(ds)
    assert f"{overhead.stored_percent:+.2f}%" in card


def test_croissant_describes_the_files(published):
    _, out = published
    body = json.loads((out / "croissant.json").read_text(encoding="utf-8"))
    assert body["@type"] == "sc:Dataset" and body["license"] == "https://spdx.org/licenses/CC-BY-4.0.html"
    assert body["url"] == "https://example.org/ladd"
    assert body["citeAs"] == CITATION and [c["name"] for c in body["creator"]] == ["Ada Lovelace", "Émile Noël"]
    objects = {d["contentUrl"]: d for d in body["distribution"] if d["@type"] == "cr:FileObject"}
    assert sorted(objects) == ["data/train-00000-of-00001.parquet", "fmnist-ipc2.ladd.zip"]
    for name, d in objects.items():
        assert d["sha256"] == _sha256(out / name) and d["contentSize"] == f"{(out / name).stat().st_size} B"
    assert objects["fmnist-ipc2.ladd.zip"]["encodingFormat"] == "application/zip"
    fields = [f["name"] for f in body["recordSet"][1]["field"]]
    assert fields == ["image", "label", "dense_labels"]


def test_croissant_validates_with_mlcroissant(published, monkeypatch):
    mlc = pytest.importorskip("mlcroissant")
    _, out = published
    monkeypatch.chdir(out)  # contentUrl is relative to the folder
    dataset = mlc.Dataset(jsonld=str(out / "croissant.json"))
    assert not dataset.metadata.ctx.issues.errors and not dataset.metadata.ctx.issues.warnings
    records = list(dataset.records("train"))
    with ladd_format.open(out / "fmnist-ipc2.ladd.zip") as ds:
        assert [r["train/label"] for r in records] == ds.labels.tolist()
        assert np.array_equal(np.asarray(records[3]["train/image"]), np.asarray(ds.images[3]))
        np.testing.assert_array_equal(np.array(records[3]["train/dense_labels"], np.float32),
                                      np.asarray(ds.dense_labels[3]))


def test_published_parquet_imports_back_exactly(published, tmp_path):
    from ladd_format.importers import import_parquet

    _, out = published
    back = import_parquet(out, tmp_path / "back.ladd.zip")
    with ladd_format.open(out / "fmnist-ipc2.ladd.zip") as a, ladd_format.open(back) as b:
        assert a.manifest.model_dump(exclude={"created_by"}) == b.manifest.model_dump(exclude={"created_by"})
        assert b.manifest.publication.license == "CC-BY-4.0"


# -- refused metadata: a clear error, nothing written ---------------------------------------------

@pytest.mark.parametrize("kwargs,error,message", [
    (dict(license="cc-by-4", authors=["A"]), UnknownLicenseError, "did you mean.*CC-BY-4.0"),
    (dict(license="GPL-3", authors=["A"]), UnknownLicenseError, "'GPL-3'.*gpl-3.0"),
    (dict(authors=["A"]), MissingCardFieldError, "license is required"),
    (dict(license="MIT"), MissingCardFieldError, "authors is required"),
    (dict(license="MIT", authors=[]), MissingCardFieldError, "at least one"),
    (dict(license="MIT", authors=["  "]), MissingCardFieldError, r"authors\[0\]: empty"),
    (dict(license="MIT", authors=[b"Ren\xe9"]), TextEncodingError, r"authors\[0\]: not UTF-8"),
    (dict(license="MIT", authors=["x\ud800"]), TextEncodingError, "lone surrogate"),
    (dict(license="MIT", authors=["A"], citation="@misc{\ud83d}"), TextEncodingError, "citation"),
    (dict(license="MIT", authors=["A\nB"]), PublicationError, "one line"),
    (dict(license="MIT", authors=["A"], homepage="ftp://x.org"), PublicationError, "http"),
    (dict(license="MIT", authors=["A"], pretty_name="\x00"), PublicationError, "pretty_name"),
    (dict(license="MIT", authors=["A"], results="missing.csv"), PublicationError, "results"),
])
def test_bad_metadata_writes_nothing(tmp_path, kwargs, error, message):
    source = write_example(tmp_path / "c.ladd", num_classes=5)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error, match=message):
        publish(source, tmp_path / "out", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert issubclass(error, ladd_format.InvalidInputError)


def test_existing_out_dir_needs_overwrite(tmp_path):
    source = write_example(tmp_path / "c.ladd", num_classes=5)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ladd_format.ContainerExistsError, match="overwrite"):
        publish(source, tmp_path / "out", license="MIT", authors=["A"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    publish(source, tmp_path / "out", license="MIT", authors=["A"], parquet=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "SHA256SUMS", "c.ladd.zip",
                                                                    "croissant.json"]


def test_publication_in_the_manifest_is_reused(tmp_path):
    source = write_example(tmp_path / "c.ladd", num_classes=5)
    first = copy_container(source, tmp_path / "p.ladd.zip", publication={"license": "MIT", "authors": ["A"]})
    out = publish(first, tmp_path / "out", parquet=False, homepage="https://a.example")
    with ladd_format.open(out / "p.ladd.zip") as ds:
        assert ds.manifest.publication.model_dump(exclude_none=True) == {
            "license": "MIT", "authors": ["A"], "homepage": "https://a.example"}
    assert _front_matter((out / "README.md").read_text())["license"] == "mit"


def test_licenses():
    assert check_license("mit") == ("MIT", "mit", "MIT")
    assert check_license("Apache-2.0") == ("Apache-2.0", "apache-2.0", "Apache-2.0")
    assert check_license("GPL-3.0-only") == ("GPL-3.0-only", "gpl-3.0", "GPL-3.0-only")
    assert check_license("openrail") == ("openrail", "openrail", None)
    assert check_license("0BSD")[1] == "other"
    with pytest.raises(UnknownLicenseError, match="'nope'"):
        check_license("nope")


def test_other_license_card_fields(tmp_path):
    source = write_example(tmp_path / "c.ladd", num_classes=5)
    out = publish(source, tmp_path / "out", license="0BSD", authors=["A"], homepage="https://a.example/l",
                  parquet=False)
    meta = _front_matter((out / "README.md").read_text())
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "0bsd", "https://a.example/l")
    assert "configs" not in meta


@pytest.mark.parametrize("text", ["plain", "yes", "1.5", "a: b # c", "- x", '"q" \\ z', "Émile \u2028 \x85 \ufeff",
                                  "tab\there", "😀 [x] {y}", "null", "~", "@at", "'single'", "n<1K"])
def test_yaml_scalars_round_trip(text):
    assert yaml.safe_load(f"key: {_yaml_str(text)}\n") == {"key": text}


def test_size_categories():
    assert [size_category(n) for n in (1, 999, 1000, 50_000, 10**6, 2 * 10**9)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M", "n>1B"]


def test_cli_publish_one_line(tmp_path, capsys):
    source = write_example(tmp_path / "c.ladd", num_classes=5)
    (tmp_path / "cite.bib").write_text(CITATION)
    assert main(["publish", str(source), str(tmp_path / "out"), "--license", "MIT", "--author", "A",
                 "--author", "B", "--citation", f"@{tmp_path / 'cite.bib'}", "--no-parquet"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"published {source} -> {tmp_path / 'out'} (4 files")
    with ladd_format.open(tmp_path / "out" / "c.ladd.zip") as ds:
        assert ds.manifest.publication.citation == CITATION and ds.manifest.publication.authors == ["A", "B"]
    assert main(["publish", str(source), str(tmp_path / "out2"), "--license", "cc-by-4", "--author", "A"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UnknownLicenseError" in err and "CC-BY-4.0" in err
    assert not (tmp_path / "out2").exists()


# -- the manifest member (format 1.3) ------------------------------------------------------------

def _manifest_body(tmp_path, **publication):
    path = copy_container(write_example(tmp_path / "c.ladd", num_classes=5), tmp_path / "p.ladd",
                          publication=publication or None)
    with ladd_format.open(path) as ds:
        return ds.manifest.to_json()


def test_manifest_without_publication_is_unchanged(tmp_path):
    body = _manifest_body(tmp_path)
    assert "publication" not in body and body["format_version"] == "1.1"


def test_manifest_publication_rules(tmp_path):
    body = _manifest_body(tmp_path, license="MIT", authors=["A"])
    assert body["publication"] == {"license": "MIT", "authors": ["A"]} and body["format_version"] == "1.3"
    def reparse(**changes):
        b = {**body, **changes}
        b["manifest_sha256"] = "0" * 64  # parse_manifest checks members, not the digest
        return parse_manifest(b)

    with pytest.raises(ladd_format.SchemaError, match="older than the 1.3 that its publication needs"):
        reparse(format_version="1.2")
    # a reader accepts a license id it does not know (the lists grow) ...
    assert reparse(publication={"license": "Some-Future-License-9.0"}).publication.license == "Some-Future-License-9.0"
    # ... but not text without a UTF-8 form, a malformed id or URL, or null members
    for bad in ({"authors": ["x\udc00"]}, {"license": "a b"}, {"homepage": "mailto:a@b"}, {"authors": []}):
        with pytest.raises(ladd_format.SchemaError):
            reparse(publication=bad)


def test_schema_covers_publication(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from ladd_format.manifest import json_schema

    validator = jsonschema.Draft202012Validator(json_schema())
    body = _manifest_body(tmp_path, license="MIT", authors=["A"], homepage="https://x.org")
    validator.validate(body)
    assert not validator.is_valid({**body, "publication": {"homepage": "ftp://x"}})


# -- the frozen 1.3 vector ---------------------------------------------------------------------------

def test_v13_vector_files_are_unchanged():
    folder = VECTORS / "v1.3"
    listed = dict(reversed(line.split(maxsplit=1)) for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert sorted(listed) == sorted(p.name for p in folder.iterdir() if p.name != "SHA256SUMS")
    assert all(_sha256(folder / name) == digest for name, digest in listed.items())


def test_v13_vector_decodes():
    folder, name = VECTORS / "v1.3", "published_uint8.ladd.zip"
    expected = np.load(folder / f"{name}.expected.npz")
    manifest = json.loads((folder / f"{name}.expected.json").read_text(encoding="utf-8"))
    with ladd_format.open(folder / name, verify=True) as ds:
        assert np.array_equal(np.asarray(ds.images), expected["images"])
        assert np.array_equal(ds.labels, expected["labels"])
        assert np.array_equal(np.asarray(ds.dense_labels), expected["dense_labels"])
        assert np.array_equal(np.asarray(ds._arrays["dense_labels"][:]), expected["stored_dense_labels"])
        dump = ds.manifest.model_dump(mode="json", exclude={"created_by"})
        dump["labeler"] = {k: v for k, v in dump["labeler"].items() if k in manifest["labeler"]}
        assert dump == manifest
        assert ds.manifest.format_version == "1.3" and ds.manifest.publication.authors[1] == "Émile Noël"


def test_v13_vector_is_reproduced(tmp_path):
    import importlib.util
    import zipfile

    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    v = module._vectors_v13()["published_uint8.ladd.zip"]
    kwargs = dict(v["kwargs"])
    publication = kwargs.pop("publication")
    plain = ladd_format.write(tmp_path / "plain.ladd", v["images"], v["labels"], v["dense_labels"], **kwargs)
    ours = copy_container(plain, tmp_path / "v.ladd.zip", publication=publication)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(VECTORS / "v1.3" / "published_uint8.ladd.zip") as b:
        assert a.namelist() == b.namelist()
        for key in a.namelist():
            if key == "zarr.json":
                mine, frozen = (json.loads(z.read(key))["attributes"]["ladd"] for z in (a, b))
                assert {**mine, "created_by": None} == {**frozen, "created_by": None} or mine == frozen
            else:
                assert a.read(key) == b.read(key), key


# -- fsspec URLs, hf:// included --------------------------------------------------------------------

def test_open_through_a_stand_in_hf_file_system(published, monkeypatch):
    """``hf://datasets/USER/REPO/FILE`` goes to whatever fsspec registers for ``hf``
    (huggingface_hub's HfFileSystem when installed). A local file system stands in here: no
    network, so the Hub itself is not exercised."""
    fsspec = pytest.importorskip("fsspec")
    from fsspec.implementations.local import LocalFileSystem

    _, out = published
    root = out.parent / "hub"
    (root / "datasets" / "user" / "repo").mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        if p.is_file():
            (root / "datasets" / "user" / "repo" / p.name).write_bytes(p.read_bytes())

    class StandInHfFileSystem(LocalFileSystem):
        protocol = ("hf",)

        def __init__(self, *args, asynchronous=False, **kwargs):
            super().__init__(*args, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            if path.startswith("hf://"):
                path = f"{root}/{path[len('hf://'):]}"
            return super()._strip_protocol(path)

    import sys

    table = sys.modules["fsspec.registry"]._registry
    before = table.get("hf")
    fsspec.register_implementation("hf", StandInHfFileSystem, clobber=True)
    try:
        url = "hf://datasets/user/repo/fmnist-ipc2.ladd.zip"
        with ladd_format.open(url, verify=True) as ds:
            assert ds.manifest.publication.license == "CC-BY-4.0" and len(ds) == 20
        with pytest.raises(ladd_format.ContainerNotFoundError):
            ladd_format.open("hf://datasets/user/repo/missing.ladd.zip")
    finally:
        if before is None:
            table.pop("hf", None)
        else:
            table["hf"] = before


def test_open_published_zip_from_memory_url(published):
    fsspec = pytest.importorskip("fsspec")
    _, out = published
    fs = fsspec.filesystem("memory")
    fs.pipe("/hub/pub.ladd.zip", (out / "fmnist-ipc2.ladd.zip").read_bytes())
    try:
        with ladd_format.open("memory://hub/pub.ladd.zip", verify=True) as ds:
            assert ds.manifest.format_version == "1.3"
    finally:
        fs.rm("/hub", recursive=True)


def test_hf_urls_go_to_huggingface_hub_file_system():
    """With huggingface_hub installed, ``hf://`` is its HfFileSystem; nothing listens on the
    endpoint used here, so this checks the wiring and the error, not the Hub (no network)."""
    fsspec = pytest.importorskip("fsspec")
    hub = pytest.importorskip("huggingface_hub")
    assert fsspec.get_filesystem_class("hf") is hub.HfFileSystem
    from ladd_format.remote import RemoteStoreError

    with pytest.raises(RemoteStoreError, match="hf://datasets/user/repo/c.ladd.zip"):
        ladd_format.open("hf://datasets/user/repo/c.ladd.zip",
                         storage_options={"endpoint": "http://127.0.0.1:9", "token": False})
