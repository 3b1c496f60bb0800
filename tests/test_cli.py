"""The ``ladd`` command line: example, inspect, validate, pack, and the trainer's switches."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import ladd_format
import ladd_format._torch
import ladd_format.train
from ladd_format.cli import main as cli
from ladd_format.testing import write_example

from _helpers import write_idx_folder


def test_example_inspect_validate_pack(tmp_path, capsys):
    path = tmp_path / "e.ladd"
    assert cli(["example", str(path)]) == 0
    assert cli(["example", str(path)]) == 1
    assert "ContainerExistsError" in capsys.readouterr().err

    assert cli(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    for fragment in ("20 x 32x32x3 uint8", "classes     10, images per class: 2", "uniform_grid n=5 (25 crops)",
                     "uint8 probs", "overhead    +", "every array's sha256 checked", "synthetic-example"):
        assert fragment in text

    assert cli(["inspect", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    with ladd_format.open(path) as ds:
        stored = ds.stored_bytes()
    assert report["stored_bytes"] == stored
    assert report["ipc"] == 2 and report["num_images"] == 20 and report["sampler"]["n"] == 5
    assert report["verified"] is True
    overhead = 100 * stored["dense_labels"] / (stored["images"] + stored["labels"])
    assert abs(report["dense_overhead_percent"] - overhead) < 1e-3

    assert cli(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith("valid:")
    packed = tmp_path / "e.ladd.zip"
    assert cli(["pack", str(path), str(packed)]) == 0
    assert cli(["validate", str(packed)]) == 0


def test_console_entry_point(tmp_path):
    path = tmp_path / "e.ladd"
    run = [sys.executable, "-m", "ladd_format"]
    assert subprocess.run([*run, "example", str(path)], capture_output=True).returncode == 0
    bad = subprocess.run([*run, "validate", str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "ContainerNotFoundError" in bad.stderr
    usage = subprocess.run([*run, "inspect"], capture_output=True, text=True)
    assert usage.returncode == 2


def test_augment_with_a_torchscript_teacher_at_another_input_size(tmp_path, capsys):
    torch = __import__("torch")
    from ladd_format.models import build_model

    example = tmp_path / "e.ladd"
    assert cli(["example", str(example)]) == 0
    script = tmp_path / "teacher.pt"
    torch.jit.script(build_model("convnet", 3, 10, 48, width=8)).save(str(script))
    out = tmp_path / "t.ladd"
    argv = ["augment", str(out), "--torchscript", str(script), "--from", str(example), "--num-classes", "10",
            "--input-size", "48", "--labeler-mean", "0.5,0.5,0.5", "--labeler-std", "0.2,0.2,0.2"]
    assert cli(argv) == 0
    with ladd_format.open(out) as ds, ladd_format.open(example) as src:
        lab = ds.manifest.labeler
        assert (lab.input_size, lab.weights, lab.epochs, ds.manifest.format_version) == \
            ([48, 48], f"torchscript:{script.name}", None, "1.2")
        assert ds.manifest.image.mean == src.manifest.image.mean  # the images' statistics are kept
        assert np.array_equal(np.asarray(ds.images), np.asarray(src.images))
    capsys.readouterr()
    assert cli(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "not trained here" in text and "input 48x48" in text and "weights torchscript:teacher.pt" in text
    assert cli([*argv[:-8], "--num-classes", "7", "--input-size", "48", "--labeler-mean", "0.5,0.5,0.5",
                "--labeler-std", "0.2,0.2,0.2", "--overwrite"]) == 1
    assert "7 classes" in capsys.readouterr().err


@pytest.mark.parametrize("argv, amx, wanted, line", [
    ([], False, dict(amp=False, cpu_amp=False, eval_amp=False, compile=False, channels_last=False),
     "(on cpu: trained in float32, tested in float32)"),
    ([], True, dict(amp=True, cpu_amp=True, eval_amp=True),
     "(on cpu: trained in bfloat16 autocast, tested in bfloat16 autocast)"),
    (["--precision", "float32"], True, dict(amp=False, cpu_amp=False, eval_amp=False), "trained in float32,"),
    (["--precision", "bfloat16"], False, dict(amp=True, cpu_amp=True, eval_amp=True), "trained in bfloat16"),
    (["--compile"], False, dict(compile=True), "forward pass compiled (default mode)"),
    (["--compile", "reduce-overhead", "--channels-last"], False, dict(compile="reduce-overhead", channels_last=True),
     "forward pass compiled (reduce-overhead mode), channels_last)"),
])
def test_train_switches_reach_the_trainer(tmp_path, monkeypatch, capsys, argv, amx, wanted, line):
    """``ladd train``'s precision, compile and layout switches become the trainer's keywords; auto
    precision is bfloat16 on a CPU only where it multiplies bfloat16 in hardware, as the demo."""
    example = tmp_path / "ex.ladd"
    write_example(example, num_classes=10, ipc=2, size=28, channels=1)
    folder = write_idx_folder(tmp_path / "idx", 20, 30)
    seen = {}

    def fake(*args, eval_amp, **kwargs):
        seen.update(kwargs, eval_amp=eval_amp)
        return [{"model": "convnet", "mode": "ladd", "accuracy_mean": 0.5, "accuracy_std": 0.0, "accuracies": [0.5],
                 "test_precision": "bfloat16 autocast" if eval_amp else "float32"}]

    monkeypatch.setattr(ladd_format._torch, "cpu_bf16_units", lambda: amx)
    monkeypatch.setattr(ladd_format.train, "cross_architecture", fake)
    capsys.readouterr()
    assert cli(["train", str(example), "--test-source", str(folder), "--source-name", "fake-idx", "--device", "cpu",
                *argv]) == 0
    assert {k: seen[k] for k in wanted} == wanted
    assert line in capsys.readouterr().out
