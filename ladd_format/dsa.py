"""Differentiable Siamese Augmentation (DSA), run on the tensors' own device.

The evaluation protocol of the field trains every test network with DSA; a LADD trainer
applies it to the full images and to the crops alike. This follows the DC/DSA code base:
strategy ``color_crop_cutout_flip_scale_rotate``, mode 'S' (one family drawn per batch,
parameters drawn per sample), with its constants. Random numbers come from a
``torch.Generator`` (CPU by default, so a seed gives the same augmentation on any device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._torch import to_device
from .errors import InvalidInputError

STRATEGY = "color_crop_cutout_flip_scale_rotate"
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")

FLIP_P = 0.5
SCALE_RATIO = 1.2
ROTATE_DEGREES = 15.0
CROP_PAD_RATIO = 0.125
CUTOUT_RATIO = 0.5
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5

_GRID_ELEMENTS = 1 << 24  # bound on one affine grid (scale/rotate), to cap temporary memory


@dataclass(frozen=True)
class DSAParams:
    """One draw: the family for the batch and its per-sample parameters (1-D tensors)."""

    family: str
    height: int
    width: int
    values: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(next(iter(self.values.values())))

    def select(self, rows: slice | torch.Tensor) -> DSAParams:
        """The parameters of some samples, e.g. repeated so that crops share their image's."""
        picked = {}
        for key, value in self.values.items():
            picked[key] = value[rows] if isinstance(rows, slice) else value[to_device(rows, value.device)]
        return DSAParams(self.family, self.height, self.width, picked)


