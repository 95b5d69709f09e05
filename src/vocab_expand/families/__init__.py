"""Tokenizer families that can take new whole-word vocabulary entries. Importing registers them.

Detection tries the families in the order they register, which is the order of the import line below:
byte-level BPE, then SentencePiece-style BPE, then Unigram (FAMILY_ORDER states it, and a test checks that the
registry follows it). A new family is a module here with a `@register_family` class, plus its name in the import
line and in FAMILY_ORDER at the place its detection should take.

Left out: the families themselves (one module each) and the registry's rules (base.py).
"""

from . import byte_level, sentencepiece, unigram  # noqa: F401  (registers the families, in this order)
from .base import (
    FORMS_OF,
    NewEntry,
    TokenizerFamily,
    UnsupportedTokenizerError,
    detect_family,
    family_names,
    register_family,
)

# Detection order (the first family whose detects() accepts a tokenizer takes it).
FAMILY_ORDER = ("byte_level_bpe", "sentencepiece_bpe", "sentencepiece_unigram")

__all__ = [
    "FAMILY_ORDER",
    "FORMS_OF",
    "NewEntry",
    "TokenizerFamily",
    "UnsupportedTokenizerError",
    "detect_family",
    "family_names",
    "register_family",
]
