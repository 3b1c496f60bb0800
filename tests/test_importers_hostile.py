"""Importer inputs come from strangers: image bombs, damaged files, tensors that declare more than
they store, zip bombs, huge files, links out of the folder and FIFOs are typed errors that name
the file, write nothing and stay within bounded memory and time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import leftovers
from PIL import Image

import ladd_format
from ladd_format.errors import LaddError
from ladd_format.importers import (
    MAX_BYTES,
    MAX_IMAGE_PIXELS,
    NORMALIZATIONS,
    InputTooLargeError,
    UnsafePathError,
    import_distilled,
    read_distilled,
)

CIFAR10 = NORMALIZATIONS["cifar10"]
BROADCAST = "zero or overlapping strides"


def _png(path: Path, width: int, height: int, *, rows: bool = True) -> Path:
    """A 1-bit greyscale PNG built chunk by chunk: all-zero rows compress to a few KB at any size;
    ``rows=False`` leaves the data empty, so only the header claims the size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    data = b"".join(z.compress(row) for _ in range(height if rows else 0)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _image(path: Path, seed: int = 0, fmt: str | None = None, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return path


def _normalised(m: int = 4, size: int = 6) -> torch.Tensor:
    u8 = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (m, 3, size, size), dtype=np.uint8))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in CIFAR10)
    return (u8.float() / 255 - mean) / std


