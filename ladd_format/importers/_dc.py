"""DC, DSA and DM: one ``res_<method>_<dataset>_<model>_<ipc>ipc.pt`` per run.

The file holds ``{'data': [[images, labels], ...], 'accs_all_exps': ...}``, one pair of
normalised float images and hard labels per experiment; the user picks the experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..sources import _Limits
from ._common import Distilled, files_record, json_numbers, load_pt, split_labels, tensor

READS = ("dc", "dsa", "dm")
"""The kinds this module reads."""


def read(kind: str, src: Path, experiment: int, limits: _Limits) -> Distilled:
    """Experiment ``experiment`` of ``src`` (a res_*.pt file, or a folder holding exactly one)."""
    within = None
    if src.is_dir():
        found = sorted(src.glob("res_*.pt"))
        if len(found) != 1:
            raise InvalidInputError(f"{src}: expected one res_*.pt file, found {len(found)}; give the file as the "
                                    "source")
        src, within = found[0], src
    body = load_pt(src, max_bytes=limits.max_bytes, within=within)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, (list, tuple)) or not data:
        raise InvalidInputError(f"{src.name}: expected a dict with a non-empty 'data' list of [images, labels]")
    if not 0 <= experiment < len(data):
        raise InvalidInputError(f"{src.name}: experiment {experiment} out of range; it holds {len(data)} "
                                f"(experiment= / --experiment 0..{len(data) - 1})")
    pair = data[experiment]
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise InvalidInputError(f"{src.name}: data[{experiment}] is not an [images, labels] pair")
    details: dict[str, Any] = {"imported_from": files_record(kind, [src]), "experiment": experiment,
                               "experiments": len(data)}
    accs = json_numbers(body.get("accs_all_exps"))
    if accs is not None:
        details["accs_all_exps"] = accs
    return split_labels(kind, tensor(pair[0], f"{src.name} images"), tensor(pair[1], f"{src.name} labels"),
                        details)
