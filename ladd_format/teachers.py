"""Any network as the labeler: torchvision, timm, TorchScript, or a module built in Python.

The paper's labeler is a small ConvNet trained here (:mod:`ladd_format.labeler`); the field's
ImageNet-scale sets (SRe2L, RDED) label with a pretrained ResNet-18 instead. Each function
returns a :class:`~ladd_format.labeler.Labeler` whose provenance says where the weights came
from (file name and sha256). Arguments and files are checked first, so a bad one is a
:class:`~ladd_format.labeler.LabelerError` naming the file before anything is labelled.
Weights are read with ``torch.load(weights_only=True)``: a file that needs unpickling (which
could run code) is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ._torch import resolve_device
from .errors import InputTooLargeError, LaddError
from .labeler import Labeler, LabelerConfig, LabelerError, load_labeler
from .sources import MAX_BYTES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_EXTRA = "pip install 'ladd_format[teachers]'"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # its older pickle format
_WRAPPERS = ("state_dict", "model")  # training scripts often save {"state_dict": ..., "epoch": ...}


def from_module(model: torch.nn.Module, *, num_classes: int, input_size: tuple[int, int],
                mean: Sequence[float], std: Sequence[float], in_channels: int = 3,
                architecture: str | None = None, weights: str | None = None,
                weights_sha256: str | None = None, source_dataset: str = "unknown",
                device: str | torch.device | None = None) -> Labeler:
    """A labeler around a network built in Python, used as it is (it is not trained here).

    ``weights`` says where its weights came from and ``weights_sha256`` is their file's digest;
    both go into the provenance (``weights`` is ``"unrecorded"`` when not given).
    """
    if not isinstance(model, torch.nn.Module):
        raise LabelerError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if weights_sha256 is not None and not (isinstance(weights_sha256, str)
                                           and re.fullmatch("[0-9a-f]{64}", weights_sha256)):
        raise LabelerError(f"weights_sha256 must be 64 lowercase hex digits, got {weights_sha256!r}")
    config = _config(architecture or type(model).__name__, in_channels, num_classes, input_size,
                     mean, std, source_dataset, weights or "unrecorded")
    return Labeler(model.to(resolve_device(device)).eval(), config, None, weights_sha256)


def from_torchvision(name: str, *, weights_file: str | os.PathLike[str] | None = None,
                     num_classes: int = 1000, input_size: tuple[int, int] = (224, 224),
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     source_dataset: str | None = None,
                     device: str | torch.device | None = None) -> Labeler:
    """``torchvision.models.get_model(name)`` with the weights in ``weights_file``.

    ``weights_file`` is a state dict saved by ``torch.save`` (torchvision's own
    ``resnet18-f37072fd.pth``, or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``,
    with or without a ``module.`` prefix); it must fit the network exactly.
    WITHOUT ``weights_file`` THE NETWORK IS RANDOMLY INITIALISED AND ITS LABELS MEAN NOTHING:
    that is for tests only, and the provenance says ``random-init``. ``source_dataset``
    defaults to ``"imagenet"`` with weights, else ``"unknown"``. torchvision is optional:
    ``pip install 'ladd_format[teachers]'``.
    """
    return _from_library("torchvision", name, weights_file, num_classes, input_size, mean, std,
                         source_dataset, device,
                         lambda tv: tv.models.get_model(name, weights=None, num_classes=num_classes))


def from_timm(name: str, *, weights_file: str | os.PathLike[str] | None = None,
              num_classes: int = 1000, input_size: tuple[int, int] = (224, 224),
              mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
              source_dataset: str | None = None,
              device: str | torch.device | None = None) -> Labeler:
    """``timm.create_model(name, pretrained=False)`` with the weights in ``weights_file``.

    As :func:`from_torchvision` (random init without ``weights_file``: meaningless labels).
    Many timm models expect another input size or mean/std than the ImageNet defaults here:
    take them from the model's ``pretrained_cfg``. timm is optional: ``pip install
    'ladd_format[teachers]'``.
    """
    return _from_library("timm", name, weights_file, num_classes, input_size, mean, std,
                         source_dataset, device,
                         lambda timm: timm.create_model(name, pretrained=False, num_classes=num_classes))


def from_torchscript(path: str | os.PathLike[str], *, num_classes: int, input_size: tuple[int, int],
                     mean: Sequence[float], std: Sequence[float], in_channels: int = 3,
                     architecture: str | None = None, source_dataset: str = "unknown",
                     device: str | torch.device | None = None) -> Labeler:
    """A network saved by ``torch.jit.save``: it runs without its Python code.

    An archive records neither classes, input size nor normalisation, so all are required.
    ``architecture`` defaults to the scripted module's class name.
    """
    path = Path(path)
    config = _config(architecture or "torchscript", in_channels, num_classes, input_size, mean, std,
                     source_dataset, f"torchscript:{path.name}")
    dev = resolve_device(device)
    data = _read(path)
    try:
        model = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, ValueError, ... on a bad archive
        raise LabelerError(f"{path}: not a TorchScript archive that loads ({_first_line(exc)}); "
                           "write one with torch.jit.save(torch.jit.script(model), path)") from None
    if architecture is None:
        config = dataclasses.replace(config, architecture=getattr(model, "original_name", "torchscript"))
    return Labeler(model.to(dev).eval(), config, None, hashlib.sha256(data).hexdigest())


def load_teacher(spec: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None,
                 num_classes: int | None = None, input_size: tuple[int, int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 device: str | torch.device | None = None, **kwargs: Any) -> Labeler:
    """One entry for the CLI: ``torchvision:NAME``, ``timm:NAME``, ``torchscript:PATH``, or a
    labeler checkpoint written by train-labeler.

    ``weights`` is the weights file of a torchvision or timm teacher. Options left ``None``
    take that function's defaults; a TorchScript archive records none, so it needs
    ``num_classes``, ``input_size``, ``mean`` and ``std``. A checkpoint records its own, so
    options given with one are refused rather than ignored. ``kwargs`` go to the function.
    """
    given = {k: v for k, v in (("num_classes", num_classes), ("input_size", input_size),
                                ("mean", mean), ("std", std)) if v is not None}
    kind, colon, rest = os.fspath(spec).partition(":")
    if colon and kind in ("torchvision", "timm", "torchscript"):
        if not rest:
            raise LabelerError(f"teacher {spec!r}: name the {'file' if kind == 'torchscript' else 'model'} "
                               f"after '{kind}:'")
        if kind != "torchscript":
            build = from_torchvision if kind == "torchvision" else from_timm
            return build(rest, weights_file=weights, device=device, **given, **kwargs)
        if weights is not None:
            raise LabelerError(f"teacher {spec!r}: a TorchScript archive holds its own weights; "
                               "drop the weights file")
        missing = [k for k in ("num_classes", "input_size", "mean", "std") if k not in given]
        if missing:
            raise LabelerError(f"teacher {spec!r}: a TorchScript archive does not record "
                               f"{', '.join(missing)}; give them")
        return from_torchscript(rest, device=device, **given, **kwargs)
    extra = [*given, *(["weights"] if weights is not None else []), *kwargs]
    if extra:
        raise LabelerError(f"{spec}: a labeler checkpoint records its own settings; {', '.join(extra)} "
                           "apply only to torchvision:, timm: and torchscript: teachers")
    if not Path(spec).is_file():
        raise LabelerError(f"{spec}: no such labeler checkpoint (a teacher is torchvision:NAME, "
                           "timm:NAME, torchscript:PATH or a checkpoint written by train-labeler)")
    return load_labeler(spec, device=device)


def check_labeler(labeler: Labeler, num_classes: int, in_channels: int) -> None:
    """Fail before anything is written when ``labeler`` cannot label images with
    ``in_channels`` channels into ``num_classes`` classes: its description must say so and one
    forward of a zero image at its input size must return [1, num_classes]."""
    c = labeler.config
    if c.in_channels != in_channels:
        raise LabelerError(f"labeler {c.architecture} takes {c.in_channels}-channel input; "
                           f"the images have {in_channels} channel(s)")
    if c.num_classes != num_classes:
        raise LabelerError(f"labeler {c.architecture} has {c.num_classes} classes; "
                           f"the dataset has {num_classes}")
    shape = (1, in_channels, *labeler.input_size)
    try:
        labeler.logits(torch.zeros(shape, device=labeler.device))
    except LaddError:
        raise
    except Exception as exc:  # noqa: BLE001 - any network's forward: report it as unusable
        raise LabelerError(f"labeler {c.architecture} fails on a zero input of shape {list(shape)} "
                           f"({type(exc).__name__}: {_first_line(exc)})") from None


# -- internals ------------------------------------------------------------------------------

def _from_library(library: str, name: str, weights_file, num_classes, input_size, mean, std,
                  source_dataset: str | None, device, build: Callable[[ModuleType], torch.nn.Module]) -> Labeler:
    """Check everything, read the weights file, then import ``library``, build and load."""
    if not isinstance(name, str) or not name:
        raise LabelerError(f"{library} model name must be a non-empty string, got {name!r}")
    teacher = f"{library}:{name}"
    weights = f"file:{Path(weights_file).name}" if weights_file is not None else f"{teacher} random-init"
    if source_dataset is None:
        source_dataset = "imagenet" if weights_file is not None else "unknown"
    config = _config(teacher, 3, num_classes, input_size, mean, std, source_dataset, weights)
    dev = resolve_device(device)
    state, digest = None, None
    if weights_file is not None:
        data = _read(Path(weights_file))
        state, digest = _state_dict(Path(weights_file), data), hashlib.sha256(data).hexdigest()
    module = _optional(library)
    try:
        model = build(module)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:  # unknown names: ValueError / RuntimeError
        raise LabelerError(f"{library} cannot build {name!r} ({_first_line(exc)})") from None
    if state is not None:
        _load(model, state, Path(weights_file), teacher)
    return Labeler(model.to(dev).eval(), config, None, digest)


def _config(architecture: str, in_channels, num_classes, input_size, mean, std, source_dataset,
            weights: str) -> LabelerConfig:
    for label, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise LabelerError(f"{label} must be an integer >= 1, got {value!r}")
    return LabelerConfig(architecture=architecture, in_channels=int(in_channels), num_classes=int(num_classes),
                         image_size=_input_size(input_size), width=None, depth=None,
                         mean=_stats("mean", mean, in_channels), std=_stats("std", std, in_channels),
                         source_dataset=str(source_dataset), training={}, weights=weights)


def _input_size(value) -> tuple[int, int]:
    try:
        h, w = value
    except (TypeError, ValueError):
        raise LabelerError(f"input_size must be (height, width), got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in (h, w)):
        raise LabelerError(f"input_size must be two integers >= 1, got {value!r}")
    return int(h), int(w)


def _stats(label: str, values, channels: int) -> tuple[float, ...]:
    """Per-channel mean or std on the 0..1 scale: ``channels`` finite numbers (std > 0)."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = None
    if out is None or isinstance(values, (str, bytes)):
        raise LabelerError(f"{label} must be {channels} numbers, got {values!r}")
    if len(out) != channels:
        raise LabelerError(f"{label} must have one value per channel ({channels}), got {len(out)}: {values!r}")
    if not all(math.isfinite(v) for v in out) or (label == "std" and min(out) <= 0):
        raise LabelerError(f"{label} must be finite{' and > 0' if label == 'std' else ''}, got {values!r}")
    return out


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise LabelerError(f"{path}: no such file")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InputTooLargeError(f"{path}: {path.stat().st_size} bytes, more than the {MAX_BYTES} "
                                     "a teacher's weights may have; refused unread")
        return path.read_bytes()
    except OSError as exc:
        raise LabelerError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _state_dict(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """The tensors in a torch.save file, without unpickling: unwrapped, ``module.`` stripped."""
    if not data.startswith((_ZIP_MAGIC, _LEGACY_MAGIC)):
        raise LabelerError(f"{path}: not a torch file (torch.save writes a zip archive; this is neither "
                           "that nor its legacy format)")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged archive raises RuntimeError, EOFError, struct.error, ...
        if type(exc).__name__ == "UnpicklingError":  # matched by name: the library imports no pickle module
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # the Python object it would import
            why = f"it refers to {found.group(1)}" if found else _first_line(exc)
            raise LabelerError(f"{path}: refused, would need unpickling, which could run code ({why}); "
                               "save the weights as a plain state dict: torch.save(model.state_dict(), path)") from None
        raise LabelerError(f"{path}: not a readable torch file ({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), obj)
    if not (isinstance(obj, Mapping) and obj
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise LabelerError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel / DistributedDataParallel
        return {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _load(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, teacher: str) -> None:
    """``load_state_dict(strict=True)``, with the first few mismatching keys named on failure."""
    expected = model.state_dict()
    problems = []
    for label, keys in (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
        ("wrong shape (file vs network)", [f"{k} {list(state[k].shape)} vs {list(v.shape)}"
                                           for k, v in expected.items()
                                           if k in state and state[k].shape != v.shape]),
    ):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise LabelerError(f"{path}: the weights do not fit {teacher} ({'; '.join(problems)})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LabelerError(f"{path}: the weights do not fit {teacher} ({_first_line(exc)})") from None


def _optional(library: str) -> ModuleType:
    try:
        return importlib.import_module(library)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a wheel built for another torch (RuntimeError)
        state = "not installed" if isinstance(exc, ImportError) else f"not usable here ({_first_line(exc)})"
        raise LabelerError(f"{library} teachers need {library}, which is {state}: {_EXTRA} "
                           f"(a {library} built for torch {torch.__version__})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
