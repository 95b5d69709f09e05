"""Tokenizer families that can take new whole-word vocabulary entries. Importing registers them."""

from . import byte_level, sentencepiece, unigram  # noqa: F401  (registers the families)
from .base import (
    FORMS_OF,
    NewEntry,
    TokenizerFamily,
    UnsupportedTokenizerError,
    detect_family,
    family_names,
    register_family,
)

__all__ = [
    "FORMS_OF",
    "NewEntry",
    "TokenizerFamily",
    "UnsupportedTokenizerError",
    "detect_family",
    "family_names",
    "register_family",
]
