"""A public test harness: small, seeded example data for tests, docs and bug reports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._write import write


def example_arrays(
    *, num_classes: int = 10, ipc: int = 2, size: int | tuple[int, int] = 32, channels: int = 3,
    n: int = 5, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded synthetic (images uint8 [M, H, W, C], labels [M], dense probs float32 [M, n*n, K]).

    Images are smooth class-dependent gradients with noise; dense labels put most mass on
    the hard label, so they look like a labeler's output but carry no real knowledge.
    """
    rng = np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    m = num_classes * ipc
    labels = np.repeat(np.arange(num_classes), ipc)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    phase = (labels / max(1, num_classes))[:, None, None, None]
    tint = rng.random((m, 1, 1, channels))
    base = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + yy)[None, :, :, None] * (1 + 3 * phase) + tint * 6)
    noise = rng.normal(0, 0.05, (m, h, w, channels))
    images = np.clip(np.rint((base + noise) * 255), 0, 255).astype(np.uint8)
    logits = rng.normal(0, 1, (m, n * n, num_classes))
    logits[np.arange(m), :, labels] += 3.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return images, labels, probs.astype(np.float32)


def write_example(path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False,
                  num_classes: int = 10, ipc: int = 2, size: int = 32, channels: int = 3,
                  **write_kwargs: Any) -> Path:
    """Write :func:`example_arrays` to ``path``, marked as synthetic in the provenance."""
    images, labels, dense = example_arrays(num_classes=num_classes, ipc=ipc, size=size,
                                           channels=channels, seed=seed)
    write_kwargs.setdefault("distillation", {"method": "synthetic-example", "source_dataset": "none",
                                             "details": {"seed": seed}})
    return write(path, images, labels, dense, overwrite=overwrite, **write_kwargs)
