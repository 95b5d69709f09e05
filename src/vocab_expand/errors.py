"""The project's own exception types: one family for the user's mistakes, so that bugs keep their traceback.

The CLI prints any VocabExpandError as one line and exits with status 2; every other exception is a bug and
shows its traceback. Each type also subclasses the built-in a Python caller would expect (ValueError for a bad
value, FileExistsError for an existing output, ...), so `except ValueError` keeps working.

Left out: catching and printing (cli.py).
"""

from __future__ import annotations


class VocabExpandError(Exception):
    """Base class: something the user can fix (the message says how)."""


class InvalidInputError(VocabExpandError, ValueError):
    """A bad argument, option value, word list or file content."""


class UnsupportedTokenizerError(InvalidInputError):
    """The tokenizer's family cannot take real vocabulary entries (yet)."""


class OutputExistsError(VocabExpandError, FileExistsError):
    """The output path exists and force was not given."""


class OutputNotWritableError(VocabExpandError, PermissionError):
    """The output location cannot be written (checked before any work)."""


class MissingResourceError(VocabExpandError, FileNotFoundError):
    """A model, corpus or file that was named cannot be found (or the hub cannot be reached)."""
