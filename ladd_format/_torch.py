"""Torch helpers every stage shares: which device, and how pixels are normalised."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The caller's device, else CUDA when present, else CPU."""
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def channel_stats(values: Sequence[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Per-channel statistics shaped [1, C, 1, 1] for broadcasting over [B, C, H, W]."""
    return torch.as_tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def normalise(pixels: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel, float32, for 0..255 images [B, C, H, W]."""
    dev = pixels.device
    return (pixels.to(torch.float32) / 255 - channel_stats(mean, dev)) / channel_stats(std, dev)
