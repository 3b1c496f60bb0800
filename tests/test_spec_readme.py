"""The snippets in spec/README.md run as written, without ladd_format, on a frozen vector."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parent.parent / "spec"
BLOCKS = re.findall(r"```python\n(.*?)```", (SPEC / "README.md").read_text(), flags=re.S)


def test_readme_has_both_readers():
    assert len(BLOCKS) == 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(index):
    if "tensorstore" in BLOCKS[index]:
        pytest.importorskip("tensorstore")
    exec(compile(BLOCKS[index], f"spec/README.md block {index}", "exec"),
         {"PATH": SPEC / "vectors" / "v1.0" / "basic_float32.ladd"})
