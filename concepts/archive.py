"""Safe extraction of untrusted .zip and .tar archives (annotation-tool exports).

Every member is checked before anything is written: no absolute path, no ``..`` component, no
drive letter, no NUL byte, no symlink, hard link or device file (tar members also pass tarfile's
``data`` extraction filter where Python has it), at most :data:`MAX_MEMBERS` members. The
expanded size is bounded (:func:`concepts.limits.archive_budget`): at most
``CONCEPTS_MAX_ARCHIVE_BYTES`` (20 GiB by default) and at most ``CONCEPTS_MAX_ARCHIVE_RATIO``
(100 by default) times the archive's own size, so a 1 MB zip cannot fill a disk. Declared sizes
are checked first, then actual bytes are counted while copying, so a lying header cannot
overshoot. A bad member raises :class:`~concepts.errors.UnsafeInputError` naming it; nothing is
written outside ``dest``.
"""

from __future__ import annotations

import logging
import lzma
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from concepts.errors import ConceptsError, SourceError, UnsafeInputError
from concepts.limits import archive_budget

log = logging.getLogger(__name__)

#: Most members an archive may hold (a guard against millions of tiny files).
MAX_MEMBERS = 200_000
_CHUNK = 1 << 20


class _Budget:
    """Bytes an archive may still expand to; raises once actual or declared bytes exceed it."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.limit, self.hint = archive_budget(archive.stat().st_size)
        self.left = self.limit

    def refuse(self, what: str) -> UnsafeInputError:
        return UnsafeInputError(f"archive {what}, more than the limit of {self.limit:,} bytes", path=self.archive, hint=self.hint)

    def declared(self, total: int) -> None:
        if total > self.limit:
            raise self.refuse(f"declares {total:,} uncompressed bytes")

    def spend(self, n: int, name: str) -> None:
        self.left -= n
        if self.left < 0:
            raise self.refuse(f"expands beyond its declared sizes (at member {name!r})")


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    text = name.replace("\\", "/")
    rel = PurePosixPath(text)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or ".." in rel.parts or "\x00" in text:
        raise UnsafeInputError(f"archive member {name!r} would be written outside the extraction folder", path=archive)
    parts = [p for p in rel.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _copy(src, target: Path, budget: _Budget, name: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := src.read(_CHUNK):
            budget.spend(len(chunk), name)
            out.write(chunk)


def _check_count(count: int, archive: Path) -> None:
    if count > MAX_MEMBERS:
        raise UnsafeInputError(f"archive has {count} members, more than the limit of {MAX_MEMBERS}", path=archive)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_count(len(infos), archive)
        budget = _Budget(archive)
        budget.declared(sum(i.file_size for i in infos))
        plan = []
        for info in infos:
            rel = _safe_name(info.filename, archive)
            # Unix symlinks are stored with S_IFLNK in the high bits of external_attr.
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeInputError(f"archive member {info.filename!r} is a symbolic link", path=archive)
            plan.append((info, rel))
        for info, rel in plan:
            target = dest / rel
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                _copy(src, target, budget, info.filename)


def _tar_members(tf: tarfile.TarFile, archive: Path, budget: _Budget, dest: Path) -> list[tarfile.TarInfo]:
    """Every member, checked, stopping as soon as a count or the declared size is too large."""
    members, declared = [], 0
    data_filter = getattr(tarfile, "data_filter", None)  # Python >= 3.11.4 / 3.12
    for m in tf:
        members.append(m)
        _check_count(len(members), archive)
        declared += m.size
        budget.declared(declared)
        _safe_name(m.name, archive)
        if not (m.isfile() or m.isdir()):
            raise UnsafeInputError(f"archive member {m.name!r} is a link or special file", path=archive)
        if data_filter is not None:
            try:
                data_filter(m, str(dest))
            except tarfile.FilterError as e:
                raise UnsafeInputError(f"archive member {m.name!r} refused: {e}", path=archive) from None
    return members


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        budget = _Budget(archive)
        members = _tar_members(tf, archive, budget, dest)
        for m in members:
            target = dest / _safe_name(m.name, archive)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(m)
            if src is None:
                raise SourceError(f"cannot read archive member {m.name!r}", path=archive)
            with src:
                _copy(src, target, budget, m.name)


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
    except ConceptsError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, NotImplementedError, RuntimeError,
            zlib.error, lzma.LZMAError) as e:
        # Corrupt, encrypted or unsupported members (zlib errors, "password required") end here too.
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
