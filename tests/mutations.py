"""A seeded corpus of damaged and hostile containers, and the child process that judges them.

Every case starts from a sound container (four variants: encodings, codecs, both forms) and
changes it one way: bit flips, truncations, deletions, garbage, chunks or metadata copied from
another valid container, edited array metadata, edited manifest fields (with and without the
digest recomputed), JSON text tricks, zip-level damage, symlinks, special files and extra
files. The child opens each case with ``verify=True``, reads every array in full and runs
``ladd validate``, under an address-space limit and a timer. A case passes when it ends in a
``LaddError`` or in the exact original data (or, when the manifest digest was recomputed by the
"attacker", in data the rewritten manifest describes), within 5 s and 4 x the container's
stored bytes + 500 MB, and ``ladd validate`` answers in one line.

``python tests/mutations.py`` builds the corpus in a temporary folder, judges it with two
children and prints the counts by kind (the figures of issue 10's note).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20261127
SECONDS = 5.0
MEMORY = 500 << 20  # plus 4 x the stored bytes
VARIANTS = {
    "uint8-zstd": dict(compression="zstd"),
    "float16-gzip": dict(encoding="float16", compression="gzip"),
    "topk-raw": dict(encoding="topk", encoding_params={"k": 2, "rule": "renorm"}, compression=None),
    "logits-zstd": dict(values="logits", temperature=2.0, compression="zstd"),
}
COUNTS = {  # cases per kind (kinds that enumerate their targets take what they find)
    "flip": 320, "truncate": 160, "garbage": 100, "transplant": 160, "array-meta": 360,
    "manifest": 520, "json-text": 130, "zip": 330, "symlink": 130, "special": 60, "extra": 60,
}
HOSTILE = [None, True, -1, 0, 1, 2**31, 2**53 + 1, 10**400, 1e308, -0.0, 0.5, float("nan"), float("inf"), "",
           "x", "\ud800", "a" * 100_000, [], [1, 2, 3], {}, {"a": {"b": [None]}}, "1.0", "9.0"]


# -- building the pristine containers ---------------------------------------------------------


def build(root: Path) -> Path:
    """Write each variant (and a donor of the same geometry, other data) as a folder and a zip."""
    import ladd_format
    from ladd_format import _write
    from ladd_format.testing import write_example

    root.mkdir(parents=True, exist_ok=True)
    saved = _write.CHUNK_BYTES
    _write.CHUNK_BYTES = 400  # several chunks an array, so chunks can be swapped and counted
    try:
        for name, kwargs in VARIANTS.items():
            for role, seed in (("pristine", 0), ("donor", 1)):
                kw = dict(kwargs)
                if kw.get("values") == "logits":
                    from ladd_format.testing import example_arrays

                    images, labels, _ = example_arrays(num_classes=3, ipc=2, size=8, seed=seed)
                    logits = np.random.default_rng(seed).normal(0, 2, (6, 25, 3)).astype(np.float32)
                    path = ladd_format.write(root / name / f"{role}.ladd", images, labels, logits, **kw)
                else:
                    path = write_example(root / name / f"{role}.ladd", seed=seed, num_classes=3, ipc=2, size=8, **kw)
                ladd_format.pack(path, root / name / f"{role}.ladd.zip")
    finally:
        _write.CHUNK_BYTES = saved
    return root


def _files(container: Path) -> list[str]:
    return sorted(p.relative_to(container).as_posix() for p in container.rglob("*") if p.is_file())


def _target_kind(name: str) -> str:
    if name == "zarr.json":
        return "root zarr.json"
    if name.endswith("zarr.json"):
        return "array zarr.json"
    return f"{name.split('/')[0]} chunk"


# -- the corpus: plain, JSON-able case descriptions --------------------------------------------


def corpus(root: Path) -> list[dict[str, Any]]:
    """Every case, in a fixed order from :data:`SEED` (the children rebuild the same list)."""
    rng = random.Random(SEED)
    variants = sorted(VARIANTS)
    files = {v: _files(root / v / "pristine.ladd") for v in variants}
    cases: list[dict[str, Any]] = []

    def add(kind: str, variant: str, form: str, target: str, **params: Any) -> None:
        cases.append(dict(kind=kind, variant=variant, form=form, target=target, **params))

    def pick() -> tuple[str, str, str]:
        v = rng.choice(variants)
        return v, rng.choice(("dir", "zip")), rng.choice(files[v])

    for v in variants:  # every file of every variant deleted, in both forms
        for f in files[v]:
            for form in ("dir", "zip"):
                add("delete", v, form, f)
    for _ in range(COUNTS["flip"]):
        v, form, f = pick()
        add("flip", v, form, f, offset=rng.randrange(1 << 20), mask=rng.randrange(1, 256))
    for _ in range(COUNTS["truncate"]):
        v, form, f = pick()
        add("truncate", v, form, f, keep=rng.choice([0, 1, rng.random()]))
    for _ in range(COUNTS["garbage"]):
        v, form, f = pick()
        add("garbage", v, form, f, size=rng.choice([0, 1, 16, 200, 4096, 1 << 20]), seed=rng.randrange(1 << 30))
    for _ in range(COUNTS["transplant"]):
        v, form, f = pick()
        how = rng.choice(["donor-same-key", "donor-same-key", "swap-chunks", "other-array", "donor-array-dir"])
        add("transplant", v, form, f, how=how, seed=rng.randrange(1 << 30))
    for _ in range(COUNTS["array-meta"]):
        v = rng.choice(variants)
        array = rng.choice(["images", "labels", "dense_labels"])
        field = rng.choice(["shape", "shape", "chunk_shape", "chunk_shape", "data_type", "fill_value", "codecs",
                            "codec-order", "endian", "separator", "node_type", "zarr_format", "dimension_names",
                            "inflate"])
        add("array-meta", v, rng.choice(("dir", "zip")), f"{array}/zarr.json", field=field,
            axis=rng.randrange(4), value=rng.randrange(len(HOSTILE) + 6), redigest=rng.random() < 0.5)
    for _ in range(COUNTS["manifest"]):
        v = rng.choice(variants)
        add("manifest", v, rng.choice(("dir", "zip")), "zarr.json", path_seed=rng.randrange(1 << 30),
            op=rng.choice(["replace", "replace", "replace", "delete", "add"]), value=rng.randrange(len(HOSTILE)),
            redigest=rng.random() < 0.5)
    for _ in range(COUNTS["json-text"]):
        v, form, _ = pick()
        f = rng.choice(["zarr.json"] + [n for n in files[v] if n.endswith("/zarr.json")])
        add("json-text", v, form, f, trick=rng.choice(["bom", "utf-16", "duplicate", "trailing", "nan", "deep",
                                                       "huge", "not-json", "empty-object", "array", "latin-1"]))
    for _ in range(COUNTS["zip"]):
        v = rng.choice(variants)
        add("zip", v, "zip", "archive", trick=rng.choice(
            ["flip-central", "flip-local", "flip-end", "truncate", "prepend", "append", "method", "size",
             "compressed-size", "crc", "name", "duplicate", "extra-entry", "deflated", "bomb", "empty",
             "comment-length", "offset"]), offset=rng.randrange(1 << 20), seed=rng.randrange(1 << 30))
    for _ in range(COUNTS["symlink"]):
        v = rng.choice(variants)
        add("symlink", v, "dir", rng.choice(files[v] + ["images", "dense_labels/c", "labels"]),
            to=rng.choice(["outside-copy", "dev-zero", "etc-passwd", "sparse-8g", "dangling", "loop",
                           "inside-other", "inside-copy", "escape-relative", "proc-self"]))
    for _ in range(COUNTS["special"]):
        v = rng.choice(variants)
        add("special", v, "dir", rng.choice(files[v] + ["images/c", "labels"]),
            what=rng.choice(["fifo", "directory", "socket", "empty-file-for-dir"]))
    for _ in range(COUNTS["extra"]):
        v = rng.choice(variants)
        add("extra", v, rng.choice(("dir", "zip")), "container",
            what=rng.choice(["chunk-beyond", "junk-root", "hidden", "array-dir", "deep-dirs", "sparse-unreferenced",
                             "stage-sibling"]))
    return cases


# -- applying a case ----------------------------------------------------------------------------


def _hostile(i: int) -> Any:
    return HOSTILE[i % len(HOSTILE)]


def _dump(meta: Any) -> str:
    return json.dumps(meta)  # NaN and Infinity as their (non-standard) tokens, surrogates escaped


def _json_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            paths += _json_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            paths += _json_paths(v, prefix + (i,))
    return paths


def _set(node: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _redigest(manifest: dict) -> None:
    from ladd_format.manifest import manifest_digest

    with contextlib.suppress(Exception):  # an edit the digest cannot cover keeps the old digest
        manifest["manifest_sha256"] = manifest_digest(manifest)


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(_dump(meta))


def _array_meta(case: dict, container: Path) -> None:
    array = case["target"].split("/")[0]
    field, axis, raw = case["field"], case["axis"], case["value"]
    value = _hostile(raw) if raw < len(HOSTILE) else [10**9, 2**40, 7, 3, 2, 6][raw - len(HOSTILE)]

    def edit(meta: dict) -> None:
        rank = len(meta["shape"])
        if field in ("shape", "inflate"):
            meta["shape"][axis % rank] = value if field == "shape" else 10**9
        elif field == "chunk_shape":
            meta["chunk_grid"]["configuration"]["chunk_shape"][axis % rank] = value
        elif field == "data_type":
            meta["data_type"] = ["float64", "int8", "uint64", "bool", "complex64", value][axis % 6]
        elif field == "fill_value":
            meta["fill_value"] = value
        elif field == "codecs":
            meta["codecs"] = [[], [{"name": "transpose", "configuration": {"order": list(range(rank))[::-1]}}]
                              + meta["codecs"], meta["codecs"] + [{"name": "crc32c"}], value][axis % 4]
        elif field == "codec-order":
            meta["codecs"] = meta["codecs"][::-1]
        elif field == "endian":
            for codec in meta["codecs"]:
                if codec["name"] == "bytes":
                    codec.setdefault("configuration", {})["endian"] = "big"
        elif field == "separator":
            meta["chunk_key_encoding"] = {"name": "v2", "configuration": {"separator": "."}}
        elif field == "node_type":
            meta["node_type"] = "group"
        elif field == "zarr_format":
            meta["zarr_format"] = value
        elif field == "dimension_names":
            meta["dimension_names"] = value

    _edit_json(container / array / "zarr.json", edit)
    if field == "inflate" or case["redigest"]:  # the attacker also edits the manifest to agree
        def agree(meta: dict) -> None:
            manifest = meta["attributes"]["ladd"]
            shape = json.loads((container / array / "zarr.json").read_text())["shape"]
            manifest["arrays"][array]["shape"] = shape
            if array == "images" and isinstance(shape, list) and len(shape) == 4:
                manifest["num_images"] = shape[0]
                manifest["image"].update(height=shape[1], width=shape[2], channels=shape[3])
            _redigest(manifest)

        with contextlib.suppress(Exception):
            _edit_json(container / "zarr.json", agree)


def _manifest(case: dict, container: Path) -> None:
    def edit(meta: dict) -> None:
        manifest = meta["attributes"]["ladd"]
        paths = [p for p in _json_paths(manifest) if p != ("manifest_sha256",)]
        path = random.Random(case["path_seed"]).choice(paths)
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        if case["op"] == "delete":
            del parent[path[-1]]
        elif case["op"] == "add":
            target = parent if isinstance(parent, dict) else manifest
            target["zz_unknown_member"] = _hostile(case["value"])
        else:
            parent[path[-1]] = _hostile(case["value"])
        if case["redigest"]:
            _redigest(manifest)

    _edit_json(container / "zarr.json", edit)


def _json_text(case: dict, container: Path) -> None:
    path = container / case["target"]
    text = path.read_text()
    trick = case["trick"]
    if trick == "bom":
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    elif trick == "utf-16":
        path.write_bytes(text.encode("utf-16"))
    elif trick == "latin-1":
        path.write_bytes(text.replace('"', '"\xe9', 1).encode("latin-1", "replace"))
    elif trick == "duplicate":
        path.write_text('{"zarr_format": 3, "node_type": "array", ' + text.lstrip()[1:])
    elif trick == "trailing":
        path.write_text(text + "\n{}")
    elif trick == "nan":
        path.write_text(text.replace("3", "NaN", 1))
    elif trick == "deep":
        meta = json.loads(text)
        meta["attributes"] = meta.get("attributes", {})
        path.write_text(_dump(meta)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif trick == "huge":
        path.write_text(text[:-1] + ', "pad": "' + "x" * (5 << 20) + '"}')
    elif trick == "not-json":
        path.write_text(text[: len(text) // 2])
    elif trick == "empty-object":
        path.write_text("{}")
    elif trick == "array":
        path.write_text("[" + text + "]")


def _outside(scratch: Path, name: str, data: bytes = b"outside") -> Path:
    target = scratch / "outside" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def _replace(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _symlink(case: dict, container: Path, scratch: Path, donor: Path) -> None:
    path = container / case["target"]
    to = case["to"]
    if to == "outside-copy":  # the very same bytes, but outside: still refused
        if path.is_dir():
            dest = scratch / "outside" / path.name
            shutil.copytree(path, dest)
        else:
            dest = _outside(scratch, path.name, path.read_bytes())
    elif to == "dev-zero":
        dest = Path("/dev/zero")
    elif to == "etc-passwd":
        dest = Path("/etc/passwd")
    elif to == "proc-self":
        dest = Path("/proc/self/status")
    elif to == "sparse-8g":
        dest = scratch / "outside" / "sparse"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as f:
            f.truncate(8 << 30)
    elif to == "dangling":
        dest = container / "no-such-file"
    elif to == "loop":
        dest = path
    elif to == "inside-other":
        others = sorted(p for p in container.rglob("*") if p.is_file() and p != path and not p.is_symlink())
        dest = others[len(others) // 2]
    elif to == "inside-copy":  # a link to a copy of itself inside the container: may be followed
        if path.is_dir():
            dest = container / f".copy-{path.name}"
            shutil.copytree(path, dest)
        else:
            dest = container / f"copy-{path.name}"
            shutil.copyfile(path, dest)
    else:  # escape-relative: ../../.. up and out
        dest = Path(os.path.relpath(donor / case["target"], path.parent))
    _replace(path)
    path.symlink_to(dest)


def _special(case: dict, container: Path) -> None:
    path = container / case["target"]
    what = case["what"]
    _replace(path)
    if what == "fifo":
        os.mkfifo(path)
    elif what == "directory":
        path.mkdir()
    elif what == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    else:
        path.write_bytes(b"")


def _extra(case: dict, container: Path, scratch: Path, donor: Path) -> None:
    what = case["what"]
    if what == "chunk-beyond":
        target = container / "images" / "c" / "99" / "0" / "0" / "0"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(os.urandom(64))
    elif what == "junk-root":
        (container / "README.txt").write_text("hello")
    elif what == "hidden":
        (container / ".DS_Store").write_bytes(os.urandom(32))
    elif what == "array-dir":
        shutil.copytree(donor / "labels", container / "other_labels")
    elif what == "deep-dirs":
        deep = container / "/".join(["d"] * 200)
        deep.mkdir(parents=True)
        (deep / "x").write_bytes(b"x")
    elif what == "sparse-unreferenced":
        with open(container / "big.bin", "wb") as f:
            f.truncate(8 << 30)
    else:  # a killed writer's stage inside the folder
        shutil.copytree(donor, container / ".c.ladd.tmp-0123456789ab")


def _bytes_damage(case: dict, path: Path) -> None:
    data = bytearray(path.read_bytes())
    kind = case["kind"]
    if kind == "flip" and data:
        data[case["offset"] % len(data)] ^= case["mask"]
    elif kind == "truncate":
        keep = case["keep"]
        data = data[: keep if isinstance(keep, int) else int(len(data) * keep)]
    elif kind == "garbage":
        data = bytearray(np.random.default_rng(case["seed"]).integers(0, 256, case["size"], dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))


def _transplant(case: dict, container: Path, donor: Path) -> None:
    rng = random.Random(case["seed"])
    name, how = case["target"], case["how"]
    path = container / name
    chunks = [p for p in _files(container) if "/c/" in p]
    if how == "donor-same-key":
        shutil.copyfile(donor / name, path)
    elif how == "swap-chunks":
        a, b = rng.sample(chunks, 2)
        data_a, data_b = (container / a).read_bytes(), (container / b).read_bytes()
        (container / a).write_bytes(data_b)
        (container / b).write_bytes(data_a)
    elif how == "other-array":
        source = rng.choice(chunks)
        dest = rng.choice([c for c in chunks if c.split("/")[0] != source.split("/")[0]])
        shutil.copyfile(container / source, container / dest)
    else:
        array = name.split("/")[0] if "/" in name else "images"
        shutil.rmtree(container / array)
        shutil.copytree(donor / array, container / array)


def _zip_entry_table(data: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """(central directory offset, end record offset, [(central record offset, local header offset)])."""
    end = data.rfind(b"PK\x05\x06")
    count, size, start = struct.unpack_from("<HII", data, end + 10)
    records, pos = [], start
    for _ in range(count):
        if data[pos:pos + 4] != b"PK\x01\x02":
            break
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        records.append((pos, struct.unpack_from("<I", data, pos + 42)[0]))
        pos += 46 + name_len + extra_len + comment_len
    return start, end, records


def _zip(case: dict, archive: Path, scratch: Path) -> None:
    rng = random.Random(case["seed"])
    data = bytearray(archive.read_bytes())
    start, end, records = _zip_entry_table(bytes(data))
    central, local = rng.choice(records)
    trick = case["trick"]

    def put(offset: int, fmt: str, value: int) -> None:
        struct.pack_into(fmt, data, offset, value)

    if trick == "flip-central":
        data[start + case["offset"] % (end - start)] ^= 1 << rng.randrange(8)
    elif trick == "flip-local":
        data[local + case["offset"] % 30] ^= 1 << rng.randrange(8)
    elif trick == "flip-end":
        data[end + case["offset"] % (len(data) - end)] ^= 1 << rng.randrange(8)
    elif trick == "truncate":
        data = data[: case["offset"] % len(data)]
    elif trick == "prepend":
        data = bytearray(os.urandom(rng.randrange(1, 5000))) + data
    elif trick == "append":
        data += os.urandom(rng.randrange(1, 5000))
    elif trick == "method":
        put(central + 10, "<H", rng.choice([8, 12, 14, 93, 99, 0xFFFF]))
    elif trick == "size":
        put(central + 24, "<I", rng.choice([0, 1, 0xFFFFFFFF, 1 << 30, rng.randrange(1 << 16)]))
    elif trick == "compressed-size":
        put(central + 20, "<I", rng.choice([0, 1, 0xFFFFFFFF, 1 << 30, rng.randrange(1 << 16)]))
    elif trick == "crc":
        put(central + 16, "<I", rng.randrange(1 << 32))
    elif trick == "name":
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        name = bytearray(data[central + 46:central + 46 + name_len])
        choice = rng.choice(["backslash", "dotdot", "absolute", "nul", "other"])
        if choice == "backslash":
            name = bytearray(bytes(name).replace(b"/", b"\\"))
        elif choice == "dotdot" and name_len >= 3:
            name[:3] = b"../"
        elif choice == "absolute":
            name[:1] = b"/"
        elif choice == "nul":
            name[rng.randrange(name_len)] = 0
        else:  # another entry's name of the same length: a duplicate
            for other, _ in records:
                other_len = struct.unpack_from("<H", data, other + 28)[0]
                if other != central and other_len == name_len:
                    name = bytearray(data[other + 46:other + 46 + other_len])
                    break
        data[central + 46:central + 46 + name_len] = name
    elif trick == "offset":
        put(central + 42, "<I", rng.choice([0, 1, 0xFFFFFFFF, len(data), rng.randrange(len(data))]))
    elif trick == "comment-length":
        put(end + 20, "<H", rng.randrange(1, 0xFFFF))
    elif trick == "empty":
        data = bytearray()
    else:
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
            entries = [(info, zf.read(info)) for info in zf.infolist()]
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf, contextlib.suppress(Exception):
            for i, (info, payload) in enumerate(entries):
                method = zipfile.ZIP_DEFLATED if trick == "deflated" else zipfile.ZIP_STORED
                if trick == "bomb" and "/c/" in info.filename and i % 2 == 0:
                    payload, method = b"\0" * (64 << 20), zipfile.ZIP_DEFLATED
                zf.writestr(info.filename, payload, compress_type=method)
            if trick == "duplicate":
                info, payload = rng.choice(entries)
                with_warning = zipfile.ZipInfo(info.filename)
                with contextlib.suppress(Exception), __import__("warnings").catch_warnings():
                    __import__("warnings").simplefilter("ignore")
                    zf.writestr(with_warning, payload[::-1] or b"x")
            if trick == "extra-entry":
                zf.writestr(rng.choice(["../evil", "/abs", "junk.txt", "images/c/99/0/0/0", "a\\b"]), b"x" * 10)
        data = bytearray(out.getvalue())
    archive.write_bytes(bytes(data))


def apply(case: dict, root: Path, scratch: Path) -> Path:
    """Build the case's container under ``scratch`` and return its path."""
    variant = root / case["variant"]
    donor = variant / "donor.ladd"
    container = scratch / "c.ladd"
    if case["kind"] == "zip":
        archive = scratch / "c.ladd.zip"
        shutil.copyfile(variant / "pristine.ladd.zip", archive)
        _zip(case, archive, scratch)
        return archive
    shutil.copytree(variant / "pristine.ladd", container)
    kind = case["kind"]
    target = container / case["target"]
    if kind == "delete":
        target.unlink()
    elif kind in ("flip", "truncate", "garbage"):
        _bytes_damage(case, target)
    elif kind == "transplant":
        _transplant(case, container, donor)
    elif kind == "array-meta":
        _array_meta(case, container)
    elif kind == "manifest":
        _manifest(case, container)
    elif kind == "json-text":
        _json_text(case, container)
    elif kind == "symlink":
        _symlink(case, container, scratch, donor)
    elif kind == "special":
        _special(case, container)
    elif kind == "extra":
        _extra(case, container, scratch, donor)
    if case["form"] == "zip":
        return _zip_folder(container, scratch / "c.ladd.zip")
    return container


