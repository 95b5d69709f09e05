"""Helpers for typed option dataclasses: a field with its default and help text, and value checks.

Used by ExpandConfig and by every strategy's options class, so help text lives once, in the field's metadata
(`help`), where the CLI reads it.

Left out: the options themselves (config.py, each strategy's module).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from .errors import InvalidInputError


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
