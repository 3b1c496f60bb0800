"""Generate the golden crop vectors of spec/SPEC.md, "Sub-sampler", from a float64 reference.

The reference below is written straight from the spec's formulas with numpy only (it does not
import ladd_format), so the vectors check an implementation rather than restate it. Each
``<name>.npz`` holds:

- ``image``: the input, [C, H, W] (uint8, or float32 for ``float*`` vectors);
- ``n``, ``ratio``: the sampler parameters (int64 and float64 scalars);
- ``boxes``: int64 [n*n, 4], (top, left, height, width) of crop j = row * n + column;
- ``crops``: float32 [n*n, C, H, W], every crop resized to H x W, rounded once from float64
  (on the 0..255 scale for uint8 images; nothing is normalised).

Usage: ``python spec/vectors/crops/make_crops.py [--out DIR]``. It refuses to overwrite:
if any target file exists it writes nothing and exits with status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def reference_axis(length: int, n: int, ratio: float) -> tuple[int, list[int]]:
    """Crop side and offsets along one axis (half-up rounding, integer offsets)."""
    side = min(max(math.floor(ratio * length + 0.5), 1), length)
    if n == 1:
        return side, [(length - side + 1) // 2]
    return side, [(2 * (length - side) * i + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def reference_boxes(h: int, w: int, n: int, ratio: float) -> np.ndarray:
    ch, tops = reference_axis(h, n, ratio)
    cw, lefts = reference_axis(w, n, ratio)
    return np.array([(t, left, ch, cw) for t in tops for left in lefts], dtype=np.int64)


def _resize_axis(patch: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Bilinear with half-pixel centres along ``axis``, clamped at the patch edge."""
    side = patch.shape[axis]
    out = []
    for d in range(length):
        s = max((d + 0.5) * side / length - 0.5, 0.0)
        i0 = math.floor(s)
        i1 = min(i0 + 1, side - 1)
        f = s - i0
        a = np.take(patch, i0, axis=axis)
        b = np.take(patch, i1, axis=axis)
        out.append((1.0 - f) * a + f * b)
    return np.stack(out, axis=axis)


def reference_crops(image: np.ndarray, n: int, ratio: float) -> np.ndarray:
    """float64 [n*n, C, H, W] crops of one [C, H, W] image."""
    x = np.asarray(image, dtype=np.float64)
    _, h, w = x.shape
    crops = []
    for top, left, ch, cw in reference_boxes(h, w, n, ratio):
        patch = x[:, top:top + ch, left:left + cw]
        crops.append(_resize_axis(_resize_axis(patch, h, 1), w, 2))
    return np.stack(crops)


def _vectors() -> dict[str, tuple[np.ndarray, int, float]]:
    rng = np.random.default_rng(20240601)

    def u8(c, h, w):
        return rng.integers(0, 256, size=(c, h, w), dtype=np.uint8)

    normalised = ((rng.random((3, 16, 16)) - 0.45) / 0.22).astype(np.float32)
    return {
        "gray28_n5": (u8(1, 28, 28), 5, 0.625),
        "rgb32_n5": (u8(3, 32, 32), 5, 0.625),
        "rgb24x20_n3_r0.5": (u8(3, 24, 20), 3, 0.5),
        "gray9x7_n1_r0.7": (u8(1, 9, 7), 1, 0.7),
        "float16_n5": (normalised, 5, 0.625),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    vectors = _vectors()
    targets = {name: args.out / f"{name}.npz" for name in vectors}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing:
        print("refusing to overwrite existing vectors (delete them first):", *existing,
              sep="\n  ", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (image, n, ratio) in vectors.items():
        _, h, w = image.shape
        np.savez_compressed(targets[name], image=image, n=np.int64(n), ratio=np.float64(ratio),
                            boxes=reference_boxes(h, w, n, ratio),
                            crops=reference_crops(image, n, ratio).astype(np.float32))
        print(f"wrote {targets[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
