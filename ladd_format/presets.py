"""Named settings for the labeler and the test-model trainer, so that one word sizes a run.

``cpu`` fits a 2-core machine (the demo in about 5 to 7 minutes); ``paper`` is the LADD
paper's protocol (1,000 epochs, all 25 crops per step, width 128: meant for a GPU). Each
preset holds the keyword arguments of :func:`ladd_format.labeler.train_labeler` and of
:func:`ladd_format.train.train` under their own names; explicit arguments override it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import InvalidInputError


@dataclass(frozen=True)
class Preset:
    """Settings under one name: ``labeler`` for ``train_labeler``, ``train`` for ``train``."""

    name: str
    description: str
    labeler: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labeler", MappingProxyType(dict(self.labeler)))
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))


PRESETS: Mapping[str, Preset] = MappingProxyType({
    "cpu": Preset("cpu", "sized for a 2-core CPU: width-64 networks, a 6,000-image labeler, "
                         "200 epochs with 5 crops per image per step",
                  labeler={"width": 64, "epochs": 10, "train_images": 6000},
                  train={"width": 64, "epochs": 200, "crops_per_image": 5}),
    "paper": Preset("paper", "the LADD paper's protocol (meant for a GPU): width 128, the labeler on the "
                             "whole train split, 1,000 epochs with all crops",
                    labeler={"width": 128, "epochs": 10, "train_images": None},
                    train={"width": 128, "epochs": 1000, "crops_per_image": "all"}),
})


COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes, for the trainer's ``compile``; ``"reduce-overhead"`` replays CUDA
graphs, for steps too small to keep the device busy between launches."""


def get_preset(preset: str | Preset | None) -> Preset | None:
    """The preset called ``preset`` (or the preset itself, or ``None``)."""
    if preset is None or isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}") from None


def resolve(preset: str | Preset | None, part: str, explicit: Mapping[str, Any],
            defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Explicit (not ``None``) values, else the preset's ``part``, else ``defaults``."""
    chosen = get_preset(preset)
    base = dict(defaults)
    if chosen is not None:
        base.update(getattr(chosen, part))
    base.update({k: v for k, v in explicit.items() if v is not None})
    return base
