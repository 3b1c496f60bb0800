"""The README's Python quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ladd_format

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert (tmp_path / "cifar_mtt_ipc2.ladd" / "zarr.json").exists()
    assert (tmp_path / "small.ladd.zip").is_file()
    assert "uniform_grid" in capsys.readouterr().out


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_writer_snippet_runs(tmp_path, monkeypatch):
    block = next(b for b in _blocks() if "ladd_format.Writer(" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    with ladd_format.open(tmp_path / "pieces.ladd") as ds:
        assert len(ds) == 200 and ds.manifest.dense_labels.encoding == "topk"


def test_pipeline_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's pipeline code as written, on Fashion-MNIST. The "cpu" preset it names is
    shrunk for the suite (the full preset takes the 6 minutes the README states)."""
    from types import MappingProxyType

    from ladd_format import presets, sources

    try:
        sources.fashion_mnist()
    except sources.SourceNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (bash scripts/setup.sh installs it)")
    small = presets.Preset("cpu", "shrunk for the test suite", labeler={"width": 16, "epochs": 1, "train_images": 2000},
                           train={"width": 16, "epochs": 30, "crops_per_image": 2})
    monkeypatch.setattr(presets, "PRESETS", MappingProxyType({**presets.PRESETS, "cpu": small}))
    block = next(b for b in _blocks() if 'preset="cpu"' in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    accuracy = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.3 < accuracy <= 1.0  # a trained Fashion-MNIST model, not chance (0.1)
    with ladd_format.open(tmp_path / "out" / "fm_ipc10.ladd") as ds:
        assert ds.ipc == 10 and ds.manifest.labeler.training["train_images"] == 2000


def test_readme_gives_exactly_the_two_commands():
    text = README.read_text()
    block = re.search(r"## Set-up and the two commands.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
