"""Command-line building blocks shared by every ``ladd`` command: one-line usage errors, range-
checked number types, and the options of the commands that label crops (augment, import)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``ladd CMD: error: ...``), exit 2.

    Sub-command parsers inherit the class, so every command reports bad flags the same way.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float | None, low_open: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _number(int, 1, False, "an integer >= 1")
nonnegative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0.0, True, "a number > 0")
finite_float = _number(float, None, False, "a finite number")


def unit_fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


def device_arg(text: str) -> str:
    """A device this machine can run on (checked before any work)."""
    from ._torch import resolve_device
    from .errors import InvalidInputError

    try:
        resolve_device(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_labeling_options(parser: argparse.ArgumentParser) -> None:
    """Sampler grid, temperature, encoding, overwrite and device options."""
    parser.add_argument("--n", type=positive_int, default=5, help="crops per axis")
    parser.add_argument("--ratio", type=unit_fraction, default=0.625, help="crop side / image side, in (0, 1]")
    parser.add_argument("--temperature", type=positive_float, default=1.0)
    parser.add_argument("--encoding", help="dense-label encoding (default: uint8 for probabilities, "
                                           "float32 for logits)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing container at OUT")
    parser.add_argument("--device", type=device_arg, help="cpu, cuda or cuda:N (default: cuda when available)")


def stderr_line(text: str) -> None:
    """Print one line to stderr (newlines folded), for CLI error reports."""
    print(" ".join(str(text).split("\n")), file=sys.stderr)
