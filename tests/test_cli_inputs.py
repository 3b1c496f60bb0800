"""Bad ``ladd`` command lines: each one ends in one stderr line and exit 1 or 2, before any work.

Exit 1 is a library error (``ladd CMD: ErrorType: message``), exit 2 a usage error
(``ladd CMD: error: ... (see ladd CMD --help)``). Every case runs in-process with the
training / labelling / demo entry points replaced by functions that fail the test, in a fresh
empty working folder that must stay empty; the shared fixtures must stay unchanged too.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ladd_format
import ladd_format.demo
import ladd_format.labeler
import ladd_format.train
from ladd_format.cli import main as cli

LADD = [sys.executable, "-m", "ladd_format"]
COMMANDS = {"inspect", "validate", "pack", "example", "demo", "train-labeler", "augment", "train", "show",
            "import", "export", "overhead", "encode"}
USAGE = re.compile(r"^ladd(?P<cmd> [\w-]+)?: error: .+ \(see ladd(?P=cmd)? --help\)$")
LIBRARY = re.compile(r"^ladd (?P<cmd>[\w-]+): [A-Za-z_][\w.]*: \S")


# --- fixtures: one folder per module, built once --------------------------------------------------

class NotALabeler:
    """Pickled into a .pt file that must be refused (weights-only loading, no unpickling)."""


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _flip_in_largest_entry(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _class_folders(root: Path, classes=("a", "b"), per_class: int = 40, side: int = 32) -> Path:
    """train/ and test/, one sub-folder of random RGB PNGs per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels, "RGB").save(root / split / cls / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_inputs")
    example = root / "example.ladd"
    assert cli(["example", str(example)]) == 0
    packed = root / "example.ladd.zip"
    assert cli(["pack", str(example), str(packed)]) == 0

    damaged = root / "damaged.ladd.zip"
    damaged.write_bytes(packed.read_bytes())
    _flip_in_largest_entry(damaged)
    with pytest.raises(Exception):
        with ladd_format.open(damaged, verify=True):
            pass
    truncated = root / "truncated.ladd.zip"
    truncated.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    empty = root / "empty"
    empty.mkdir()

    # four IDX files that are not Fashion-MNIST: 8x8 images, 3 classes
    idx = root / "idx"
    idx.mkdir()
    rng = np.random.default_rng(0)
    _idx(idx / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 8, 8)))
    _idx(idx / "train-labels-idx1-ubyte", np.arange(30) % 3)
    _idx(idx / "t10k-images-idx3-ubyte", rng.integers(0, 256, (9, 8, 8)))
    _idx(idx / "t10k-labels-idx1-ubyte", np.arange(9) % 3)

    # a source that matches the example (32x32x3, classes 0..9): the one fault is the flag under test
    match = _class_folders(root / "match", classes=[str(c) for c in range(10)], per_class=2)

    # labeler checkpoints for the example's 32x32x3 images: one good, two that are not checkpoints
    from ladd_format.labeler import Labeler, LabelerConfig, _build

    config = LabelerConfig(architecture="convnet", in_channels=3, num_classes=10, image_size=(32, 32), width=8,
                           depth=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                           source_dataset="synthetic", training={})
    good = Labeler(_build(config), config, 1).save(root / "labeler" / "epoch_01.pt")
    sidecar = good.with_suffix(".pt.json").read_text()
    good_sha = hashlib.sha256(good.read_bytes()).hexdigest()
    noise = root / "labeler" / "noise.pt"
    pickled = root / "labeler" / "pickled.pt"
    tampered = root / "labeler" / "tampered.pt"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    torch.save({"model": NotALabeler()}, pickled)
    tampered.write_bytes(noise.read_bytes())
    for p in (noise, pickled):  # sidecars that vouch for these bytes (if the sidecar holds a digest)
        p.with_suffix(".pt.json").write_text(sidecar.replace(good_sha, hashlib.sha256(p.read_bytes()).hexdigest()))
    tampered.with_suffix(".pt.json").write_text(sidecar)  # the good file's digest

    return SimpleNamespace(root=root, example=str(example), zip=str(packed), damaged=str(damaged),
                           truncated=str(truncated), empty=str(empty), idx=str(idx), match=str(match), ckpt=str(good),
                           noise=str(noise), pickled=str(pickled), tampered=str(tampered))


# --- the table: (id, argv builder (fx, out), expected exit codes, keyword in the stderr line) ------

