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


class InvalidTypeError(VocabExpandError, TypeError):
    """An argument of the wrong type (a str where a list of words is expected, ...)."""


class CorruptFileError(InvalidInputError):
    """A file that was named exists but cannot be read as what it claims to be (truncated, binary, pickle)."""


class HubUnreachableError(MissingResourceError):
    """A hub id was given but the hub cannot be reached; the message names what works offline."""


class NothingAddedError(InvalidInputError):
    """Every word was skipped, so there is nothing to save (allow_empty / --allow-empty saves anyway)."""


class MissingPackageError(VocabExpandError, ModuleNotFoundError):
    """An optional package (a bundled model, the kjv corpus) is not installed; the message says how to install it."""


class NotFiniteError(VocabExpandError, ArithmeticError):
    """New rows or a training loss became inf or nan (extreme options): nothing was saved, or training stopped."""


class EngineError(VocabExpandError, RuntimeError):
    """A serving engine (llama.cpp) refused the model, or tokenizes or generates differently from the folder."""
