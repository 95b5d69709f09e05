"""What every tokenizer family implements, and the one registry of families.

A family knows how a word appears in its tokenizer's vocabulary (its whole-word pre-token forms) and how
to make a new vocabulary entry reachable without changing how any other text tokenizes. It works on the
tokenizers-library JSON ("spec") and a `tokenizers.Tokenizer` built from it; it never touches models.

Left out: embeddings (resize.py) and building the transformers tokenizer object (tokenization.py).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from tokenizers import Tokenizer

from ..errors import UnsupportedTokenizerError

FORMS_OF = {"mid": ("mid",), "initial": ("initial",), "both": ("mid", "initial")}


@dataclass(frozen=True)
class NewEntry:
    """One new vocabulary entry.

    word: the word as the user gave it ("Jehoshaphat"); form: "mid" or "initial";
    token: the vocabulary string ("ĠJehoshaphat"); text: what it decodes to (" Jehoshaphat");
    pieces: the old ids that text tokenized to before expansion.
    """

    word: str
    form: str
    token: str
    text: str
    pieces: tuple[int, ...]


class TokenizerFamily(ABC):
    """Base class: subclasses set name and implement detects(), entry_for() and extend()."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.backend = Tokenizer.from_str(json.dumps(spec))
        self.vocab: dict[str, int] = spec["model"]["vocab"]

    @classmethod
    @abstractmethod
    def detects(cls, spec: dict[str, Any]) -> bool:
        """True if this family handles the tokenizer described by ``spec``."""

    @abstractmethod
    def entry_for(self, word: str, form: str) -> NewEntry | str:
        """The entry that makes ``word`` (in ``form``) one token, or the reason it cannot be added."""

    @abstractmethod
    def extend(self, entries: list[tuple[NewEntry, int]]) -> dict[str, Any]:
        """A new spec with each entry added under its id; the original spec is not modified."""

    def encode_ids(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids


_FAMILIES: list[type[TokenizerFamily]] = []


def register_family(cls: type[TokenizerFamily]) -> type[TokenizerFamily]:
    """Class decorator: add a family. Rejects duplicate names and non-families."""
    if not (isinstance(cls, type) and issubclass(cls, TokenizerFamily)):
        raise TypeError(f"{cls!r} is not a TokenizerFamily subclass")
    if any(f.name == cls.name for f in _FAMILIES):
        raise ValueError(f"a tokenizer family named {cls.name!r} is already registered")
    _FAMILIES.append(cls)
    return cls


def family_names() -> list[str]:
    return [f.name for f in _FAMILIES]


def detect_family(spec: dict[str, Any]) -> TokenizerFamily:
    """The family instance for a tokenizer spec, or UnsupportedTokenizerError naming the supported ones."""
    for cls in _FAMILIES:
        if cls.detects(spec):
            return cls(spec)
    model = spec.get("model", {}).get("type", "unknown")
    pre = (spec.get("pre_tokenizer") or {}).get("type", "none")
    supported = "; ".join(f"{f.name} ({f.summary})" for f in _FAMILIES)
    raise UnsupportedTokenizerError(
        f"this tokenizer (model {model}, pre-tokenizer {pre}) is not a supported family for real "
        f"vocabulary entries. Supported: {supported}. For control strings or other tokenizers, add the "
        "words as added tokens instead: expand(..., kind='added') or --kind added."
    )


def walk(node: Any):
    """Every dict inside a spec component (Sequence pre-tokenizers nest their parts)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)