E12 = {1, 2}
AUG = lambda f, o, *a: ["augment", f.ckpt, f"{o}/aug", "--from", f.example, *a]  # noqa: E731
TRAIN = lambda f, o, *a: ["train", f.example, "--test-source", f.match, *a]  # noqa: E731
LAB = lambda f, o, *a: ["train-labeler", "--out", f"{o}/lab", *a]  # noqa: E731

CASES = [
    # demo: range checks at parse time
    ("demo-ipc-0", lambda f, o: ["demo", "--out", f"{o}/d", "--ipc", "0"], {2}, "--ipc"),
    ("demo-ipc-neg", lambda f, o: ["demo", "--out", f"{o}/d", "--ipc", "-1"], {2}, "--ipc"),
    ("demo-seeds-0", lambda f, o: ["demo", "--out", f"{o}/d", "--seeds", "0"], {2}, "--seeds"),
    ("demo-epochs-0", lambda f, o: ["demo", "--out", f"{o}/d", "--epochs", "0"], {2}, "--epochs"),
    ("demo-preset-bogus", lambda f, o: ["demo", "--out", f"{o}/d", "--preset", "bogus"], {2}, "--preset"),
    # train: ranges, choices, devices
    ("train-ipc-0", lambda f, o: TRAIN(f, o, "--ipc", "0"), {2}, "--ipc"),
    ("train-ipc-neg", lambda f, o: TRAIN(f, o, "--ipc", "-1"), {2}, "--ipc"),
    ("train-seeds-0", lambda f, o: TRAIN(f, o, "--seeds", "0"), {2}, "--seeds"),
    ("train-epochs-0", lambda f, o: TRAIN(f, o, "--epochs", "0"), {2}, "--epochs"),
    ("train-lr-0", lambda f, o: TRAIN(f, o, "--lr", "0"), {2}, "--lr"),
    ("train-lr-neg", lambda f, o: TRAIN(f, o, "--lr", "-1"), {2}, "--lr"),
    ("train-lr-nan", lambda f, o: TRAIN(f, o, "--lr", "nan"), {2}, "--lr"),
    ("train-lr-inf", lambda f, o: TRAIN(f, o, "--lr", "inf"), {2}, "--lr"),
    ("train-batch-0", lambda f, o: TRAIN(f, o, "--batch-size", "0"), {2}, "--batch-size"),
    ("train-crops-abc", lambda f, o: TRAIN(f, o, "--crops", "abc"), {2}, "--crops"),
    ("train-crops-0", lambda f, o: TRAIN(f, o, "--crops", "0"), {2}, "--crops"),
    ("train-crops-neg", lambda f, o: TRAIN(f, o, "--crops", "-1"), {2}, "--crops"),
    ("train-crops-26", lambda f, o: TRAIN(f, o, "--crops", "26"), E12, "crops"),  # > n*n = 25
    ("train-width-0", lambda f, o: TRAIN(f, o, "--width", "0"), {2}, "--width"),
    ("train-device-tpu", lambda f, o: TRAIN(f, o, "--device", "tpu"), E12, "tpu"),
    ("train-device-cuda", lambda f, o: TRAIN(f, o, "--device", "cuda"), {2}, "cuda"),
    ("train-mode-bogus", lambda f, o: TRAIN(f, o, "--mode", "bogus"), {2}, "--mode"),
    ("train-preset-bogus", lambda f, o: TRAIN(f, o, "--preset", "bogus"), {2}, "--preset"),
    ("train-precision-bogus", lambda f, o: TRAIN(f, o, "--precision", "fp8"), {2}, "--precision"),
    ("train-compile-bogus", lambda f, o: TRAIN(f, o, "--compile", "fastest"), {2}, "--compile"),
    ("train-model-bogus-second", lambda f, o: TRAIN(f, o, "--model", "convnet,bogus"), {1}, "bogus"),
    ("train-ipc-too-many", lambda f, o: TRAIN(f, o, "--ipc", "3"), {1}, "ipc"),  # the example holds 2 per class
    ("train-missing", lambda f, o: ["train", f"{o}/missing.ladd"], {1}, "missing.ladd"),
    # the example is 32x32x3 synthetic: neither the default nor Fashion-MNIST is a matching test set
    ("train-no-test-source", lambda f, o: ["train", f.example, "--epochs", "1"], {1}, None),
    ("train-fmnist-shape", lambda f, o: ["train", f.example, "--test-source", "fashion-mnist", "--epochs", "1"],
     {1}, None),
    # train-labeler
    ("labeler-images-neg", lambda f, o: LAB(f, o, "--source", f.match, "--train-images", "-5"), E12, "--train-images"),
    ("labeler-images-0", lambda f, o: LAB(f, o, "--source", f.match, "--train-images", "0"), E12, "--train-images"),
    ("labeler-epochs-0", lambda f, o: LAB(f, o, "--source", f.match, "--epochs", "0"), E12, "--epochs"),
    ("labeler-width-0", lambda f, o: LAB(f, o, "--source", f.match, "--width", "0"), E12, "--width"),
    ("labeler-source-missing", lambda f, o: LAB(f, o, "--source", "/nonexistent"), {1}, "/nonexistent"),
    ("labeler-idx-not-fmnist", lambda f, o: LAB(f, o, "--source", f.idx, "--epochs", "1"), {1}, "--source-name"),
    # augment (with a good labeler unless the checkpoint is the point)
    ("augment-no-labeler", lambda f, o: ["augment", f"{o}/aug", "--from", f.example], {1}, "labeler"),
    ("augment-two-labelers", lambda f, o: AUG(f, o, "--model", "torchvision:resnet18"), {1}, "two labelers"),
    ("augment-torchvision-missing", lambda f, o: ["augment", f"{o}/aug", "--model", "torchvision:resnet18",
                                                  "--from", f.example], {1}, "torchvision"),
    ("augment-torchscript-missing", lambda f, o: ["augment", f"{o}/aug", "--torchscript", f"{o}/none.pt",
                                                  "--from", f.example, "--num-classes", "10", "--input-size", "32",
                                                  "--labeler-mean", "0.5,0.5,0.5", "--labeler-std", "1,1,1"],
     {1}, "none.pt"),
    ("augment-torchscript-no-stats", lambda f, o: ["augment", f"{o}/aug", "--torchscript", f.ckpt,
                                                   "--from", f.example], {1}, "num_classes"),
    ("augment-input-size-0", lambda f, o: ["augment", f"{o}/aug", "--model", "torchvision:resnet18",
                                           "--input-size", "0", "--from", f.example], {2}, "--input-size"),
    ("augment-labeler-mean-text", lambda f, o: ["augment", f"{o}/aug", "--model", "torchvision:resnet18",
                                                "--labeler-mean", "a,b,c", "--from", f.example], {2}, "--labeler-mean"),
    ("augment-weights-with-checkpoint", lambda f, o: AUG(f, o, "--weights", f.ckpt), {1}, "weights"),
    ("augment-ipc-0", lambda f, o: ["augment", f.ckpt, f"{o}/aug", "--random-real", f.match, "--ipc", "0"],
     {2}, "--ipc"),
    ("augment-ipc-neg", lambda f, o: ["augment", f.ckpt, f"{o}/aug", "--random-real", f.match, "--ipc", "-1"],
     {2}, "--ipc"),
    ("augment-n-0", lambda f, o: AUG(f, o, "--n", "0"), {2}, "--n"),
    ("augment-ratio-0", lambda f, o: AUG(f, o, "--ratio", "0"), {2}, "--ratio"),
    ("augment-ratio-1.5", lambda f, o: AUG(f, o, "--ratio", "1.5"), E12, "ratio"),  # > 1: parser or sampler
    ("augment-ratio-neg", lambda f, o: AUG(f, o, "--ratio", "-0.1"), {2}, "--ratio"),
    ("augment-temperature-0", lambda f, o: AUG(f, o, "--temperature", "0"), {2}, "--temperature"),
    ("augment-temperature-neg", lambda f, o: AUG(f, o, "--temperature", "-1"), {2}, "--temperature"),
    ("augment-temperature-nan", lambda f, o: AUG(f, o, "--temperature", "nan"), {2}, "--temperature"),
    ("augment-ckpt-missing", lambda f, o: ["augment", f"{o}/nope.pt", f"{o}/aug", "--from", f.example],
     {1}, "nope.pt"),
    ("augment-ckpt-noise", lambda f, o: ["augment", f.noise, f"{o}/aug", "--from", f.example], {1}, "noise.pt"),
    ("augment-ckpt-pickled", lambda f, o: ["augment", f.pickled, f"{o}/aug", "--from", f.example],
     {1}, "pickled.pt"),
    ("augment-ckpt-tampered", lambda f, o: ["augment", f.tampered, f"{o}/aug", "--from", f.example],
     {1}, "tampered.pt"),
    # show
    ("show-index-999", lambda f, o: ["show", f.example, "--index", "999", "-o", f"{o}/x.png"], {1}, "index"),
    ("show-index-neg999", lambda f, o: ["show", f.example, "--index", "-999", "-o", f"{o}/x.png"], {1}, "index"),
    ("show-output-txt", lambda f, o: ["show", f.example, "-o", f"{o}/out.txt"], E12, "out.txt"),
    ("show-output-dir-missing", lambda f, o: ["show", f.example, "-o", f"{o}/missing_dir/x.png"], {1},
     "missing_dir"),
    ("show-missing", lambda f, o: ["show", f"{o}/missing.ladd", "-o", f"{o}/x.png"], {1}, "missing.ladd"),
    # inspect / validate / overhead on missing or damaged containers
    ("inspect-missing", lambda f, o: ["inspect", f"{o}/missing.ladd"], {1}, "missing.ladd"),
    ("validate-missing", lambda f, o: ["validate", f"{o}/missing.ladd"], {1}, "missing.ladd"),
    ("overhead-missing", lambda f, o: ["overhead", f"{o}/missing.ladd"], {1}, "missing.ladd"),
    ("inspect-damaged-zip", lambda f, o: ["inspect", f.damaged], {1}, None),
    ("inspect-json-damaged-zip", lambda f, o: ["inspect", "--json", f.damaged], {1}, None),
    ("validate-damaged-zip", lambda f, o: ["validate", f.damaged], {1}, None),
    ("inspect-truncated-zip", lambda f, o: ["inspect", f.truncated], {1}, None),  # + wording: see below
    ("inspect-empty-dir", lambda f, o: ["inspect", f.empty], {1}, "empty"),
    # writers onto existing targets
    ("example-exists", lambda f, o: ["example", f.example], {1}, "--overwrite"),
    ("pack-exists", lambda f, o: ["pack", f.example, f.zip], {1}, "--overwrite"),
    # encode
    ("encode-bogus", lambda f, o: ["encode", f.example, f"{o}/enc.ladd", "--encoding", "bogus"], {2}, "--encoding"),
    ("encode-scale-255", lambda f, o: ["encode", f.example, f"{o}/enc.ladd", "--encoding", "coarse", "--scale", "255"],
     {1}, "scale"),
    ("encode-k-0", lambda f, o: ["encode", f.example, f"{o}/enc.ladd", "--encoding", "topk", "--k", "0"], {2},
     "--k"),
    # the top level
    ("unknown-command", lambda f, o: ["bogus"], {2}, "bogus"),
    ("no-command", lambda f, o: [], {2}, None),
    # import / export (a few; their own tests live elsewhere)
    ("import-kind-bogus", lambda f, o: ["import", "bogus", f.idx, f"{o}/imp.ladd"], {2}, "bogus"),
    ("import-src-missing", lambda f, o: ["import", "folder", f"{o}/nothing", f"{o}/imp.ladd"], {1}, "nothing"),
    ("import-n-0", lambda f, o: ["import", "folder", f"{f.match}/train", f"{o}/imp.ladd", "--n", "0"], {2}, "--n"),
    ("export-format-bogus", lambda f, o: ["export", f.example, f"{o}/exp", "--format", "bogus"], {2}, "--format"),
    ("export-missing", lambda f, o: ["export", f"{o}/missing.ladd", f"{o}/exp", "--format", "npz"], {1},
     "missing.ladd"),
]


