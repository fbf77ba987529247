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


#: How a null config value reaches a script: DVC templates it as ``None``.
NULL_WORDS = ("None", "null", "")


def optional(kind=str):
    """argparse type: ``None``/``null``/empty -> None, anything else -> ``kind(text)``.

    Snakemake leaves an unset option out; DVC cannot, and templates a null as ``None``.
    """

    def parse(text: str):
        return None if text in NULL_WORDS else kind(text)

    parse.__name__ = f"optional {kind.__name__}"  # argparse names the type in its errors
    return parse
