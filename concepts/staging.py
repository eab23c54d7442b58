"""Outputs that appear whole or not at all.

Work is written into a temporary folder beside the target (same file system, so the final rename
is atomic) and moved into place only when complete. An interrupted or failed run removes its
temporary folder and leaves any previous output untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from concepts.errors import OutputExistsError


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``."""
    if out.exists() and not overwrite:
        raise OutputExistsError("output already exists", path=out, hint="pass --overwrite to replace it")


def move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename a finished temporary folder to ``out``, replacing an old output only when asked."""
    check_target(out, overwrite)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "previous")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out``, on any error it goes."""
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
