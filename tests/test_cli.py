"""The ``ladd`` command line: example, inspect, validate, pack."""

from __future__ import annotations

import json
import subprocess
import sys

import ladd_format
from ladd_format.cli import main as cli


def test_example_inspect_validate_pack(tmp_path, capsys):
    path = tmp_path / "e.ladd"
    assert cli(["example", str(path)]) == 0
    assert cli(["example", str(path)]) == 1
    assert "ContainerExistsError" in capsys.readouterr().err

    assert cli(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    for fragment in ("20 x 32x32x3 uint8", "classes     10, images per class: 2", "uniform_grid n=5 (25 crops)",
                     "uint8 probs", "dense-label overhead", "synthetic-example"):
        assert fragment in text

    assert cli(["inspect", "--json", "--verify", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    with ladd_format.open(path) as ds:
        stored = ds.stored_bytes()
    assert report["stored_bytes"] == stored
    assert report["ipc"] == 2 and report["num_images"] == 20 and report["sampler"]["n"] == 5
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