def _zip_folder(source: Path, target: Path) -> Path:
    """Pack without checks (stored entries, as the format wants), so damage travels into the zip."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
            if f.stat().st_size < (64 << 20):
                zf.write(f, f.relative_to(source).as_posix())
    return target


# -- judging (in a child process) ---------------------------------------------------------------


class _Timeout(BaseException):
    """Raised by the timer; a BaseException so that no ``except Exception`` swallows it."""


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) * 1024


def _read_all(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    import ladd_format

    with ladd_format.open(path, verify=True) as ds:
        return (np.asarray(ds.images), np.asarray(ds.labels), np.asarray(ds.dense_labels),
                ds.manifest.model_dump(mode="json"))


def _validate(path: Path) -> tuple[int, str, str]:
    from ladd_format import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(["validate", str(path)])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
        except _Timeout:
            raise
        except BaseException:  # reported as the failure it is
            import traceback

            traceback.print_exc()
            rc = -1
    return rc, out.getvalue(), err.getvalue()


def judge(case: dict, root: Path, scratch: Path, expected: dict, limit: int) -> dict:
    """Open, read and validate one case; say what happened and whether that is allowed."""
    import ladd_format

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    path = apply(case, root, scratch)
    images, labels, dense, manifest = expected[case["variant"]]
    stored = expected[case["variant"] + ":stored"]
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM: the peak of this case alone
        f.write("5")
    base = _status("VmRSS:")
    signal.setitimer(signal.ITIMER_REAL, 30)
    start = time.perf_counter()
    error = ""
    try:
        got = _read_all(path)
        same = (np.array_equal(got[0], images) and np.array_equal(got[1], labels)
                and np.array_equal(got[2], dense, equal_nan=True))
        outcome = "exact" if same and got[3] == manifest else "accepted-edit"
    except ladd_format.LaddError as exc:
        outcome, error = "typed", f"{type(exc).__name__}: {exc}"
    except MemoryError as exc:
        outcome, error = "memory", repr(exc)
    except _Timeout:
        outcome = "timeout"
    except Exception as exc:
        outcome, error = "untyped", f"{type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM:") - base
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        rc, out, err = _validate(path)
    except _Timeout:
        rc, out, err = -2, "", "timeout"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    lines = (out + err).strip().splitlines()
    problems = []
    if outcome in ("untyped", "memory", "timeout"):
        problems.append(f"open: {outcome} {error}")
    if outcome == "accepted-edit" and not _digest_rewritten(case):
        problems.append("open: data or manifest changed without a rewritten digest")
    if seconds > SECONDS:
        problems.append(f"open + read took {seconds:.1f} s")
    if peak > limit:
        problems.append(f"open + read peaked at {peak >> 20} MiB above the start")
    want = 1 if outcome == "typed" else 0
    if rc != want or len(lines) != 1 or "Traceback" in out + err:
        problems.append(f"validate: exit {rc} (want {want}), {len(lines)} lines: {(out + err)[-300:]!r}")
    shutil.rmtree(scratch, ignore_errors=True)
    return dict(outcome=outcome, error=error[:200], seconds=round(seconds, 4), peak_mib=peak >> 20,
                stored=stored, validate=lines[0][:200] if lines else "", problems=problems)


def _digest_rewritten(case: dict) -> bool:
    """Cases where the "attacker" rewrote the manifest digest (or brought a whole valid one)."""
    return bool(case.get("redigest")) or case.get("field") == "inflate"


def _child(root: Path, scratch: Path, first: int, last: int) -> None:
    """Judge cases [first, last), one JSON line each, under an address-space limit."""
    cases = corpus(root)
    expected: dict[str, Any] = {}
    for variant in VARIANTS:
        pristine = root / variant / "pristine.ladd"
        expected[variant] = _read_all(pristine)
        expected[variant + ":stored"] = sum(p.stat().st_size for p in pristine.rglob("*") if p.is_file())
        _validate(pristine)  # warm: thread pools and imports exist before the limit is set
    stored = max(v for k, v in expected.items() if k.endswith(":stored"))
    limit = 4 * stored + MEMORY
    address_space = _status("VmSize:") + limit + (256 << 20)  # + thread stacks and arenas' headroom
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    def alarm(*_):
        raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    for i in range(first, last):
        print(json.dumps({"start": i}), flush=True)
        try:
            result = judge(cases[i], root, scratch / str(i), expected, limit)
        except BaseException as exc:  # a case that broke the judge itself is a failure too
            result = dict(outcome="judge-error", error=f"{type(exc).__name__}: {exc}", problems=["judge failed"])
        print(json.dumps({"case": i, **result}), flush=True)


def scratch_folder(fallback: Path) -> Path:
    """/dev/shm when it has room (40 x faster to build and remove small trees), else ``fallback``."""
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > (1 << 30):
            return Path(tempfile.mkdtemp(prefix="ladd-mutations-", dir=shm))
    return fallback


def run(root: Path, scratch: Path, *, workers: int = 2, timeout: float = 1500) -> list[dict]:
    """Judge the whole corpus with ``workers`` children; a child that dies is restarted after
    the case that killed it (recorded as a ``crash``)."""
    total = len(corpus(root))
    bounds = [(total * w // workers, total * (w + 1) // workers) for w in range(workers)]
    results: dict[int, dict] = {}
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    deadline = time.monotonic() + timeout
    pending = list(bounds)
    while pending:
        procs = [(lo, hi, subprocess.Popen([sys.executable, __file__, "--child", str(root), str(scratch / str(lo)),
                                             str(lo), str(hi)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, env=env)) for lo, hi in pending]
        pending = []
        for lo, hi, proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            started = lo
            for line in out.splitlines():
                record = json.loads(line)
                if "start" in record:
                    started = record["start"]
                else:
                    results[record.pop("case")] = record
            done = max([i for i in results if lo <= i < hi], default=lo - 1) + 1
            if done < hi:
                if started not in results:
                    results[started] = dict(outcome="crash", error=err[-500:], problems=[f"child died: {err[-300:]}"])
                if started + 1 < hi and time.monotonic() < deadline:
                    pending.append((started + 1, hi))
    cases = corpus(root)
    return [{**cases[i], **results.get(i, dict(outcome="not-run", problems=["not run"]))} for i in range(total)]


def report(results: list[dict]) -> str:
    """Counts by kind and outcome, then by target, as a markdown table."""
    outcomes = ["exact", "typed", "accepted-edit", "untyped", "memory", "timeout", "crash", "judge-error",
                "not-run"]
    by_kind: dict[str, Counter] = {}
    for r in results:
        by_kind.setdefault(r["kind"], Counter())[r["outcome"]] += 1
        by_kind[r["kind"]]["failed"] += bool(r["problems"])
    lines = ["| kind | cases | " + " | ".join(outcomes[:3]) + " | failed |", "|---" * 5 + "|---|"]
    for kind, c in sorted(by_kind.items()):
        lines.append(f"| {kind} | {sum(c[o] for o in outcomes)} | " + " | ".join(str(c[o]) for o in outcomes[:3])
                     + f" | {c['failed']} |")
    total = Counter(r["outcome"] for r in results)
    lines.append(f"| **all** | {len(results)} | " + " | ".join(str(total[o]) for o in outcomes[:3])
                 + f" | {sum(bool(r['problems']) for r in results)} |")
    errors = Counter(r["error"].split(":")[0] for r in results if r["outcome"] == "typed")
    targets = Counter(_target_kind(r["target"]) if r["kind"] not in ("zip", "extra") else r["kind"] for r in results)
    seconds = max(r.get("seconds", 0) for r in results)
    peak = max(r.get("peak_mib", 0) for r in results)
    lines += ["", "typed errors: " + ", ".join(f"{k} {v}" for k, v in errors.most_common()),
              "targets: " + ", ".join(f"{k} {v}" for k, v in targets.most_common()),
              f"slowest open + read: {seconds:.3f} s; largest peak above the start: {peak} MiB"]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            root = build(Path(tmp) / "pristine")
            started = time.monotonic()
            scratch = scratch_folder(Path(tmp) / "scratch")
            try:
                results = run(root, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            print(report(results))
            print(f"{len(results)} cases in {time.monotonic() - started:.0f} s")
            for r in results:
                if r["problems"]:
                    print(json.dumps(r)[:600])
