"""keep_freed_memory: freed blocks stay mapped for reuse (glibc), so repeated training
passes fault no pages in again; opt-outs are honoured; the ``ladd`` program applies it, main() does not.

Each case runs in a fresh interpreter: mallopt settings are process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

PROBE = r"""
import json, resource, sys
import torch
import ladd_format
from ladd_format.models import build_model
applied = ladd_format.keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
net = build_model("convnet", 1, 10, 28, width=32)
x = torch.randn(256, 1, 28, 28)
faults = []
for _ in range(6):  # training passes: the same activations allocated, freed and made again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x).logsumexp(-1).sum().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(mode: str, code: str = PROBE, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LADD_MALLOC"}
    done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120,
                          env={**environ, **env}, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_training_passes_stop_faulting_pages_in():
    """Measured: about 50,000 minor faults a pass with glibc's defaults; with the setting most
    passes from the third on fault none (an occasional one still grows the heap)."""
    kept, default = _probe("keep"), _probe("default")
    assert kept["applied"] and not default["applied"]
    assert statistics.median(kept["faults"][2:]) * 10 < min(default["faults"][1:])


@pytest.mark.parametrize("env", [{"LADD_MALLOC": "default"}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                 {"MALLOC_TRIM_THRESHOLD_": "0"}])
def test_opt_outs_and_the_users_own_settings_are_left_alone(env):
    code = ("import json, ladd_format; from ladd_format._allocator import keeps_freed_memory as k; "
            "before = k(); print(json.dumps({'applied': ladd_format.keep_freed_memory(), 'before': before, 'after': k()}))")
    left = _probe("keep", code, **env)
    assert not left["applied"] and not left["before"] and not left["after"]
    kept = _probe("keep", code)
    assert kept["applied"] and not kept["before"] and kept["after"]  # what pass_inputs reads


def test_the_ladd_program_keeps_freed_memory_and_main_does_not(monkeypatch, tmp_path):
    from ladd_format import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["example", str(tmp_path / "a.ladd")]) == 0 and calls == []
    monkeypatch.setattr(sys, "argv", ["ladd", "example", str(tmp_path / "b.ladd")])
    assert cli.entry() == 0 and calls == [1]
