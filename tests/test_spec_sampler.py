"""The numbers printed in spec/SPEC.md section 6 are the numbers the code computes.

Parsed from the spec text, so the spec and the sampler cannot drift apart silently.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np

from ladd_format.sampler import UniformSampler, _resize_weights

SPEC = (Path(__file__).resolve().parent.parent / "spec" / "SPEC.md").read_text()
SECTION = SPEC[SPEC.index("## 6. Sub-sampler"):SPEC.index("## 7.")]


def test_every_size_example_matches():
    text = " ".join(SECTION.split())
    examples = re.findall(r"(\d+) px gives `c = (\d+)`(?: \([\d.]+ rounds up\))? at `([\d, ]+)`", text)
    assert len(examples) >= 3
    for side, crop, offsets in examples:
        assert UniformSampler().axis(int(side)) == (int(crop), [int(o) for o in offsets.split(", ")])


def test_worked_example_table_matches():
    rows = re.findall(r"^  \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| ([\d/]+) \|", SECTION, flags=re.M)
    assert len(rows) >= 4
    weights = _resize_weights(28, 18)
    for d, q, i0, i1, f in rows:
        d, i0, i1, f = int(d), int(i0), int(i1), Fraction(f)
        assert max((2 * d + 1) * 18 - 28, 0) == int(q)
        expected = np.zeros(18)
        expected[i0] += float(1 - f)
        expected[i1] += float(f)
        np.testing.assert_allclose(weights[d], expected, rtol=0, atol=1e-15)
    box = re.search(r"Crop 7 is row 1, column 2: box `\(top (\d+), left (\d+), height (\d+), width (\d+)\)`", SECTION)
    assert UniformSampler().boxes(28, 28)[7] == tuple(int(v) for v in box.groups())
