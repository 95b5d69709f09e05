"""Helpers for typed option dataclasses: a field with its default and help text, and value checks.

Used by ExpandConfig and by every strategy's options class, so help text lives once, in the field's metadata
(`help`), where the CLI reads it.

Left out: the options themselves (config.py, each strategy's module).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from .errors import InvalidInputError, InvalidTypeError


def doc(text: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: the help text shown by the CLI (and any extra keys, e.g. cli="--flag")."""
    return {"help": text, **extra}


def opt(default: Any, text: str, **extra: Any) -> Any:
    """A dataclass field with a default and its help text."""
    return field(default=default, metadata=doc(text, **extra))


def check_int(name: str, value: object, minimum: int) -> None:
    """InvalidInputError (a ValueError) unless ``value`` is an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


# One rule for every command's seed: torch's generators take 0 to 2**64 - 1; negative seeds are refused
# everywhere (expand, diagnose and compare alike) rather than wrapped around by some and refused by others.
MAX_SEED = 2**63 - 1


def check_seed(seed: object) -> None:
    """InvalidInputError unless ``seed`` is an integer from 0 to 2**63 - 1. Example: check_seed(-1) raises."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidTypeError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"seed must be an integer from 0 to 2**63 - 1, got {seed}")
