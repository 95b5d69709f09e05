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
- A full disk or read-only location during the write becomes OutputNotWritableError; nothing is changed
  (safetensors' own SafetensorError included, read by its OS error code).
- An output that exists must be of the expected kind (a folder, or a regular file): a device node, FIFO or
  socket is never replaced. A symlink given as the output is replaced itself, never what it points to.
- Without force, the final rename claims the target atomically (renameat2's RENAME_NOREPLACE where the kernel
  has it, else a hard link for files): of two runs writing the same new output, the later one fails with
  "already exists" instead of replacing the first one's.
- Temporary names stay within the file system's 255 bytes, however long the output's name.

Left out: what goes into the folders (callers write into the temporary path they are given).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
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
# The longest output name used as it is in temporary names (".NAME.tmp-PID-HEX" must stay under 255 bytes).
MAX_NAME_IN_TEMPORARY = 160


def user_path(path: str | os.PathLike) -> Path:
    """``path`` with a leading ~ or ~user expanded; InvalidInputError for a user that does not exist (pathlib's
    RuntimeError otherwise). Example: user_path("~/out") -> Path("/home/me/out")."""
    try:
        return Path(path).expanduser()
    except RuntimeError as err:
        raise InvalidInputError(f"{str(path)!r}: {str(err).rstrip('.')}; give the path without ~user, or with an "
                                "existing user") from err


def resolved(path: Path) -> Path:
    """``path`` made absolute with links followed; InvalidInputError for a link loop."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as err:
        raise InvalidInputError(f"{path}: cannot follow its links ({err}); remove the link loop") from err


def stem_for_temporaries(target: Path) -> str:
    """The part of ``target``'s name that its temporaries carry: the name itself, or for a long one its start
    and a hash of the whole (so that ".NAME.tmp-PID-HEX" stays a legal name)."""
    name = target.name
    if len(name.encode()) <= MAX_NAME_IN_TEMPORARY:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=6).hexdigest()
    return name.encode()[:64].decode("utf-8", "ignore") + "~" + digest


def temporary_for(target: Path, kind: str = "tmp") -> Path:
    """A new temporary sibling of ``target`` (".NAME.tmp-PID-HEX"), or its ".NAME.old-PID" name."""
    suffix = f"{os.getpid()}-{secrets.token_hex(4)}" if kind == "tmp" else str(os.getpid())
    return target.with_name(f".{stem_for_temporaries(target)}.{kind}-{suffix}")


def check_existing_kind(target: Path, want: str) -> None:
    """OutputExistsError when ``target`` exists but is not a ``want`` ("folder" or "file"): a device node, FIFO
    or socket is never replaced, nor a file by a folder or the reverse. A symlink is checked as itself."""
    if target.is_symlink():
        return  # the link itself is replaced, never what it points to
    if not target.exists():
        return
    kind = "folder" if target.is_dir() else "file" if target.is_file() else "special file (device, FIFO or socket)"
    if kind != want:
        raise OutputExistsError(f"{target} exists and is a {kind}, not a {want}; remove it or choose another path")


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
    target = user_path(path)
    if target.name in ("", ".", ".."):
        raise InvalidInputError(f"output {str(path)!r} must name a new folder (e.g. {str(path).rstrip('/')}/out), "
                                "not the current folder or a parent")
    where = _overlap(resolved(target), Path.cwd().resolve())
    if where in ("is", "contains"):
        raise InvalidInputError(f"output {target} {where} the current folder; choose a folder elsewhere")
    check_no_overlap(target, inputs)
    check_existing_kind(target, "folder")
    if _exists(target) and not force:
        raise OutputExistsError(f"{target} already exists; choose another output folder or pass --force (force=True)")
    check_writable(target)
    return target


def _exists(path: Path) -> bool:
    """Whether anything is at ``path``, a dangling symlink included."""
    return path.exists() or path.is_symlink()


def check_no_overlap(target: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """InvalidInputError when ``target`` is, is inside, or contains one of the ``inputs`` that exist."""
    whole = resolved(user_path(target))
    for given in inputs:
        source = user_path(given)
        where = _overlap(whole, resolved(source)) if source.exists() else None
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
    pattern = re.compile(rf"^\.{re.escape(stem_for_temporaries(target))}\.(tmp|old)-(\d+)(-.*)?$")
    touched = []
    if not target.parent.is_dir():
        return touched
    for entry in sorted(target.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or int(match.group(2)) == os.getpid() or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not _exists(target):
            os.rename(entry, target)  # the crash came between the two renames: the old output is the output
        else:
            _remove(entry)
        touched.append(entry)
    return touched


def _not_writable(target: Path, err: BaseException) -> OutputNotWritableError:
    reason = getattr(err, "strerror", None) or os.strerror(_errno_of(err) or 0)
    return OutputNotWritableError(f"could not write {target}: {reason}; nothing was changed "
                                  "(free some space or choose another output)")


def _errno_of(err: BaseException) -> int | None:
    """The OS error code of a failed write: an OSError's errno, or the one a safetensors SafetensorError names in
    its text ("... Os { code: 28, kind: StorageFull ..."). None for anything else."""
    if isinstance(err, OSError):
        return err.errno
    if type(err).__name__ == "SafetensorError":
        found = re.search(r"Os \{ code: (\d+)", str(err))
        return int(found.group(1)) if found else None
    return None


def _is_write_error(err: BaseException) -> bool:
    return _errno_of(err) in WRITE_ERRNOS


def _remove(path: Path) -> None:
    """Remove a file, a folder or a symlink (the link itself, never what it points to)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike, force: bool = False,
                     inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it becomes ``path``, on error it is removed
    and any old output is left as it was."""
    target = check_output_dir(path, force, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = temporary_for(target)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_error(err):
            raise _not_writable(target, err) from err
        raise
    _swap_in(tmp, target, force)


def _swap_in(tmp: Path, target: Path, force: bool) -> None:
    """Rename ``tmp`` to ``target``. Without force the target is claimed atomically: if another run made it in
    the meantime, OutputExistsError and nothing of theirs is touched. With force an existing target is kept
    aside and restored if the rename fails."""
    if not force:
        try:
            _claim(tmp, target)
        except BaseException:
            _remove(tmp)
            raise
        return
    check_existing_kind(target, "folder" if tmp.is_dir() else "file")
    if not tmp.is_dir():
        os.replace(tmp, target)  # a file (or a symlink to one) is replaced in one step
        return
    old = temporary_for(target, "old") if _exists(target) else None
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
        _remove(tmp)
        raise
    if old is not None:
        _remove(old)


RENAME_NOREPLACE = 1  # linux/fs.h


def _claim(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target`` only if nothing is there, atomically: renameat2(RENAME_NOREPLACE) where the
    kernel and file system have it; else a hard link for a file, and for a folder a rename, which the kernel
    refuses onto a non-empty folder. OutputExistsError when the target was taken."""
    taken = OutputExistsError(f"{target} already exists (another run wrote it meanwhile); choose another output "
                              "or pass --force (force=True)")
    if _renameat2(tmp, target):
        return
    if _exists(target):
        raise taken
    try:
        if tmp.is_dir():
            os.rename(tmp, target)
        else:
            os.link(tmp, target)
            tmp.unlink()
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise taken from err
        raise


def _renameat2(tmp: Path, target: Path) -> bool:
    """renameat2(tmp, target, RENAME_NOREPLACE): True when done, False when the system lacks it; OutputExistsError
    when the target exists."""
    libc = _libc()
    function = getattr(libc, "renameat2", None) if libc is not None else None
    if function is None:
        return False
    at_fdcwd = -100
    result = function(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(target), RENAME_NOREPLACE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        raise OutputExistsError(f"{target} already exists (another run wrote it meanwhile); choose another output "
                                "or pass --force (force=True)")
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def check_output_file(path: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The output file path, after checking it may be written; OutputExistsError if it exists and not force, or
    is not a regular file (a folder, device node or FIFO is never replaced); InvalidInputError if it is, or is
    inside, one of the ``inputs``."""
    target = user_path(path)
    check_no_overlap(target, inputs)
    check_existing_kind(target, "file")
    if _exists(target) and not force:
        raise OutputExistsError(f"{target} already exists; choose another file or pass --force (force=True)")
    check_writable(target)
    return target


def write_text_atomic(path: str | os.PathLike, text: str, force: bool = True) -> None:
    """Write a text file through a temporary sibling and a rename, so readers never see half of it. The file
    gets the umask's mode, as a plain open() would (mkstemp would make it 0600). Without ``force`` an existing
    file is never replaced (the final step claims the name atomically)."""
    target = user_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    tmp = temporary_for(target)
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(text)
        _swap_in(tmp, target, force)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if _is_write_error(err):
            raise _not_writable(target, err) from err
        raise
