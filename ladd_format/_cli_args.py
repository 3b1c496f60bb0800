"""Command-line options shared by the commands that label crops (augment, import)."""

from __future__ import annotations

import argparse


def add_labeling_options(parser: argparse.ArgumentParser) -> None:
    """Sampler grid, temperature, encoding, overwrite and device options."""
    parser.add_argument("--n", type=int, default=5, help="crops per axis")
    parser.add_argument("--ratio", type=float, default=0.625, help="crop side / image side")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--encoding", help="dense-label encoding (default: uint8 for probabilities, "
                                           "float32 for logits)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--device")
