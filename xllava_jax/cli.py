"""What every `python -m xllava_jax.<tool>` entry point shares: logging set-up, parsing, dispatch."""

from __future__ import annotations

import argparse
import logging
from typing import Callable, Sequence


def run_subcommand(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None = None) -> int:
    """Parse `argv` with the tool's parser and run the chosen subcommand's `fn(args)`; returns its exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.fn(args)
