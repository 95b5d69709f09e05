"""Writing output folders all at once: a temporary sibling folder, swapped into place when complete.

A crash or a bad input never leaves a half-written output, and nothing the user had is replaced unless
they asked for it (force=True, the CLI's --force). In detail:
- Outputs are checked before any work: an existing output needs force; an output equal to, inside or
  containing an input (the model folder), the current folder or one of its parents is refused; the
  location must be writable (a probe file is created and removed).
- The swap: the old output is renamed to ``.NAME.old-PID``, the new one renamed into place, then the old
  one removed. If the second rename fails, the old output is renamed back (rollback).
- Temporaries carry the PID of their writer. A later write to the same output removes temporaries of
  writers that are no longer running (kill -9), and restores an old output that a crash left renamed.
- Folders are made with mkdir, so they follow the umask (mkdtemp would make them 0700).
- A full disk or read-only location during the write becomes OutputNotWritableError; nothing is changed.

Left out: what goes into the folders (callers write into the temporary path they are given).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import InvalidInputError, OutputExistsError, OutputNotWritableError

# Errors of the place written to, not of the program: they mean "write elsewhere or free space".
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def _overlap(target: Path, other: Path) -> str | None:
    """How ``target`` overlaps ``other`` (both resolved): "is", "is inside", "contains", or None."""
    if target == other:
        return "is"
    if other in target.parents:
        return "is inside"
    if target in other.parents:
        return "contains"
    return None


def check_output_dir(path: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The output path, after checking it may be written: OutputExistsError if it exists and not force,
    InvalidInputError if it overlaps an input or the current folder, OutputNotWritableError if its
    location cannot be written. Example: check_output_dir("OUT", inputs=["./my-model"])."""
    target = Path(path).expanduser()
    if target.name in ("", ".", ".."):
        raise InvalidInputError(f"output {str(path)!r} must name a new folder (e.g. {str(path).rstrip('/')}/out), "
                                "not the current folder or a parent")
    resolved = target.resolve()
    where = _overlap(resolved, Path.cwd().resolve())
    if where in ("is", "contains"):
        raise InvalidInputError(f"output {target} {where} the current folder; choose a folder elsewhere")
    check_no_overlap(target, inputs)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists; choose another output folder or pass --force (force=True)")
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} exists and is not a folder; remove it or choose another path")
    check_writable(target)
    return target


def check_no_overlap(target: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """InvalidInputError when ``target`` is, is inside, or contains one of the ``inputs`` that exist."""
    resolved = target.expanduser().resolve()
    for given in inputs:
        source = Path(given).expanduser()
        where = _overlap(resolved, source.resolve()) if source.exists() else None
        if where:
            raise InvalidInputError(f"output {target} {where} the input {source}; choose a folder outside it "
                                    "(the input is never overwritten)")


def check_writable(target: Path) -> None:
    """OutputNotWritableError unless a file can be created next to ``target`` (in its nearest existing parent)."""
    parent = target.parent if str(target.parent) else Path(".")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputNotWritableError(f"cannot write {target}: {parent} is a file, not a folder")
    probe = parent / f".vocab-expand-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        raise OutputNotWritableError(f"cannot write {target}: {err.strerror or err} in {parent}") from err


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` left by writers that died; put back a ``.NAME.old-PID`` that a crash left
    in place of a missing output. Returns what was removed or restored."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)(-.*)?$")
    touched = []
    if not target.parent.is_dir():
        return touched
    for entry in sorted(target.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or int(match.group(2)) == os.getpid() or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not target.exists():
            os.rename(entry, target)  # the crash came between the two renames: the old output is the output
        else:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        touched.append(entry)
    return touched


def _not_writable(target: Path, err: OSError) -> OutputNotWritableError:
    return OutputNotWritableError(f"could not write {target}: {err.strerror or err}; nothing was changed "
                                  "(free some space or choose another output)")


@contextmanager
def atomic_directory(path: str | os.PathLike, force: bool = False,
                     inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it becomes ``path``, on error it is removed
    and any old output is left as it was."""
    target = check_output_dir(path, force, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in WRITE_ERRNOS:
            raise _not_writable(target, err) from err
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, target)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing target is kept aside and restored if the rename fails."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
    try:
        if old is not None:
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)  # rollback: the user's output is back where it was
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def check_output_file(path: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The output file path, after checking it may be written; OutputExistsError if it exists and not force,
    InvalidInputError if it is one of the ``inputs`` (or inside one)."""
    target = Path(path).expanduser()
    check_no_overlap(target, inputs)
    if target.is_dir():
        raise OutputExistsError(f"{target} is a folder; give a file path")
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists; choose another file or pass --force (force=True)")
    check_writable(target)
    return target


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary sibling and a rename, so readers never see half of it. The file
    gets the umask's mode, as a plain open() would (mkstemp would make it 0600)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            raise _not_writable(target, err) from err
        raise