def sample_dsa(batch: int, height: int, width: int, *, strategy: str = STRATEGY,
               generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> DSAParams:
    """Draw the family (one per call) and ``batch`` per-sample parameters."""
    families = _families(strategy)
    if batch < 1 or height < 1 or width < 1:
        raise InvalidInputError(f"DSA needs a non-empty batch, got {batch} x {height} x {width}")
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def rand():
        return torch.rand(batch, generator=generator, device=gen_device)

    def randint(low, high):
        return torch.randint(low, high, (batch,), generator=generator, device=gen_device)

    family = families[int(torch.randint(len(families), (1,), generator=generator,
                                        device=gen_device))]
    if family == "color":
        values = {"brightness": rand(), "saturation": rand(), "contrast": rand()}
    elif family == "crop":
        sh, sw = int(height * CROP_PAD_RATIO + 0.5), int(width * CROP_PAD_RATIO + 0.5)
        values = {"shift_y": randint(-sh, sh + 1), "shift_x": randint(-sw, sw + 1)}
    elif family == "cutout":
        ch, cw = _cutout_size(height, width)
        values = {"centre_y": randint(0, height + (1 - ch % 2)),
                  "centre_x": randint(0, width + (1 - cw % 2))}
    elif family == "flip":
        values = {"flip": rand()}
    elif family == "scale":
        low = 1.0 / SCALE_RATIO
        values = {"sx": rand() * (SCALE_RATIO - low) + low,
                  "sy": rand() * (SCALE_RATIO - low) + low}
    else:
        values = {"angle": (rand() - 0.5) * 2 * ROTATE_DEGREES / 180 * math.pi}
    target = torch.device(device) if device is not None else gen_device
    moved = to_device(torch.stack(list(values.values())), target).unbind(0)  # one copy, no host wait
    return DSAParams(family, height, width, dict(zip(values, moved)))


def apply_dsa(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Apply a draw to x [N, C, H, W] (float); returns a new tensor."""
    if x.ndim != 4 or not x.dtype.is_floating_point:
        raise InvalidInputError(f"DSA needs a float [N, C, H, W] tensor, got {x.dtype} "
                                f"{tuple(x.shape)}")
    if x.shape[0] != len(params) or tuple(x.shape[2:]) != (params.height, params.width):
        raise InvalidInputError(
            f"DSA parameters were drawn for {len(params)} x {params.height} x {params.width}, "
            f"got a tensor of shape {tuple(x.shape)}"
        )
    v = {k: t.to(x.device) for k, t in params.values.items()}
    return _APPLY[params.family](x, v)


def apply_dsa_many(xs: list[torch.Tensor], params: list[DSAParams]) -> list[torch.Tensor]:
    """Apply one draw to each tensor of ``xs`` (e.g. one batch per seed), with one call per
    family drawn rather than one per tensor; the same values as separate :func:`apply_dsa`
    calls, since every family acts on each sample alone."""
    if len(xs) != len(params):
        raise InvalidInputError(f"{len(xs)} tensors but {len(params)} DSA draws")
    out: list[torch.Tensor | None] = [None] * len(xs)
    for family in dict.fromkeys(p.family for p in params):
        picked = [i for i, p in enumerate(params) if p.family == family]
        if len(picked) == 1:
            out[picked[0]] = apply_dsa(xs[picked[0]], params[picked[0]])
            continue
        first = params[picked[0]]
        joined = DSAParams(family, first.height, first.width,
                           {k: torch.cat([params[i].values[k] for i in picked]) for k in first.values})
        done = apply_dsa(torch.cat([xs[i] for i in picked]), joined)
        for i, part in zip(picked, done.split([len(xs[i]) for i in picked])):
            out[i] = part
    return out  # type: ignore[return-value]


def dsa(x: torch.Tensor, *others: torch.Tensor, strategy: str = STRATEGY,
        generator: torch.Generator | None = None):
    """Augment ``x``; tensors in ``others`` (same shape) get the very same draw.

    Returns a tensor, or a tuple when ``others`` are given.
    """
    if x.ndim != 4:
        raise InvalidInputError(f"DSA needs [N, C, H, W], got shape {tuple(x.shape)}")
    params = sample_dsa(x.shape[0], x.shape[2], x.shape[3], strategy=strategy,
                        generator=generator, device=x.device)
    out = tuple(apply_dsa(t, params) for t in (x, *others))
    return out if others else out[0]


def _families(strategy: str) -> tuple[str, ...]:
    families = tuple(strategy.split("_")) if isinstance(strategy, str) else ()
    if not families or any(f not in FAMILIES for f in families):
        raise InvalidInputError(
            f"DSA strategy must join some of {FAMILIES} with '_', got {strategy!r}"
        )
    return families


def _cutout_size(height: int, width: int) -> tuple[int, int]:
    return int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(x.dtype).view(-1, 1, 1, 1)


def _color(x, v):
    x = x + (_per_sample(v["brightness"], x) - 0.5) * BRIGHTNESS
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_per_sample(v["saturation"], x) * SATURATION) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_sample(v["contrast"], x) + CONTRAST) + mean


def _crop(x, v):
    """Translate by whole pixels, filling with zeros (DSA pads by one and clamps)."""
    n, c, h, w = x.shape
    ys = torch.arange(h, device=x.device) + v["shift_y"][:, None]
    xs = torch.arange(w, device=x.device) + v["shift_x"][:, None]
    out = x.gather(2, ys.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, xs.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
    keep = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    return out * keep[:, None].to(x.dtype)


def _cutout(x, v):
    _, _, h, w = x.shape
    ch, cw = _cutout_size(h, w)

    def band(centre, size, length):
        lo = (centre - size // 2).clamp(0, length - 1)[:, None]
        hi = (centre - size // 2 + size - 1).clamp(0, length - 1)[:, None]
        at = torch.arange(length, device=x.device)
        return (at >= lo) & (at <= hi)

    hole = band(v["centre_y"], ch, h)[:, :, None] & band(v["centre_x"], cw, w)[:, None, :]
    return x * (~hole)[:, None].to(x.dtype)


def _flip(x, v):
    return torch.where(v["flip"].view(-1, 1, 1, 1) < FLIP_P, x.flip(3), x)


def _affine(x, theta):
    """grid_sample with align_corners=True, in chunks so the grid stays small."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    step = max(1, _GRID_ELEMENTS // (2 * h * w))
    for i in range(0, n, step):
        part = x[i:i + step]
        grid = F.affine_grid(theta[i:i + step].to(x.dtype), list(part.shape), align_corners=True)
        out[i:i + step] = F.grid_sample(part, grid, align_corners=True)
    return out


def _scale(x, v):
    zero = torch.zeros_like(v["sx"])
    theta = torch.stack((torch.stack((v["sx"], zero, zero), 1),
                         torch.stack((zero, v["sy"], zero), 1)), 1)
    return _affine(x, theta)


def _rotate(x, v):
    a = v["angle"]
    zero = torch.zeros_like(a)
    theta = torch.stack((torch.stack((torch.cos(a), torch.sin(-a), zero), 1),
                         torch.stack((torch.sin(a), torch.cos(a), zero), 1)), 1)
    return _affine(x, theta)


_APPLY = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip,
          "scale": _scale, "rotate": _rotate}
