"""A writer killed at any moment leaves no container at the target, or a complete one.

Each case runs the writer in a child process that SIGKILLs itself at a chosen point
(the n-th stored key, the n-th fsync, just before or after a rename), or is killed by
the parent after a delay. The parent then checks the target path.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ladd_format
from ladd_format.testing import example_arrays

CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import zarr
    import ladd_format
    from ladd_format import _store
    from ladd_format.testing import example_arrays

    target, point, count, overwrite = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    calls = {"n": 0}

    def die_on(n, sig=signal.SIGKILL):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), sig)

    if point == "interrupt":  # Ctrl-C while zarr's loop thread is storing chunks
        original_set = zarr.storage.LocalStore.set
        async def set_(self, key, value, *a, **k):
            die_on(count, signal.SIGINT)
            return await original_set(self, key, value, *a, **k)
        zarr.storage.LocalStore.set = set_
    elif point == "store-set":
        original_set = zarr.storage.LocalStore.set
        async def set_(self, key, value, *a, **k):
            die_on(count)
            return await original_set(self, key, value, *a, **k)
        zarr.storage.LocalStore.set = set_
    elif point == "fsync":
        original_fsync = _store._fsync
        def fsync_(path):
            die_on(count)
            original_fsync(path)
        _store._fsync = fsync_
    elif point in ("before-rename", "after-rename"):
        original_rename = os.rename
        def rename_(a, b):
            if point == "before-rename":
                die_on(count)
            original_rename(a, b)
            if point == "after-rename":
                die_on(count)
        _store.os.rename = rename_
    images, labels, dense = example_arrays(num_classes=10, ipc=40, size=32, seed=int(overwrite))
    ladd_format.write(target, images, labels, dense, encoding="float32", overwrite=overwrite)
    print("finished")
""")


def _run(target, point, count, overwrite=False):
    return subprocess.run([sys.executable, "-c", CHILD, str(target), point, str(count), "1" if overwrite else "0"],
                          capture_output=True, text=True, timeout=120)


def _assert_absent_or_complete(target, seed):
    if not target.exists():
        return False
    images, labels, dense = example_arrays(num_classes=10, ipc=40, size=32, seed=seed)
    with ladd_format.open(target, verify=True) as ds:
        assert np.array_equal(np.asarray(ds.images), images)
        assert np.array_equal(np.asarray(ds.dense_labels), dense)
    return True


POINTS = [("store-set", 1), ("store-set", 3), ("store-set", 6), ("store-set", 8),
          ("fsync", 1), ("fsync", 5), ("before-rename", 1), ("after-rename", 1)]


@pytest.mark.parametrize("suffix", [".ladd", ".ladd.zip"])
@pytest.mark.parametrize("point,count", POINTS)
def test_killed_writer_leaves_nothing_or_everything(tmp_path, suffix, point, count):
    target = tmp_path / f"c{suffix}"
    result = _run(target, point, count)
    assert result.returncode == -signal.SIGKILL, result.stderr
    complete = _assert_absent_or_complete(target, seed=0)
    assert complete == (point == "after-rename")


@pytest.mark.parametrize("point,count", [("store-set", 5), ("before-rename", 1), ("after-rename", 1),
                                         ("after-rename", 2)])
def test_killed_overwrite_keeps_the_old_container(tmp_path, point, count):
    target = tmp_path / "c.ladd"
    images, labels, dense = example_arrays(num_classes=10, ipc=40, size=32, seed=0)
    ladd_format.write(target, images, labels, dense, encoding="float32")
    result = _run(target, point, count, overwrite=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    if target.exists():
        with ladd_format.open(target) as ds:
            seed = 0 if np.array_equal(np.asarray(ds.images), images) else 1
        assert _assert_absent_or_complete(target, seed)
    else:
        # Killed between "old aside" and "new in place": the old one is intact beside it.
        aside = [p for p in tmp_path.iterdir() if p.name.startswith(".c.ladd.old-")]
        assert len(aside) == 1
        assert _assert_absent_or_complete(aside[0], seed=0)


@pytest.mark.parametrize("suffix", [".ladd", ".ladd.zip"])
@pytest.mark.parametrize("count", [1, 4, 8])
def test_interrupted_writer_cleans_its_staging(tmp_path, suffix, count):
    target = tmp_path / f"c{suffix}"
    result = _run(target, "interrupt", count)
    assert result.returncode == -signal.SIGINT and "KeyboardInterrupt" in result.stderr, result.stderr
    assert "Task was destroyed" not in result.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no hidden staging left
    _assert_absent_or_complete(target, seed=0)  # complete only when the interrupt came after the commit


@pytest.mark.parametrize("delay", [0.5, 1.0, 1.5, 2.0, 2.5])
def test_killed_at_random_moments(tmp_path, delay):
    target = tmp_path / "c.ladd"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target), "none", "0", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    child.kill()
    child.communicate(timeout=60)
    _assert_absent_or_complete(target, seed=0)
