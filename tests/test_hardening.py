"""Hostile and unportable containers: every one is refused with a typed error, early, within
bounded memory and time (SPEC.md sections 2, 3, 7, 8, 9 and 12); killed writers' siblings are
swept safely (section 11).

Cases that would exhaust memory or block on a reader without the checks run in a child
process under ``RLIMIT_AS`` with a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from _helpers import chunk_files, edit_manifest, leftovers, zip_dir

import ladd_format
from ladd_format import (
    IncompleteContainerError,
    IntegrityError,
    InvalidInputError,
    SchemaError,
)
from ladd_format._store import sweep
from ladd_format.errors import LimitExceededError
from ladd_format.testing import example_arrays, write_example

LIMIT_AS = 1 << 30
"""Address space of a child that opens a hostile container: the library needs about 330 MB
of it (two malloc arenas, one OpenBLAS thread), so the rest is what a refusal may use."""


def _small(tmp_path: Path, name: str = "c.ladd", **kwargs) -> Path:
    return write_example(tmp_path / name, num_classes=3, ipc=2, size=8, **kwargs)


def _open_both(path, error, match):
    for verify in (False, True):
        with pytest.raises(error, match=match):
            ladd_format.open(path, verify=verify)


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


CHILD = textwrap.dedent("""
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
    import numpy as np
    import ladd_format
    start = time.monotonic()
    try:
        with ladd_format.open(sys.argv[1], verify=sys.argv[2] == "1") as ds:
            np.asarray(ds.images), np.asarray(ds.dense_labels)
        outcome = "opened"
    except BaseException as exc:
        outcome = type(exc).__name__
    # VmHWM, not ru_maxrss: the latter survives exec and would report the parent's peak
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
    print(outcome, int(peak) // 1024, time.monotonic() - start)
""")


def _open_in_child(path: Path, *, verify: bool = True, timeout: float = 60) -> tuple[str, int, float]:
    """(outcome: "opened" or the exception's class name, peak RSS in MiB, seconds) of opening
    ``path`` and reading its arrays in a child limited to LIMIT_AS bytes of address space."""
    # malloc arenas and OpenBLAS threads reserve address space per thread, more on more cores
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1"}
    try:
        result = subprocess.run([sys.executable, "-c", CHILD, str(path), "1" if verify else "0", str(LIMIT_AS)],
                                capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "timeout", 0, timeout
    assert result.stdout, result.stderr
    outcome, rss, seconds = result.stdout.split()
    return outcome, int(rss), float(seconds)


def _raw_zip(target: Path, entries) -> Path:
    """A zip written by hand, so that entries may lie: ``(name, data, method, declared size, crc)``."""
    local, central = bytearray(), bytearray()
    for name, data, method, size, crc in entries:
        raw = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0x800, method, 0, 0x21, crc, len(data),
                               size, len(raw), 0, 0, 0, 0, 0, len(local)) + raw
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0x800, method, 0, 0x21, crc, len(data), size,
                             len(raw), 0) + raw + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(local), 0)
    target.write_bytes(bytes(local + central + end))
    return target


def _entries(container: Path, rename=lambda name: name):
    files = sorted(p for p in container.rglob("*") if p.is_file())
    return [(rename(p.relative_to(container).as_posix()), p.read_bytes(), 0, p.stat().st_size,
             zlib.crc32(p.read_bytes())) for p in files]


def _zstd_bomb(size: int) -> bytes:
    """A zstd frame of RLE blocks without a declared content size: 4 bytes per 128 KiB."""
    block, count = 128 << 10, size // (128 << 10)
    header = b"\x28\xb5\x2f\xfd" + bytes([0x00, (17 - 10) << 3])  # magic; no size, 128 KiB window
    return header + b"".join(struct.pack("<I", (i == count - 1) | (1 << 1) | (block << 3))[:3] + b"\x00"
                             for i in range(count))


def _gzip_bomb(size: int) -> bytes:
    """Identical gzip members of 16 MiB of zeros each (the gzip codec reads every member)."""
    member = zlib.compressobj(9, zlib.DEFLATED, 31)
    one = member.compress(bytes(16 << 20)) + member.flush()
    return one * (size // (16 << 20))


# -- 1: untyped errors ---------------------------------------------------------------------


def test_lone_surrogate_in_a_stored_manifest(tmp_path):
    path = _small(tmp_path)
    _edit_json(path / "zarr.json", lambda meta: meta["attributes"]["ladd"]["extra"].update(s="\ud800"))
    _open_both(path, SchemaError, "extra.s: a string with a lone surrogate")


@pytest.mark.parametrize("metadata", [
    {"extra": {"s": "\ud800"}}, {"extra": {"\udc00": 1}}, {"class_names": ["a", "\ud800b", "c"]},
    {"labeler": {"architecture": "x\udfff"}}, {"distillation": {"details": {"a": ["\ud800"]}}},
])
def test_writer_refuses_lone_surrogates(tmp_path, metadata):
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        ladd_format.write(tmp_path / "c.ladd", images, labels, dense, **metadata)
    assert leftovers(tmp_path) == []


def test_damaged_zip_central_directory_gives_the_real_error(tmp_path):
    packed = ladd_format.pack(_small(tmp_path), tmp_path / "c.ladd.zip")
    data = bytearray(packed.read_bytes())
    data[data.index(b"PK\x01\x02")] ^= 0xFF
    packed.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="damaged zip"):
        ladd_format.open(packed)


def test_backslash_entry_names_are_refused(tmp_path):
    container = _small(tmp_path)
    packed = _raw_zip(tmp_path / "c.ladd.zip", _entries(container, lambda n: n.replace("/", "\\") if "/c/" in n else n))
    _open_both(packed, SchemaError, r"zip entry '\w+\\\\c\\\\0.*' is not a key")


# -- 2: unbounded work ---------------------------------------------------------------------


def _inflate(container: Path, num_images: int, *, chunk_rows: int | None = None) -> None:
    """Declare ``num_images`` in the manifest and every array (digest recomputed)."""
    def manifest(m):
        m["num_images"] = num_images
        for record in m["arrays"].values():
            record["shape"][0] = num_images

    edit_manifest(container, manifest, redigest=True)
    for name in ("images", "labels", "dense_labels"):
        def array(meta):
            meta["shape"][0] = num_images
            if chunk_rows is not None and name == "images":
                meta["chunk_grid"]["configuration"]["chunk_shape"][0] = chunk_rows
        _edit_json(container / name / "zarr.json", array)


@pytest.mark.parametrize("form", ["directory", "zip"])
def test_inflated_image_count_is_refused_from_the_listing(tmp_path, form):
    container = _small(tmp_path)
    _inflate(container, 10**9)
    path = container if form == "directory" else zip_dir(container, tmp_path / "c.ladd.zip")
    outcome, rss, seconds = _open_in_child(path)
    assert (outcome, rss < 200, seconds < 5) == ("IncompleteContainerError", True, True), (outcome, rss, seconds)
    _open_both(path, IncompleteContainerError, r"'images' has 1 of 166666667 chunks")


def test_a_chunk_declared_too_large_is_refused(tmp_path):
    container = _small(tmp_path)
    _inflate(container, 10**9, chunk_rows=10**9)
    _open_both(container, LimitExceededError, r"'images': a chunk decodes to 192000000000 bytes")


def test_an_array_that_expands_too_much_is_refused(tmp_path):
    """Every chunk present, each a few hundred bytes that would decode to 12 MiB of zeros."""
    container = write_example(tmp_path / "c.ladd", num_classes=2, ipc=3, size=8, encoding="float32")
    side = 2048
    edit_manifest(container, lambda m: (m["image"].update(height=side, width=side),
                                        m["arrays"]["images"].update(shape=[6, side, side, 3])), redigest=True)

    def images(meta):
        meta["shape"] = [6, side, side, 3]
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [1, side, side, 3]

    _edit_json(container / "images" / "zarr.json", images)
    shutil.rmtree(container / "images" / "c")
    for i in range(6):
        chunk = container / "images" / "c" / str(i) / "0" / "0" / "0"
        chunk.parent.mkdir(parents=True)
        chunk.write_bytes(_zstd_bomb(side * side * 3 // (128 << 10) * (128 << 10)))
    _open_both(container, LimitExceededError, r"'images' decodes to 75497472 bytes from 2[0-9]+ stored")


def test_more_images_than_stored_bytes_are_refused(tmp_path):
    """Blank images compress to almost nothing, but every one costs a hard label in memory.
    Written uncompressed (within every limit), then compressed here: digests stay valid."""
    from numcodecs import Zstd

    m = (1 << 20) + (1 << 19)
    path = ladd_format.write(tmp_path / "c.ladd", np.zeros((m, 1, 1, 1), np.uint8), np.zeros(m, np.int64),
                             np.ones((m, 1, 1), np.float32), sampler={"n": 1}, mean=[0.5], std=[0.5],
                             compression=None)
    ladd_format.open(path).close()
    for name in ("images", "labels", "dense_labels"):
        for chunk in chunk_files(path, name):
            chunk.write_bytes(Zstd(level=3).encode(chunk.read_bytes()))
        _edit_json(path / name / "zarr.json", lambda meta: meta["codecs"].append(
            {"name": "zstd", "configuration": {"level": 3, "checksum": False}}))
    _open_both(path, LimitExceededError, f"{m} images for [0-9]+ bytes of chunks")


def test_zip_entries_must_be_stored_each_once_and_inside_the_archive(tmp_path):
    container = _small(tmp_path)
    entries = _entries(container)
    root = next(i for i, e in enumerate(entries) if e[0] == "zarr.json")
    deflated = list(entries)
    name, data, _, size, crc = entries[root]
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated[root] = (name, compressor.compress(data) + compressor.flush(), zipfile.ZIP_DEFLATED, size, crc)
    _open_both(_raw_zip(tmp_path / "deflated.zip", deflated), SchemaError, r"'zarr.json' is compressed \(method 8\)")

    _open_both(_raw_zip(tmp_path / "twice.zip", entries + [entries[root]]), SchemaError, "'zarr.json' appears twice")

    lying = list(entries)
    lying[root] = (name, data, 0, 1 << 31, crc)
    _open_both(_raw_zip(tmp_path / "lying.zip", lying), IntegrityError, "'zarr.json' declares 2147483648 bytes")

    short = list(entries)
    short[root] = (name, data[:-1], 0, size, crc)
    _open_both(_raw_zip(tmp_path / "short.zip", short), IntegrityError, f"'zarr.json' declares {size} bytes")


def test_a_deflate_bomb_is_refused_before_decompression(tmp_path):
    container = _small(tmp_path)
    entries = _entries(container)
    zeros, compressor = bytes(16 << 20), zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(64):
        crc = zlib.crc32(zeros, crc)
    index = next(i for i, e in enumerate(entries) if e[0] == "images/c/0/0/0/0")
    entries[index] = ("images/c/0/0/0/0", segment * 64 + compressor.flush(), zipfile.ZIP_DEFLATED, 1 << 30, crc)
    bomb = _raw_zip(tmp_path / "bomb.ladd.zip", entries)
    outcome, rss, _ = _open_in_child(bomb)
    assert (outcome, rss < 200) == ("SchemaError", True), (outcome, rss)


def test_an_oversized_stored_entry_is_refused_unread(tmp_path):
    container = _small(tmp_path)
    entries = _entries(container)
    index = next(i for i, e in enumerate(entries) if e[0] == "dense_labels/c/0/0/0")
    big = bytes(256 << 20)
    entries[index] = ("dense_labels/c/0/0/0", big, 0, len(big), zlib.crc32(big))
    path = _raw_zip(tmp_path / "big.ladd.zip", entries)
    del big, entries
    with pytest.raises(IntegrityError, match="holds 268435456 bytes, more than a chunk of"):
        ladd_format.open(path, verify=False)
    outcome, rss, _ = _open_in_child(path)
    assert (outcome, rss < 200) == ("IntegrityError", True), (outcome, rss)


@pytest.mark.parametrize("bomb", [_zstd_bomb, _gzip_bomb])
def test_a_chunk_that_inflates_beyond_its_shape_is_stopped(tmp_path, bomb):
    """A chunk within its stored bound whose codec would inflate it to 1 GiB."""
    compression = "zstd" if bomb is _zstd_bomb else "gzip"
    container = write_example(tmp_path / "c.ladd", num_classes=10, ipc=20, size=64, compression=compression)
    chunk, = chunk_files(container, "images")
    chunk.write_bytes(bomb(1 << 30))
    outcome, rss, _ = _open_in_child(container)
    assert (outcome, rss < 250) == ("IntegrityError", True), (outcome, rss)
    with ladd_format.open(container, verify=False) as ds, \
            pytest.raises(IntegrityError, match="images/c/0/0/0/0 cannot be decoded"):
        np.asarray(ds.images)


def test_symlinks_that_leave_the_container_are_refused(tmp_path):
    container = _small(tmp_path)
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as f:
        f.truncate(8 << 30)
    chunk = chunk_files(container, "images")[0]
    chunk.unlink()
    chunk.symlink_to(sparse)
    _open_both(container, SchemaError, r"images/c/0/0/0/0 is a symbolic link to .*sparse")
    outcome, rss, _ = _open_in_child(container)
    assert (outcome, rss < 200) == ("SchemaError", True), (outcome, rss)


def test_a_sparse_chunk_inside_the_container_is_refused_unread(tmp_path):
    container = _small(tmp_path, compression=None)
    with chunk_files(container, "images")[0].open("r+b") as f:
        f.truncate(8 << 30)
    _open_both(container, IntegrityError, r"images/c/0/0/0/0 holds 8589934592 bytes")


def test_symlinks_to_files_inside_are_followed(tmp_path):
    container = _small(tmp_path)
    chunk = chunk_files(container, "labels")[0]
    kept = container / "labels" / "kept-chunk"
    chunk.rename(kept)
    chunk.symlink_to(os.path.relpath(kept, chunk.parent))
    ladd_format.open(container).close()
    (container / "dense_labels" / "c").rename(tmp_path / "elsewhere")
    (container / "dense_labels" / "c").symlink_to(tmp_path / "elsewhere")
    _open_both(container, SchemaError, "dense_labels/c is a symbolic link")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    container = _small(tmp_path)
    chunk = chunk_files(container, "labels")[0]
    chunk.unlink()
    os.mkfifo(chunk)
    outcome, _, seconds = _open_in_child(container, verify=False, timeout=30)
    assert outcome == "SchemaError", (outcome, seconds)
    with pytest.raises(SchemaError, match=r"labels/c/0 is not a regular file"):
        ladd_format.open(container)


# -- 3: interoperability -------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**53, -(2**53), 10**400])
def test_manifest_integers_beyond_2_53_are_refused(tmp_path, value):
    path = _small(tmp_path)
    edit_manifest(path, lambda m: m["extra"].update(n=[1, value]), redigest=True)
    _open_both(path, SchemaError, r"extra.n\[1\]: an integer of [0-9]+ digits .* beyond \+-\(2\*\*53 - 1\)")
    edit_manifest(path, lambda m: m["extra"].update(n=[1, 2**53 - 1]), redigest=True)
    ladd_format.open(path).close()


def test_writer_refuses_integers_beyond_2_53(tmp_path):
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
    with pytest.raises(InvalidInputError, match="beyond"):
        ladd_format.write(tmp_path / "c.ladd", images, labels, dense, extra={"seed": 2**64})
    with pytest.raises(InvalidInputError, match="beyond"):
        ladd_format.write(tmp_path / "c.ladd", images, labels, dense, labeler={"training": {"steps": -(2**60)}})
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("version", ["0.9", "0.1", "01.1", "1.01", "1", "1.2.0", "v1.2", "1.2\n", 1.2])
def test_malformed_versions_are_refused(tmp_path, version):
    path = _small(tmp_path, encoding="float32")
    edit_manifest(path, lambda m: m.__setitem__("format_version", version), redigest=True)
    _open_both(path, SchemaError, "is not MAJOR.MINOR")


@pytest.mark.parametrize("version,kwargs,feature", [
    ("1.0", {"encoding": "uint8"}, "encoding 'uint8'"),
    ("1.0", {"encoding": "topk", "encoding_params": {"k": 1, "rule": "renorm"}}, "encoding 'topk'"),
    ("1.1", {"encoding": "float32", "labeler": {"weights": "file:x.pth"}}, "labeler input_size"),
    ("1.0", {"encoding": "float16", "labeler": {"input_size": [16, 16]}}, "labeler input_size"),
])
def test_a_version_older_than_the_features_used_is_refused(tmp_path, version, kwargs, feature):
    path = _small(tmp_path, **kwargs)
    edit_manifest(path, lambda m: m.__setitem__("format_version", version), redigest=True)
    _open_both(path, SchemaError, f"format_version {version} is older than the 1.[12] that its {feature}")
    edit_manifest(path, lambda m: m.__setitem__("format_version", "1.7"), redigest=True)
    ladd_format.open(path).close()  # a newer minor is read as far as it is understood


@pytest.mark.parametrize("key", ["zarr.json", "images/zarr.json"])
@pytest.mark.parametrize("encoding,match", [("utf-16", "not UTF-8"), ("utf-16-le", "not valid JSON"),
                                            ("utf-8-sig", "byte-order mark")])
def test_metadata_must_be_utf8_without_bom(tmp_path, key, encoding, match):
    path = _small(tmp_path)
    meta = path / key
    meta.write_bytes(meta.read_text().encode(encoding))
    _open_both(path, SchemaError, f"{key} .*{match}")


def test_duplicate_json_members_are_refused(tmp_path):
    path = _small(tmp_path)
    text = (path / "zarr.json").read_text()
    (path / "zarr.json").write_text('{"node_type": "group", ' + text[1:])
    _open_both(path, SchemaError, "member 'node_type' appears twice")


@pytest.mark.parametrize("edit,match", [
    (lambda meta: meta["codecs"].insert(0, {"name": "transpose", "configuration": {"order": [0, 1, 2]}}), "codecs"),
    (lambda meta: meta["codecs"][0].update(configuration={"endian": "big"}), "codecs"),
    (lambda meta: meta["codecs"].append({"name": "gzip", "configuration": {"level": 1}}), "codecs"),
    (lambda meta: meta["codecs"].__setitem__(1, {"name": "blosc", "configuration": {}}), "codecs"),
    (lambda meta: meta.update(storage_transformers=[{"name": "x"}]), "storage transformers"),
    (lambda meta: meta.update(chunk_key_encoding={"name": "v2", "configuration": {"separator": "."}}),
     "chunk key encoding"),
    (lambda meta: meta["chunk_grid"]["configuration"]["chunk_shape"].__setitem__(2, 1), "whole images"),
])
def test_codec_chains_outside_section_2_5_are_refused(tmp_path, edit, match):
    path = _small(tmp_path, encoding="uint16")
    _edit_json(path / "dense_labels" / "zarr.json", edit)
    _open_both(path, SchemaError, f"array 'dense_labels'.*{match}")


@pytest.mark.parametrize("encoding,values", [("float32", "probs"), ("float16", "probs"), ("float32", "logits")])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_stored_non_finite_floats_are_refused(tmp_path, encoding, values, bad):
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
    path = ladd_format.write(tmp_path / "c.ladd", images, labels, np.log(dense) if values == "logits" else dense,
                             encoding=encoding, values=values, compression=None)
    chunk = chunk_files(path, "dense_labels")[0]
    stored = np.frombuffer(chunk.read_bytes(), dtype=encoding).copy()
    stored[7] = bad
    chunk.write_bytes(stored.tobytes())
    digest = __import__("hashlib").sha256(stored.tobytes()).hexdigest()
    edit_manifest(path, lambda m: m["arrays"]["dense_labels"].update(sha256=digest), redigest=True)
    with pytest.raises(SchemaError, match="'dense_labels' holds a non-finite value"):
        ladd_format.open(path, verify=True)
    with ladd_format.open(path, verify=False) as ds:
        for read in (lambda: ds.dense_labels[0], lambda: ds.stored_dense()["dense_labels"][:1]):
            with pytest.raises(SchemaError, match="non-finite"):
                read()
        assert np.isfinite(ds.dense_labels[1]).all()  # rows without the value still read


def test_a_wider_dense_index_type_is_refused(tmp_path):
    path = _small(tmp_path, encoding="topk", encoding_params={"k": 2, "rule": "smoothing"}, compression=None)
    chunk = chunk_files(path, "dense_index")[0]
    wide = np.frombuffer(chunk.read_bytes(), np.uint8).astype("<u2")
    chunk.write_bytes(wide.tobytes())
    _edit_json(path / "dense_index" / "zarr.json", lambda meta: (
        meta.update(data_type="uint16"), meta["codecs"].__setitem__(0, {"name": "bytes",
                                                                        "configuration": {"endian": "little"}})))
    digest = __import__("hashlib").sha256(wide.tobytes()).hexdigest()
    edit_manifest(path, lambda m: m["arrays"]["dense_index"].update(dtype="uint16", sha256=digest), redigest=True)
    _open_both(path, SchemaError, "'dense_index' has dtype uint16")


# -- 4: sweeping what killed writers leave -------------------------------------------------


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("suffix,point,count", [(".ladd", "store-set", 3), (".ladd", "fsync", 5),
                                                (".ladd.zip", "before-rename", 1)])
def test_sweep_removes_killed_writers_stages(tmp_path, suffix, point, count):
    from test_crash import _run

    target = tmp_path / f"c{suffix}"
    assert _run(target, point, count).returncode == -signal.SIGKILL
    left = _hidden(tmp_path)
    assert left and all(name.startswith(f".c{suffix}.tmp-") for name in left)
    done = sweep(target)
    assert len(done) == len(left) and _hidden(tmp_path) == []
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
    ladd_format.write(target, images, labels, dense, overwrite=True)
    assert _hidden(tmp_path) == []


def test_sweep_restores_the_old_container_of_a_killed_overwrite(tmp_path):
    from test_crash import _assert_absent_or_complete, _run

    target = tmp_path / "c.ladd"
    ladd_format.write(target, *example_arrays(num_classes=10, ipc=40, size=32, seed=0), encoding="float32")
    assert _run(target, "after-rename", 1, overwrite=True).returncode == -signal.SIGKILL
    assert not target.exists() and len(_hidden(tmp_path)) == 2  # the old one aside, the new stage
    images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
    with pytest.raises(ladd_format.ContainerExistsError):  # the restored container counts as existing
        ladd_format.write(target, images, labels, dense)
    assert _hidden(tmp_path) == [] and _assert_absent_or_complete(target, seed=0)


def test_sweep_removes_an_old_copy_once_the_target_is_complete(tmp_path):
    from test_crash import _assert_absent_or_complete, _run

    target = tmp_path / "c.ladd"
    ladd_format.write(target, *example_arrays(num_classes=10, ipc=40, size=32, seed=0), encoding="float32")
    assert _run(target, "after-rename", 2, overwrite=True).returncode == -signal.SIGKILL
    old, = _hidden(tmp_path)
    chunk_files(tmp_path / old, "images")[0].unlink()  # half deleted when the writer died
    assert sweep(target) == [f"removed {tmp_path / old}"]
    assert _hidden(tmp_path) == [] and _assert_absent_or_complete(target, seed=1)


def test_sweep_keeps_an_incomplete_old_copy_without_a_target(tmp_path):
    old = tmp_path / ".c.ladd.old-0123456789ab"
    _small(tmp_path, name=old.name)
    chunk_files(old, "images")[0].unlink()
    assert sweep(tmp_path / "c.ladd") == [f"kept {old}: {tmp_path / 'c.ladd'} is missing and 0 copies beside "
                                          "it are complete"]
    assert old.exists()


def test_sweep_touches_only_the_writers_names(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "file").write_text("keep")
    names = [".c.ladd.tmp-0123456789a", ".c.ladd.tmp-0123456789abc", ".c.ladd.tmp-0123456789AB",
             ".c.ladd.tmp-0123456789ab.x", ".d.ladd.tmp-0123456789ab", "c.ladd.tmp-0123456789ab",
             ".c.ladd.new-0123456789ab"]
    for name in names:
        (tmp_path / name).mkdir()
    (tmp_path / ".c.ladd.tmp-aaaaaaaaaaaa").symlink_to(precious)
    (tmp_path / ".c.ladd.tmp-bbbbbbbbbbbb").mkdir()
    assert sweep(tmp_path / "c.ladd") == [f"removed {tmp_path / '.c.ladd.tmp-bbbbbbbbbbbb'}"]
    assert (precious / "file").read_text() == "keep"
    assert sorted(names + [".c.ladd.tmp-aaaaaaaaaaaa", "precious"]) == leftovers(tmp_path)


HOLDER = textwrap.dedent("""
    import sys, time
    import ladd_format
    from ladd_format.testing import example_arrays
    images, labels, dense = example_arrays(num_classes=10, ipc=2, size=8)
    writer = ladd_format.Writer(sys.argv[1], num_images=20, image_shape=(8, 8, 3), num_classes=10)
    writer.append(images[:10], labels[:10], dense[:10])
    print("staged", flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("suffix", [".ladd", ".ladd.zip"])
def test_sweep_skips_a_stage_a_live_writer_holds(tmp_path, suffix):
    target = tmp_path / f"c{suffix}"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "staged"
        stage, = _hidden(tmp_path)
        assert sweep(target) == [] and _hidden(tmp_path) == [stage]
        images, labels, dense = example_arrays(num_classes=3, ipc=2, size=8)
        ladd_format.write(target, images, labels, dense)  # another writer sweeps too, and leaves it
        assert _hidden(tmp_path) == [stage]
    finally:
        child.kill()
        child.wait(timeout=30)
    assert sweep(target) == [f"removed {tmp_path / stage}"] and _hidden(tmp_path) == []


# -- 5: memory ------------------------------------------------------------------------------


def test_a_sound_container_reads_within_the_limit(tmp_path):
    path = write_example(tmp_path / "c.ladd.zip", num_classes=10, ipc=100, size=64, encoding="float32")
    outcome, rss, _ = _open_in_child(path)
    assert outcome == "opened" and rss < 400, (outcome, rss)


def test_a_container_at_the_limits_reads_within_the_bound(tmp_path):
    """Every array decodes to almost the 16 MiB allowed whatever is stored, from a few KB."""
    m, k = 5400, 30
    dense = np.zeros((m, 25, k), np.float32)
    dense[..., 0] = 1
    path = ladd_format.write(tmp_path / "c.ladd.zip", np.zeros((m, 32, 32, 3), np.uint8), np.zeros(m, np.int64),
                             dense, encoding="float32", mean=[0.5] * 3, std=[0.5] * 3)
    assert path.stat().st_size < 100_000
    outcome, rss, _ = _open_in_child(path)
    assert outcome == "opened" and rss < 300, (outcome, rss)


# -- 6: labeler checkpoints ---------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    """A saved labeler (untrained: loading is what is tested) and its JSON description."""
    from ladd_format.labeler import Labeler, LabelerConfig, _build

    config = LabelerConfig("convnet", 1, 10, (28, 28), 8, 3, (0.5,), (0.5,), "synthetic", {})
    Labeler(_build(config), config, 1).save(tmp_path / "lab.pt")
    return tmp_path / "lab.pt", tmp_path / "lab.pt.json"


@pytest.mark.parametrize("field, value", [("width", 10**7), ("num_classes", 10**9), ("depth", 10**6),
                                          ("image_size", [10**6, 10**6])])
def test_a_labeler_description_declaring_a_huge_network_is_refused_unbuilt(checkpoint, field, value):
    pt, meta_path = checkpoint
    meta = json.loads(meta_path.read_text())
    meta["config"][field] = value
    meta_path.write_text(json.dumps(meta))
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_AS}, {LIMIT_AS}))\n"
            "from ladd_format.labeler import load_labeler\n"
            f"try:\n    load_labeler({str(pt)!r})\nexcept Exception as exc:\n    print(type(exc).__name__, exc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1"})
    assert out.stdout.split()[0] in ("InputTooLargeError", "LabelerError"), (out.stdout, out.stderr[-2000:])
    assert "not a labeler description" in out.stdout or "more than" in out.stdout


