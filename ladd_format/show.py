"""Pictures of what the dense labels say: an image beside its N x N crops (the paper's Fig. S1)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ._read import LaddDataset
from .errors import IndexOutOfRangeError, InvalidInputError
from .sampler import UniformSampler

_FORMATS = (".png", ".jpg", ".jpeg", ".webp")
_TILE = 112  # pixels per crop tile; small images are upscaled (nearest) to stay legible


def render(ds: LaddDataset, index: int) -> Image.Image:
    """The image (with its hard label) beside its crops, each captioned "class p"."""
    if not -len(ds) <= index < len(ds):
        raise IndexOutOfRangeError(f"index {index} is out of range for {len(ds)} images (0..{len(ds) - 1})")
    image, label, dense = ds[index]
    sampler = UniformSampler.from_spec(ds.manifest.sampler)
    crops = sampler.crops(torch.from_numpy(image).permute(2, 0, 1))[0]  # [n*n, C, H, W], 0..255
    crops = crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    names = ds.class_names
    font = _font(13)
    caption_h = 18
    n = sampler.n
    pad = 6
    grid_w = n * (_TILE + pad)
    big = 2 * _TILE
    width = pad + big + 3 * pad + grid_w
    height = max(big + 2 * caption_h, n * (_TILE + caption_h + pad)) + 2 * pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    canvas.paste(_tile(image, big), (pad, pad + caption_h))
    draw.text((pad, pad), f"#{index}: {names[label]}", fill="black", font=font)
    top_class = dense.argmax(-1)
    x0 = pad + big + 3 * pad
    for j in range(sampler.num_crops):
        x = x0 + (j % n) * (_TILE + pad)
        y = pad + (j // n) * (_TILE + caption_h + pad)
        canvas.paste(_tile(crops[j], _TILE), (x, y))
        c = int(top_class[j])
        colour = "black" if c == label else "firebrick"
        draw.text((x, y + _TILE + 2), f"{names[c][:12]} {dense[j, c]:.2f}", fill=colour, font=font)
    return canvas


def save_render(ds: LaddDataset, index: int, path: str | os.PathLike[str]) -> Path:
    """Render image ``index`` to an image file; its folder must exist (none is created)."""
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise InvalidInputError(f"{path}: the picture must be a {', '.join(_FORMATS)} file")
    if not path.parent.is_dir():
        raise InvalidInputError(f"{path}: folder {path.parent} does not exist")
    render(ds, index).save(path)
    return path


def _tile(pixels: np.ndarray, side: int) -> Image.Image:
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    img = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).convert("RGB")
    scale = max(1, side // max(img.size))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST).resize((side, side), Image.BILINEAR)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()
