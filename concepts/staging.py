"""Outputs that appear whole or not at all, and never replace anything the tool did not write.

Every writing command (build, publish, pull, dissect, report) goes through this module.

**The marker.** Each output folder the tool creates holds a small JSON file named
``.concepts-output`` (:data:`MARKER`): ``{"kind": KIND, "tool": "concepts", "version": ...}``
where KIND is one of :data:`KINDS` (``dataset``, ``published``, ``dissection``, ``report``).
It is written last, just before the folder is moved into place, so a folder carrying it is a
complete output of that kind.

**What ``-o`` may name** (:func:`guard_target`, one ``error:`` line otherwise):

- a folder that does not exist yet, or an existing *empty* folder;
- with ``--overwrite``, a folder whose marker says it is a previous output of the *same* kind.
  Recognition is by the marker only, never by the name or the content: a non-empty folder
  without the marker (including datasets written before the marker existed) is refused even
  with ``--overwrite``; the user removes it themselves.

Always refused, with or without ``--overwrite``: a regular file, a symbolic link or anything else
that is not a folder; the current folder, the home folder, the root folder or any folder holding
one of them; a mount point; and a target that is, contains or lies inside any input of the
command (paths compared after resolving symbolic links).

**How the output appears** (:func:`staged_output`): the work is written into
``.NAME.partial-XXXXXXXX`` beside the target (same file system). When it is complete its modes
are set from the user's umask (temporary folders are created 0700), the marker is written, and
it is moved into place: on Linux with ``renameat2(RENAME_EXCHANGE)``, which swaps the new folder
with the old one in one step, so the name NAME holds the complete old or the complete new output
at every instant; the old output, now under the ``.partial-`` name, is then removed. Where that
call does not exist the old output is first renamed to ``.NAME.old-XXXXXXXX/previous`` (a short
window with nothing at NAME, which the next run repairs by putting the old output back).

**Leftovers.** ``.NAME.partial-*`` and ``.NAME.old-*`` folders beside a target are the tool's own
(an interrupted or killed run); the next run on the same target removes them and says so in one
INFO line (:func:`clean_leftovers`). A run still in progress holds a lock on its staging folder,
so a concurrent run never removes it. An interrupted run removes its own staging folder first:
the CLI turns Ctrl-C into exit 130 and SIGTERM into exit 143 after this clean-up.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from concepts.errors import ConceptsError, OutputExistsError, UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Name of the marker file inside every output folder the tool writes.
MARKER = ".concepts-output"
#: The kinds of output; ``--overwrite`` replaces only an output of the same kind.
KINDS = ("dataset", "published", "dissection", "report")
#: A marker larger than this is not ours (it is read before anything is replaced).
_MARKER_MAX_BYTES = 4096

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
#: errno values meaning "renameat2 or this flag is not available here": fall back to os.rename.
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}
#: errno values that can only come from writing, whatever file they name.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}

_NOUN = {"dataset": "concept dataset", "published": "published dataset", "dissection": "dissection", "report": "report"}


class OutputWriteError(ConceptsError, OSError):
    """The output location cannot be written (read-only, full, or a file where a folder must be)."""


# --- the marker ---------------------------------------------------------------------------------


def write_marker(folder: Path, kind: str) -> None:
    """Write the marker saying ``folder`` is a complete output of ``kind``."""
    from concepts import __version__

    _check_kind(kind)
    text = json.dumps({"kind": kind, "tool": "concepts", "version": __version__}) + "\n"
    (Path(folder) / MARKER).write_text(text, encoding="utf-8")


def is_output(folder: Path, kind: str) -> bool:
    """Whether ``folder`` is a real folder whose marker says it is an output of ``kind``."""
    return _marker_kind(Path(folder)) == kind


def _marker_kind(folder: Path) -> str | None:
    """The kind a folder's marker names, or None (no folder, no marker, or not one we wrote)."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return None
        st = os.lstat(folder / MARKER)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MARKER_MAX_BYTES:
            return None
        data = json.loads((folder / MARKER).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("tool") != "concepts" or data.get("kind") not in KINDS:
        return None
    return data["kind"]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; one of {KINDS}")  # a programming error


# --- the target ---------------------------------------------------------------------------------


def guard_target(out: Path, *, kind: str, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse, in one line, any ``out`` that the rules in this module's docstring forbid."""
    _check_kind(kind)
    out = Path(os.path.abspath(out))
    real = Path(os.path.realpath(out))
    if os.path.islink(out):
        raise OutputExistsError(
            "is a symbolic link; concepts writes only to a real folder", path=out, hint="name the folder itself with -o"
        )
    _refuse_special(out, real)
    for given in inputs:
        inp = Path(os.path.realpath(os.path.abspath(given)))
        what = None
        if real == inp:
            what = "is an input of this command"
        elif inp.is_relative_to(real):
            what = f"contains an input of this command ({given})"
        elif real.is_relative_to(inp):
            what = f"lies inside an input of this command ({given})"
        if what:
            raise UsageError(f"output {what}; concepts never writes over its inputs", path=out, hint="choose another -o")
    _check_existing(out, kind, overwrite)


def _refuse_special(out: Path, real: Path) -> None:
    places = [("root folder", Path(os.path.realpath("/")))]
    try:
        places.append(("current folder", Path(os.path.realpath(os.getcwd()))))
    except OSError:
        pass  # the current folder was removed: nothing there to protect
    home = os.path.expanduser("~")
    if home and home != "~":
        places.append(("home folder", Path(os.path.realpath(home))))
    for name, place in places:
        if real == place:
            raise UsageError(f"output is the {name}; concepts never replaces it", path=out, hint="choose a new folder for -o")
        if place.is_relative_to(real):
            raise UsageError(f"output contains the {name} ({place})", path=out, hint="choose a new folder for -o")
    if os.path.ismount(real):
        raise UsageError("output is a mount point; concepts never replaces one", path=out, hint="choose a folder inside it")


def _check_existing(out: Path, kind: str, overwrite: bool) -> None:
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise OutputWriteError("cannot be created: a file stands where a folder must be", path=out) from None
    except OSError as err:
        raise OutputWriteError(f"cannot be read: {err.strerror}", path=out) from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputExistsError("is a symbolic link; concepts writes only to a real folder", path=out, hint="choose another -o")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputExistsError("exists and is not a folder; concepts never replaces a file", path=out, hint="choose another -o")
    found = _marker_kind(out)
    if found == kind:
        if not overwrite:
            raise OutputExistsError(f"output already exists (a {_NOUN[kind]})", path=out, hint="pass --overwrite to replace it")
        return
    if found is not None:
        raise OutputExistsError(
            f"holds a {_NOUN[found]}, not a {_NOUN[kind]}; --overwrite replaces only an output of the same kind",
            path=out, hint="choose another -o",
        )
    try:
        empty = not any(os.scandir(out))
    except OSError as err:
        raise OutputWriteError(f"cannot be read: {err.strerror}", path=out) from None
    if empty:
        return
    if os.path.lexists(out / "index.csv") or os.path.lexists(out / "run.json"):
        raise OutputExistsError(
            f"looks like an output of an older concepts, which wrote no {MARKER} marker; it is never replaced, "
            "even with --overwrite", path=out, hint="remove it yourself or choose another -o",
        )
    raise OutputExistsError(
        f"is a folder concepts did not write (no {MARKER} marker); it is never replaced, even with --overwrite",
        path=out, hint="remove it yourself or choose another -o",
    )


# --- leftovers ----------------------------------------------------------------------------------


def _leftover_re(name: str) -> re.Pattern[str]:
    # mkdtemp's suffix is 8 characters of [a-z0-9_]; nothing else matches.
    return re.compile(rf"\.{re.escape(name)}\.(partial|old)-[a-z0-9_]{{8}}")


def _locked(path: Path) -> bool:
    """Whether a live run holds the lock on a staging folder."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's own lock
    return False


def clean_leftovers(out: Path) -> list[Path]:
    """Remove this tool's ``.NAME.partial-*``/``.NAME.old-*`` folders beside ``out``; log one line if any."""
    out = Path(os.path.abspath(out))
    pattern = _leftover_re(out.name)
    try:
        entries = [Path(e.path) for e in os.scandir(out.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return []
    removed: list[Path] = []
    restored = None
    for path in sorted(entries):
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode) or _locked(path):
                continue
        except OSError:
            continue
        previous = path / "previous"
        if ".old-" in path.name and not os.path.lexists(out) and _marker_kind(previous) is not None:
            # A run without renameat2 died between its two renames: the old output goes back.
            os.rename(previous, out)
            restored = out
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            removed.append(path)
    if restored is not None:
        log.info("put back the previous output %s, left aside by an interrupted run", restored)
    if removed:
        log.info(
            "removed %d leftover folder(s) of an interrupted run beside %s: %s",
            len(removed), out, ", ".join(p.name for p in removed),
        )
    return removed


# --- staging and replacing ----------------------------------------------------------------------


def _umask() -> int:
    # os.umask can only be read by setting it; this process is single-threaded where it is called.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a new file or folder gets from the umask."""
    mask = _umask()
    want_dir, want_file = 0o777 & ~mask, 0o666 & ~mask

    def fix(path: str, want: int) -> None:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != want:
            os.chmod(path, want)

    fix(str(root), want_dir)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            fix(os.path.join(dirpath, name), want_dir)
        for name in filenames:
            fix(os.path.join(dirpath, name), want_file)


_renameat2_fn = None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Call Linux renameat2; False where the call or the flag is not available here."""
    global _renameat2_fn
    if _renameat2_fn is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)  # the C library already loaded in this process
            fn = libc.renameat2  # glibc 2.28 and later
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2_fn = fn
        except (OSError, AttributeError):
            _renameat2_fn = False
    if _renameat2_fn is False:
        return False
    if _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _exchange(new: Path, out: Path) -> bool:
    """Swap ``new`` and ``out`` in one step; False where the system cannot."""
    return _renameat2(new, out, _RENAME_EXCHANGE)


def _replace_by_two_renames(new: Path, out: Path) -> None:
    # Only where renameat2(RENAME_EXCHANGE) is missing (not Linux, old glibc, some file systems):
    # between the two renames NAME is briefly empty; clean_leftovers puts the old output back if
    # the process dies in that window.
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "previous")
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old / "previous", out)
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _move_into_place(new: Path, out: Path, kind: str, overwrite: bool) -> None:
    """Put the finished folder ``new`` at ``out``, replacing only what guard_target allows."""
    _check_existing(out, kind, overwrite)  # again: something may have appeared during the run
    if not os.path.lexists(out):
        if _renameat2(new, out, _RENAME_NOREPLACE):
            return
        if not os.path.lexists(out):
            os.rename(new, out)
            return
        _check_existing(out, kind, overwrite)
    if _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # now the previous output
        return
    _replace_by_two_renames(new, out)


def write_failed(err: OSError, folder: Path | None = None) -> bool:
    """Whether ``err`` is a failure to write (disk full, read-only) rather than to read an input."""
    if err.errno in _WRITE_ERRNOS:
        return True
    # pyarrow's write errors carry no errno, only the system's words.
    text = str(err)
    if any(os.strerror(code) in text for code in _WRITE_ERRNOS):
        return True
    if folder is None:
        return False
    names = [os.fsdecode(n) for n in (err.filename, err.filename2) if isinstance(n, (str, bytes, os.PathLike))]
    base = os.fspath(folder)
    return any(n == base or n.startswith(base + os.sep) for n in names)


def _write_failure(err: OSError, out: Path, tmp: Path | None) -> OutputWriteError | None:
    """An OSError from writing the output as one line naming the output (never the temporary folder)."""
    if not write_failed(err, tmp):
        return None
    reason = err.strerror or next((os.strerror(c) for c in _WRITE_ERRNOS if os.strerror(c) in str(err)), None)
    return OutputWriteError(f"cannot write the output: {reason or type(err).__name__}", path=out)


def _make_staging(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except (FileExistsError, NotADirectoryError):
        raise OutputWriteError("cannot be created: a file stands where a folder must be", path=out) from None
    except OSError as err:
        raise OutputWriteError(f"cannot be created: {err.strerror}", path=out) from None


@contextmanager
def staged_output(out: Path, *, kind: str, overwrite: bool, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a staging folder beside ``out``; on success it becomes ``out`` (marked), on any error it goes."""
    out = Path(os.path.abspath(out))
    guard_target(out, kind=kind, overwrite=overwrite, inputs=inputs)
    clean_leftovers(out)
    _check_existing(out, kind, overwrite)  # the clean-up may have put a previous output back
    tmp = _make_staging(out)
    lock = _lock(tmp)
    try:
        try:
            yield tmp
            apply_umask(tmp)
            write_marker(tmp, kind)
            _move_into_place(tmp, out, kind, overwrite)
        except ConceptsError:
            raise
        except OSError as err:
            failure = _write_failure(err, out, tmp)
            if failure is None:
                raise
            raise failure from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _lock(folder: Path) -> int | None:
    """Hold an exclusive lock on the staging folder so that a concurrent run leaves it alone."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        return None


# --- the former API, kept for callers outside this area -------------------------------------------


def check_target(out: Path, overwrite: bool, *, kind: str = "dataset", inputs: Iterable[Path] = ()) -> None:
    """Former name of :func:`guard_target`."""
    guard_target(out, kind=kind, overwrite=overwrite, inputs=inputs)


__all__ = [
    "KINDS", "MARKER", "OutputWriteError", "apply_umask", "clean_leftovers", "guard_target", "is_output",
    "staged_output", "write_failed", "write_marker",
]
