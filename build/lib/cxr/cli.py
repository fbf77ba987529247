"""Argument types shared by the entry points in scripts/ (argparse ``type=`` callables).

Outside the data flow: imports nothing but the standard library, so a script can parse its
options before it starts TensorFlow.
"""

from __future__ import annotations

import argparse


def boolean(text: str) -> bool:
    """'true'/'false' (any case, as Snakemake formats Python bools and DVC YAML booleans;
    also '1'/'0', 'yes'/'no') -> bool.

    Raises
    ------
    argparse.ArgumentTypeError
        For any other word (argparse reports it as a usage error naming the option).
    """
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
