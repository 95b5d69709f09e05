"""Writing output folders all at once: a temporary sibling folder, renamed into place when complete.

A crash or a bad input never leaves a half-written output, and nothing the user had is replaced unless
they asked for it (force=True, the CLI's --force).

Left out: what goes into the folders (callers write into the temporary path they are given).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import OutputExistsError


def check_output_dir(path: str | os.PathLike, force: bool = False) -> Path:
    """The output path, after checking it may be written; OutputExistsError if it exists and not force."""
    target = Path(path)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists; choose another output folder or pass --force (force=True)")
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} exists and is not a folder; remove it or choose another path")
    return target


@contextmanager
def atomic_directory(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it becomes ``path``, on error it is removed."""
    target = check_output_dir(path, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def check_output_file(path: str | os.PathLike, force: bool = False) -> Path:
    """The output file path, after checking it may be written; OutputExistsError if it exists and not force."""
    target = Path(path)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists; choose another file or pass --force (force=True)")
    if target.is_dir():
        raise OutputExistsError(f"{target} is a folder; give a file path")
    return target


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary sibling and a rename, so readers never see half of it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
