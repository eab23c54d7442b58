"""Safe extraction of untrusted .zip and .tar archives (annotation-tool exports).

Every member is checked before anything is written: no absolute path, no ``..`` component, no
drive letter, no symlink, hard link or device file, at most :data:`MAX_MEMBERS` members and
:data:`MAX_BYTES` uncompressed bytes (declared sizes are checked first, then actual bytes are
counted while copying, so a lying header cannot overshoot). A bad member raises
:class:`~concepts.errors.UnsafeInputError` naming it; nothing is written outside ``dest``.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from concepts.errors import SourceError, UnsafeInputError

log = logging.getLogger(__name__)

MAX_MEMBERS = 200_000
MAX_BYTES = 20 * 1024**3
_CHUNK = 1 << 20


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    text = name.replace("\\", "/")
    rel = PurePosixPath(text)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or ".." in rel.parts or "\x00" in text:
        raise UnsafeInputError(f"archive member {name!r} would be written outside the extraction folder", path=archive)
    parts = [p for p in rel.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _copy(src, target: Path, budget: list[int], name: str, archive: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := src.read(_CHUNK):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise UnsafeInputError(f"archive expands beyond {MAX_BYTES} bytes (at member {name!r})", path=archive)
            out.write(chunk)


def _check_counts(count: int, declared: int, archive: Path) -> None:
    if count > MAX_MEMBERS:
        raise UnsafeInputError(f"archive has {count} members, more than the limit of {MAX_MEMBERS}", path=archive)
    if declared > MAX_BYTES:
        raise UnsafeInputError(f"archive declares {declared} uncompressed bytes, more than the limit of {MAX_BYTES}", path=archive)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_counts(len(infos), sum(i.file_size for i in infos), archive)
        plan = []
        for info in infos:
            rel = _safe_name(info.filename, archive)
            # Unix symlinks are stored with S_IFLNK in the high bits of external_attr.
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeInputError(f"archive member {info.filename!r} is a symbolic link", path=archive)
            plan.append((info, rel))
        budget = [MAX_BYTES]
        for info, rel in plan:
            target = dest / rel
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                _copy(src, target, budget, info.filename, archive)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        _check_counts(len(members), sum(m.size for m in members), archive)
        for m in members:
            _safe_name(m.name, archive)
            if not (m.isfile() or m.isdir()):
                raise UnsafeInputError(f"archive member {m.name!r} is a link or special file", path=archive)
        budget = [MAX_BYTES]
        for m in members:
            target = dest / _safe_name(m.name, archive)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(m)
            if src is None:
                raise SourceError(f"cannot read archive member {m.name!r}", path=archive)
            with src:
                _copy(src, target, budget, m.name, archive)


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a file that :func:`extract_archive` can open."""
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` into the folder ``dest`` safely and return the folder holding the export.

    When the archive holds a single top-level folder (and nothing else), that folder is returned.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest)
        else:
            raise SourceError("not a zip or tar archive", path=archive)
    except UnsafeInputError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError) and not archive.exists():
            raise SourceError("no such archive", path=archive) from None
        raise SourceError(f"cannot extract archive: {e}", path=archive) from None
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    log.debug("extracted %s into %s", archive, dest)
    return dest


def export_folder(path: str | Path) -> Path:
    """``path`` itself when it is a folder or a plain file; an archive is extracted to a temporary folder.

    The folder is removed when the process exits; the CLI extracts archives itself beforehand.
    """
    import atexit
    import tempfile

    path = Path(path)
    if not is_archive(path):
        return path
    scratch = Path(tempfile.mkdtemp(prefix="concepts-export-"))
    atexit.register(shutil.rmtree, scratch, True)
    return extract_archive(path, scratch)