def _run(root: Path, images: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    torch.save(_normalised() if images is None else images, root / "images_best.pt")
    torch.save(torch.arange(4) if labels is None else labels, root / "labels_best.pt")
    return root


def _refused(error: type[LaddError], match: str, kind: str, src: Path, out: Path, **kwargs) -> LaddError:
    """The import fails with ``error`` and writes nothing at ``out``."""
    with pytest.raises(error, match=match) as caught:
        import_distilled(kind, src, out, **kwargs)
    assert not out.exists() and not any(p.name.startswith(out.name) for p in out.parent.iterdir())
    return caught.value


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging: a read blocked on a FIFO is interrupted by the alarm."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- image files ------------------------------------------------------------------------------


@pytest.mark.parametrize("case, error, match", [
    ("header-60000", InputTooLargeError, r"x.png: declares .*more than the 67108864 pixels one image may have"),
    ("real-20000", InputTooLargeError, r"x.png: declares .*more than the 67108864 pixels one image may have"),
    ("real-9000", InputTooLargeError, r"x.png: declares 9000 x 9000 pixels, more than the 67108864 pixels"),
    ("not-an-image", ladd_format.InvalidInputError, r"x.png: not a readable image \(UnidentifiedImageError"),
    ("postscript", ladd_format.InvalidInputError, r"x.png: not a readable image \(UnidentifiedImageError"),
    ("truncated-jpeg", ladd_format.InvalidInputError, r"x.jpg: not a readable image \(OSError: "),
    ("truncated-png", ladd_format.InvalidInputError, r"x.png: not a readable image"),
])
def test_bad_image_files_are_typed_errors_naming_the_file(tmp_path, case, error, match):
    cls = tmp_path / "src" / "cls"
    _image(cls / "a.png")
    if case == "header-60000":
        _png(cls / "x.png", 60000, 60000, rows=False)
    elif case == "real-20000":  # PIL's own guard refuses it in Image.open
        _png(cls / "x.png", 20000, 20000)
    elif case == "real-9000":  # under PIL's guard (89 M pixels), over ladd's
        _png(cls / "x.png", 9000, 9000)
    elif case == "not-an-image":
        (cls / "x.png").write_bytes(b"these are not the pixels you are looking for")
    elif case == "postscript":  # PIL would hand it to Ghostscript: only image decoders are used
        (cls / "x.png").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    elif case == "truncated-jpeg":
        data = _image(cls / "x.jpg", fmt="JPEG").read_bytes()
        (cls / "x.jpg").write_bytes(data[:len(data) // 2])
    else:
        data = _image(cls / "x.png").read_bytes()
        (cls / "x.png").write_bytes(data[:len(data) - 30])
    _refused(error, match, "folder", tmp_path / "src", tmp_path / "out.ladd")


def test_image_count_and_decoded_bytes_are_checked_before_decoding(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        _image(src / "cls" / f"{i}.png", seed=i, size=64)
    data = _image(src / "cls" / "3.jpg", fmt="JPEG", size=64).read_bytes()
    (src / "cls" / "3.jpg").write_bytes(data[:len(data) * 2 // 3])  # damaged: only decoding notices
    out = tmp_path / "out.ladd"
    _refused(InputTooLargeError, r"holds more than 3 images, over the limit max_images=3; if you trust this input, "
             r"raise it with max_images= \(--max-images on the command line\)", "folder", src, out, max_images=3)
    # 4 images of 64 x 64 RGB decode to 49152 bytes: refused from the headers, before the damage is found.
    _refused(InputTooLargeError, r"the 4 images decode to 49152 bytes, over the limit max_bytes=49151; .*"
             r"max_bytes= \(--max-bytes on the command line\)", "folder", src, out, max_bytes=49151)
    _refused(ladd_format.InvalidInputError, r"3.jpg: not a readable image \(OSError: image file is truncated",
             "folder", src, out, max_bytes=49152)


def test_many_large_images_are_refused_from_their_headers(tmp_path):
    """80 links (inside the folder) to one 8000 x 8000 image: each under the per-image limit,
    together 5 GB decoded; refused before the first is decoded."""
    big = _png(tmp_path / "src" / "cls" / "big.png", 8000, 8000)
    assert 8000 * 8000 <= MAX_IMAGE_PIXELS
    for i in range(80):
        (big.parent / f"link{i:02d}.png").symlink_to(big.name)
    with _deadline(30):
        _refused(InputTooLargeError, r"the 81 images decode to 5184000000 bytes, over the limit max_bytes=4294967296",
                 "folder", tmp_path / "src", tmp_path / "out.ladd")


# -- tensors ------------------------------------------------------------------------------------


def _zero_stride_images() -> torch.Tensor:
    return torch.zeros(1).expand(10**9, 3, 32, 32)


@pytest.mark.parametrize("case, match", [
    ("images", r"images_best.pt: the tensor declares \[1000000000, 3, 32, 32\] float32, 12288000000000 bytes, "
               r"with strides \[0, 0, 0, 0\] over a storage of 4 bytes; " + BROADCAST),
    ("labels", r"labels_best.pt: the tensor declares \[4\] int64, 32 bytes, with strides \[0\] over a storage of "
               r"8 bytes"),
    ("overlapping", r"labels_best.pt: the tensor declares \[4, 10\] float32.* strides \[1, 1\] over a storage "
                    r"of 52 bytes"),
    ("datm-lr", r"lr_best.pt: the tensor declares \[1000000000\] float32"),
    ("dc-nested", r"res_DC.pt: the tensor at \['data'\]\[1\]\[0\] declares \[1000000000, 3, 32, 32\]"),
    ("zca-inverse", r"zca.pt: the tensor at \['transform_inv'\] declares \[108, 108\]"),
])
def test_tensors_declaring_more_than_they_store_are_refused(tmp_path, case, match):
    kind, src, kwargs = "datm", tmp_path / "run", {"normalization": "cifar10"}
    if case == "images":
        _run(src, _zero_stride_images(), torch.zeros(1, dtype=torch.long).expand(10**9))
    elif case == "labels":
        _run(src, labels=torch.tensor([0]).expand(4))
    elif case == "overlapping":  # 40 elements over a storage of 13
        _run(src, labels=torch.arange(13.0).as_strided((4, 10), (1, 1)))
    elif case == "datm-lr":
        _run(src, labels=torch.randn(4, 10))
        torch.save(torch.tensor([0.01]).expand(10**9), src / "lr_best.pt")
    elif case == "dc-nested":
        src.mkdir()
        good = [_normalised(), torch.arange(4)]
        torch.save({"data": [good, [_zero_stride_images(), torch.arange(4)]]}, src / "res_DC.pt")
        kind = "dc"
    else:
        _run(src)
        torch.save({"transform_inv": torch.zeros(1).expand(108, 108), "mean_vector": torch.zeros(1, 108)},
                   tmp_path / "zca.pt")
        kind, kwargs["zca"], kwargs["zca_inverse"] = "mtt", True, tmp_path / "zca.pt"
    _refused(ladd_format.InvalidInputError, match, kind, src, tmp_path / "out.ladd", **kwargs)


def test_strided_tensors_that_fit_their_storage_are_read(tmp_path):
    """Channels-last images and a sliced labels view address no more than they store."""
    images = _normalised()
    labels = torch.arange(8)[::2]  # 0, 2, 4, 6: stride 2 over 8 elements
    _run(tmp_path / "run", images.contiguous(memory_format=torch.channels_last), labels)
    d = read_distilled("mtt", tmp_path / "run", normalization="cifar10")
    plain = read_distilled("mtt", _run(tmp_path / "plain", images, labels.clone()), normalization="cifar10")
    assert np.array_equal(d.images, plain.images) and list(d.labels) == [0, 2, 4, 6]


def _rezip(path: Path, edit) -> None:
    """Rewrite a torch.save zip record by record: ``edit(name, data)`` gives (data, compression)."""
    with zipfile.ZipFile(path) as z:
        records = [(info.filename, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in records:
            data, compression = edit(name, data)
            z.writestr(name, data, compress_type=compression)


@pytest.mark.parametrize("case, error, match", [
    ("deflated", ladd_format.InvalidInputError, r"images_best.pt: record \S+/data/0 is compressed"),
    ("legacy", ladd_format.InvalidInputError, r"images_best.pt: not a zip-format torch.save file"),
    ("big-pickle", InputTooLargeError, r"labels_best.pt: its pickle \S+data.pkl is \d+ bytes, more than the "
                                       r"1048576"),
    ("sparse-5g", InputTooLargeError, r"images_best.pt is 5368709120 bytes, over the limit max_bytes=4294967296; "
                                      r"if you trust this input, raise it with max_bytes= \(--max-bytes on the "
                                      r"command line\)"),
    ("not-a-zip", ladd_format.InvalidInputError, r"images_best.pt: not a readable torch.save file"),
])
def test_pt_files_are_checked_before_torch_reads_them(tmp_path, case, error, match):
    run = _run(tmp_path / "run")
    images = run / "images_best.pt"
    if case == "deflated":  # 16 MiB of pixels in a 16 KB file: torch.load would inflate it
        torch.save(torch.zeros(4, 1, 1024, 1024), images)
        _rezip(images, lambda name, data: (data, zipfile.ZIP_DEFLATED if "/data/" in name else zipfile.ZIP_STORED))
        assert images.stat().st_size < 1 << 16
    elif case == "legacy":
        torch.save(_normalised(), images, _use_new_zipfile_serialization=False)
    elif case == "big-pickle":  # a list in the pickle: loading it builds objects many times its size
        torch.save(list(range(300_000)), run / "labels_best.pt")
    elif case == "sparse-5g":  # holes take no disk space; reading it whole would take 5 GiB
        with images.open("r+b") as f:
            f.truncate(5 << 30)
        assert images.stat().st_blocks * 512 < 1 << 20
    else:
        _rezip(images, lambda name, data: (data, zipfile.ZIP_STORED))
        images.write_bytes(images.read_bytes()[:-30])  # the zip directory cut short
    with _deadline(30):
        _refused(error, match, "mtt", run, tmp_path / "out.ladd", normalization="cifar10")


def test_max_bytes_is_the_way_to_import_a_larger_file(tmp_path):
    run = _run(tmp_path / "run")
    size = (run / "images_best.pt").stat().st_size
    _refused(InputTooLargeError, rf"images_best.pt is {size} bytes, over the limit max_bytes={size - 1}", "mtt", run,
             tmp_path / "out.ladd", normalization="cifar10", max_bytes=size - 1)
    assert read_distilled("mtt", run, normalization="cifar10", max_bytes=size).images.shape == (4, 6, 6, 3)
    assert MAX_BYTES == 4 << 30


# -- links and special files ---------------------------------------------------------------------


def _outside(tmp_path: Path) -> Path:
    """A folder beside the source, holding what links must not reach: a readable image and tensors."""
    out = tmp_path / "elsewhere"
    _image(out / "secret.png", seed=9)
    torch.save(_normalised(), out / "images.pt")
    torch.save(torch.arange(4), out / "labels.pt")
    torch.save(torch.tensor(0.5), out / "lr.pt")
    (out / "labels.csv").write_text("index,file,label,class_name\n0,secret.png,0,a\n")
    (out / "cls").mkdir()
    _image(out / "cls" / "0.png")
    return out


LINKS = [
    # (id, kind, link inside the source -> target, word the error holds)
    ("class-image", "folder", "cls/x.png", "elsewhere/secret.png", "is not a file inside"),
    ("system-file", "folder", "cls/x.png", "/etc/passwd", "(a link to /etc/passwd) is not a file inside"),
    ("device", "folder", "cls/x.png", "/dev/zero", "(a link to /dev/zero) is not a file inside"),
    ("class-folder", "folder", "other", "elsewhere/cls", "is not a folder inside"),
    ("labels-csv", "folder", "labels.csv", "elsewhere/labels.csv", "is not a file inside"),
    ("classes-csv", "folder", "classes.csv", "elsewhere/labels.csv", "is not a file inside"),
    ("sre2l-image", "sre2l", "new001/x.png", "elsewhere/secret.png", "is not a file inside"),
    ("rded-folder", "rded", "00001", "elsewhere/cls", "is not a folder inside"),
    ("mtt-images", "mtt", "images_best.pt", "elsewhere/images.pt", "is not a file inside"),
    ("mtt-labels", "mtt", "labels_best.pt", "elsewhere/labels.pt", "is not a file inside"),
    ("datm-lr", "datm", "lr_best.pt", "elsewhere/lr.pt", "is not a file inside"),
    ("zca-copy", "mtt", "images_zca_1000.pt", "elsewhere/images.pt", "is not a file inside"),
    ("dc-result", "dc", "res_DC.pt", "elsewhere/images.pt", "is not a file inside"),
    ("loop", "folder", "cls/x.png", "x.png", "a link that cannot be followed"),
]


@pytest.mark.parametrize("kind, link, target, says", [case[1:] for case in LINKS], ids=[case[0] for case in LINKS])
def test_links_out_of_the_folder_are_refused(tmp_path, kind, link, target, says):
    _outside(tmp_path)
    src = tmp_path / "src"
    if kind in ("folder", "sre2l", "rded"):
        for folder in ("cls", "new000", "00000"):
            _image(src / folder / "0.png")
        if link == "classes.csv":
            (src / "labels.csv").write_text("index,file,label,class_name\n0,cls/0.png,0,a\n")
    elif kind == "dc":
        src.mkdir()
    else:
        _run(src, labels=torch.randn(4, 10) if kind == "datm" else None)
    path = src / link
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.symlink_to(tmp_path / target if target.startswith("elsewhere/") else target)
    error = _refused(UnsafePathError, "refused|cannot be followed", kind, src, tmp_path / "out.ladd",
                     normalization="cifar10" if kind in ("mtt", "datm", "dc") else None)
    assert says in str(error) and str(error).startswith(str(path))


def test_links_inside_the_folder_and_named_files_are_followed(tmp_path):
    outside = _outside(tmp_path)
    src = tmp_path / "src"
    _image(src / "a" / "0.png")
    (src / "b").symlink_to("a")  # a class folder linked inside the folder given
    d = read_distilled("folder", src)
    assert list(d.labels) == [0, 1] and d.class_names == ["a", "b"]
    run = _run(tmp_path / "run")
    (run / "labels_best.pt").unlink()
    (run / "keep").mkdir()
    torch.save(torch.arange(4), run / "keep" / "labels.pt")
    (run / "labels_best.pt").symlink_to(run / "keep" / "labels.pt")
    assert list(read_distilled("mtt", run, normalization="cifar10").labels) == [0, 1, 2, 3]
    # A file named by the user is read where it leads: the user chose it.
    (tmp_path / "named.pt").symlink_to(outside / "labels.pt")
    d = read_distilled("mtt", run / "images_best.pt", labels=tmp_path / "named.pt", normalization="cifar10")
    assert list(d.labels) == [0, 1, 2, 3]


@pytest.mark.parametrize("where", ["cls/x.png", "labels.csv", "mtt/labels_best.pt", "mtt/lr_best.pt"])
def test_fifos_are_refused_without_blocking(tmp_path, where):
    src = tmp_path / "src"
    _image(src / "cls" / "0.png")
    if where.startswith("mtt"):
        src = _run(tmp_path / "mtt", labels=torch.randn(4, 10))
        (src / Path(where).name).unlink(missing_ok=True)
        os.mkfifo(src / Path(where).name)
    else:
        os.mkfifo(src / where)
    kind = "datm" if where.startswith("mtt") else "folder"
    with _deadline(30):
        _refused(UnsafePathError, r"is a FIFO, not a regular file; refused", kind, src, tmp_path / "out.ladd",
                 normalization="cifar10" if kind == "datm" else None)


# -- bounded memory, in a process of its own -----------------------------------------------------

_CHILD = """
import json, resource, sys
import torch  # before the cap: its address space depends on the build (CUDA maps gigabytes)
from ladd_format.cli import main

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

base = status("VmHWM")
cap = status("VmSize") + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
code = main(sys.argv[1:])
print(json.dumps({"code": code, "grew": status("VmHWM") - base}))
"""


def _bounded_cli(argv: list[str]) -> tuple[dict, list[str]]:
    """Run ``ladd`` in a child allowed 1 GiB more address space than after importing torch, for 60 s."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(ladd_format.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr.splitlines()


@pytest.mark.parametrize("case, says", [
    ("zero-stride", "InvalidInputError: {src}/images_best.pt: the tensor declares [1000000000, 3, 32, 32]"),
    ("bomb-png", "InputTooLargeError: {src}/cls/x.png: declares "),
    ("many-large", "InputTooLargeError: the 81 images decode to 5184000000 bytes"),
    ("fifo", "UnsafePathError: {src}/cls/x.png is a FIFO"),
])
def test_hostile_imports_exit_cleanly_in_bounded_memory(tmp_path, case, says):
    src, kind = tmp_path / "src", "folder"
    if case == "zero-stride":
        _run(src, _zero_stride_images(), torch.zeros(1, dtype=torch.long).expand(10**9))
        kind = "mtt"
    elif case == "bomb-png":
        _image(src / "cls" / "0.png")
        _png(src / "cls" / "x.png", 20000, 20000)
    elif case == "many-large":
        big = _png(src / "cls" / "big.png", 8000, 8000)
        for i in range(80):
            (big.parent / f"link{i:02d}.png").symlink_to(big.name)
    else:
        _image(src / "cls" / "0.png")
        os.mkfifo(src / "cls" / "x.png")
    out = tmp_path / "out.ladd"
    result, err = _bounded_cli(["import", kind, str(src), str(out), "--normalization", "cifar10"])
    assert result["code"] == 1 and len(err) == 1 and err[0].startswith("ladd import: "), err
    assert says.format(src=src) in err[0]
    assert result["grew"] < 500 << 20, result
    assert not out.exists() and leftovers(tmp_path) == ["src"]


def test_the_hostile_pngs_are_what_they_claim(tmp_path):
    """The test images are real: a small one decodes, and the bomb's header says 20000 x 20000."""
    with Image.open(_png(tmp_path / "small.png", 300, 200)) as im:
        assert im.size == (300, 200) and im.mode == "1" and not np.asarray(im.convert("L")).any()
    data = _png(tmp_path / "bomb.png", 20000, 20000).read_bytes()
    assert len(data) < 1 << 16 and struct.unpack(">II", data[16:24]) == (20000, 20000)
    claim = _png(tmp_path / "claim.png", 60000, 60000, rows=False).read_bytes()
    assert len(claim) < 100 and struct.unpack(">II", claim[16:24]) == (60000, 60000)