def _no_work(monkeypatch) -> list[str]:
    """Replace every entry point that trains or labels with one that fails the test."""
    called: list[str] = []

    def stub(name):
        def boom(*args, **kwargs):
            called.append(name)
            pytest.fail(f"{name} was called: the command line started work before rejecting its input")
        return boom

    for module, names in ((ladd_format.train, ("train", "cross_architecture")),
                          (ladd_format.labeler, ("train_labeler", "label_crops", "augment")),
                          (ladd_format.demo, ("run_demo", "train_labeler", "augment", "cross_architecture"))):
        for name in names:
            monkeypatch.setattr(module, name, stub(f"{module.__name__}.{name}"))
    return called


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def run_cli(argv: list[str]) -> int:
    """``cli(argv)`` as the console script ends: SystemExit codes included; other exceptions fail."""
    try:
        return cli(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:  # a traceback for the user
        pytest.fail(f"uncaught {type(exc).__name__}: {exc}")


def _one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1 and err.strip(), f"not one stderr line: {err!r}"
    assert "Traceback" not in err
    return err.rstrip("\n")


@pytest.mark.parametrize("case_id, build, codes, keyword", CASES, ids=[c[0] for c in CASES])
def test_bad_command_line(case_id, build, codes, keyword, fx, tmp_path, monkeypatch, capsys):
    if case_id == "train-device-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if case_id == "train-fmnist-shape":
        try:
            ladd_format.sources.fashion_mnist()
        except ladd_format.LaddError:
            pytest.skip("Fashion-MNIST is not installed")
    called = _no_work(monkeypatch)
    out = tmp_path / "cwd"
    out.mkdir()
    monkeypatch.chdir(out)  # relative defaults (demo's out/demo) land here too
    argv = build(fx, out)
    shared = _snapshot(fx.root)
    capsys.readouterr()

    code = run_cli(argv)
    captured = capsys.readouterr()

    assert code in codes, f"exit {code}, expected {sorted(codes)}; stderr: {captured.err!r}"
    assert not called
    line = _one_line(captured.err)
    assert captured.out == "", f"stdout on a failed command: {captured.out!r}"
    assert "unrecognized arguments" not in line  # the flag under test must exist
    if code == 2:
        assert USAGE.match(line), line
        if argv and argv[0] in COMMANDS:
            assert line.startswith(f"ladd {argv[0]}: error:"), line
    else:
        m = LIBRARY.match(line)
        assert m and m.group("cmd") == argv[0], line
    if keyword is not None:
        assert keyword in line, f"{keyword!r} not in {line!r}"
    assert list(out.iterdir()) == [], "a failed command left files behind"
    assert _snapshot(fx.root) == shared, "a failed command changed its inputs"


def test_truncated_zip_says_zip_is_damaged(fx, capsys):
    assert run_cli(["inspect", fx.truncated]) == 1
    line = _one_line(capsys.readouterr().err)
    rest = line.replace(fx.truncated, "").lower()  # the path itself says .zip
    assert "neither" not in rest and "zip" in rest, line


# --- positive checks -------------------------------------------------------------------------------

def test_version(capsys):
    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ladd_format {ladd_format.__version__}"


def test_inspect_verifies_by_default(fx, capsys):
    for path in (fx.example, fx.zip):
        assert run_cli(["inspect", path]) == 0
        assert path in capsys.readouterr().out


def test_inspect_no_verify_says_so(fx, capsys):
    assert run_cli(["inspect", "--no-verify", fx.damaged]) == 0  # the flipped byte goes unnoticed
    captured = capsys.readouterr()
    text = (captured.out + captured.err).lower()
    assert re.search(r"(not|n't|without|skipp\w*|un)[ -]?verif", text), text


# --- subprocess checks: closed pipes and Ctrl-C ----------------------------------------------------

def test_closed_stdout_is_quiet(fx, tmp_path):
    proc = subprocess.Popen([*LADD, "inspect", "--json", fx.example], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # before the command has written anything: its writes hit a closed pipe
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = err.decode(errors="replace")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_pipe_into_head_is_quiet(fx, tmp_path):
    cmd = f"{sys.executable} -m ladd_format inspect --json '{fx.example}' | head -c 10"
    run = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert len(run.stdout) == 10
    assert "Traceback" not in run.stderr and "BrokenPipeError" not in run.stderr, run.stderr


def test_ctrl_c_during_training(tmp_path):
    data = _class_folders(tmp_path / "data")
    lab = tmp_path / "lab"
    proc = subprocess.Popen([*LADD, "train-labeler", "--source", str(data), "--epochs", "100000", "--width", "8",
                             "--device", "cpu", "--out", str(lab)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")))
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not (lab / "epoch_01.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, b"".join(chunks).decode(errors="replace")
        assert (lab / "epoch_01.pt").exists(), "no checkpoint after 60 s"
        time.sleep(0.5)
        before = len(b"".join(chunks))
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        reader.join(timeout=10)
        proc.stderr.close()
    err = b"".join(chunks).decode(errors="replace")
    tail = b"".join(chunks)[before:].decode(errors="replace")
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    lines = [seg.split("\r")[-1] for seg in tail.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    assert 1 <= len(lines) <= 3, repr(tail)
    assert "interrupted" in lines[-1].lower(), repr(tail)
