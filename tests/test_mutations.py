"""The mutation corpus (tests/mutations.py): over 2,000 damaged and hostile containers, each
opened with verification, read in full and validated in a child process under an
address-space limit and a timer. Every case must end in a typed error or the exact original
data, within 5 s and 4 x the stored bytes + 500 MB, and ``ladd validate`` must answer in one line.
"""

from __future__ import annotations

import shutil
from collections import Counter
import numpy as np
import pytest

import mutations

import ladd_format


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return mutations.build(tmp_path_factory.mktemp("mutations"))


def test_the_corpus_is_large_and_covers_every_kind(pristine):
    cases = mutations.corpus(pristine)
    assert len(cases) >= 2000
    kinds = Counter(c["kind"] for c in cases)
    assert set(kinds) == {"flip", "truncate", "garbage", "delete", "transplant", "array-meta", "manifest",
                          "json-text", "zip", "symlink", "special", "extra"}
    assert mutations.corpus(pristine) == cases  # seeded: the children rebuild the same list
    targets = {mutations._target_kind(c["target"]) for c in cases}
    assert {"root zarr.json", "array zarr.json", "images chunk", "labels chunk", "dense_labels chunk"} <= targets


def test_every_mutation_ends_in_a_typed_error_or_the_original_data(pristine, tmp_path):
    scratch = mutations.scratch_folder(tmp_path / "scratch")
    try:
        results = mutations.run(pristine, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + mutations.report(results))
    failed = [r for r in results if r["problems"]]
    assert not failed, f"{len(failed)} of {len(results)} cases failed, e.g. {failed[:3]}"
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes["typed"] > len(results) // 2 and outcomes["exact"] > 0


# -- the judge can fail: a reader that misbehaves is caught -------------------------------------


@pytest.fixture
def one_case(pristine, tmp_path):
    case = next(c for c in mutations.corpus(pristine) if c["kind"] == "flip" and c["form"] == "dir")
    expected = {}
    for variant in mutations.VARIANTS:
        expected[variant] = mutations._read_all(pristine / variant / "pristine.ladd")
        expected[variant + ":stored"] = 1
    return case, expected


def _judge(one_case, pristine, tmp_path):
    case, expected = one_case
    return mutations.judge(case, pristine, tmp_path / "s", expected, mutations.MEMORY)


def test_the_judge_flags_an_untyped_error(one_case, pristine, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("chunk")

    monkeypatch.setattr(ladd_format, "open", broken)
    result = _judge(one_case, pristine, tmp_path)
    assert result["outcome"] == "untyped" and any("KeyError" in p for p in result["problems"])


def test_the_judge_flags_silently_wrong_data(one_case, pristine, tmp_path, monkeypatch):
    real = ladd_format.open

    class Wrong:
        def __init__(self, ds):
            self.ds = ds

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.ds.close()

        def __getattr__(self, name):
            value = getattr(self.ds, name)
            return np.asarray(value) + 1 if name == "labels" else value

    source = pristine / one_case[0]["variant"] / "pristine.ladd"  # sound data, then shifted labels
    monkeypatch.setattr(ladd_format, "open", lambda path, **kw: Wrong(real(source, **kw)))
    result = _judge(one_case, pristine, tmp_path)
    assert result["outcome"] == "accepted-edit"
    assert "changed without a rewritten digest" in " ".join(result["problems"])


def test_the_judge_flags_a_validate_traceback(one_case, pristine, tmp_path, monkeypatch):
    from ladd_format import cli

    def crash(argv):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "main", crash)
    result = _judge(one_case, pristine, tmp_path)
    assert any(p.startswith("validate:") for p in result["problems"])