def test_an_oversized_labeler_file_is_refused_unread(checkpoint):
    from ladd_format.labeler import load_labeler

    pt, meta_path = checkpoint
    with open(pt, "r+b") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB that would be read whole
    with pytest.raises(ladd_format.InputTooLargeError, match="far more than the .* bytes of weights"):
        load_labeler(pt)
    with open(meta_path, "r+b") as f:
        f.truncate(2 << 20)
    with pytest.raises(ladd_format.InputTooLargeError, match="more than the 1048576 a labeler description"):
        load_labeler(pt)


@pytest.mark.parametrize("text", [b"\xff\xfe{", b"[" * 100_000, b'{"config": 1, "epochs": 1}', b"null"])
def test_a_malformed_labeler_description_is_a_labeler_error(checkpoint, text):
    from ladd_format.labeler import LabelerError, load_labeler

    pt, meta_path = checkpoint
    meta_path.write_bytes(text)
    with pytest.raises(LabelerError, match="not a labeler description"):
        load_labeler(pt)


def test_an_oversized_teacher_file_is_refused_unread(tmp_path, monkeypatch):
    from ladd_format import teachers

    path = tmp_path / "w.pt"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    monkeypatch.setattr(teachers, "MAX_BYTES", 1000)
    with pytest.raises(ladd_format.InputTooLargeError, match="more than the 1000 a teacher's weights may have"):
        teachers._read(path)


def test_the_hardening_errors_are_public():
    from ladd_format import sources

    assert sources.InputTooLargeError is ladd_format.InputTooLargeError
    assert sources.UnsafePathError is ladd_format.UnsafePathError
    for name in ("InputTooLargeError", "UnsafePathError", "LimitExceededError", "sweep"):
        assert name in ladd_format.__all__
    assert issubclass(ladd_format.LimitExceededError, SchemaError)
    assert issubclass(ladd_format.UnsafePathError, InvalidInputError)
