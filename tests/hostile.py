"""The hostile-input harness: run a command as a careless or hostile user would, then check the promises.

Every hostile-input test (tests/test_hostile_*.py) uses these checks, so each case asserts the same
things: the exit code, exactly one ``error:`` line naming the file or value, no traceback, a marker
file that the malicious content tries to create never exists, every file that existed before is
unchanged, nothing from outside the input reaches the output, and no ``.partial``/``.old`` leftovers.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

#: A file that malicious content (a pickle, a factory, a path) tries to create; it must never exist.
SECRET = "TOP-SECRET-CONTENT-7f3a"


@dataclass
class Outcome:
    """What one command did: exit code and its two streams."""

    code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        """The ``error:`` lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def invoke(args: list[str], cwd: Path | None = None) -> Outcome:
    """Run ``concepts ARGS`` in this process (fast; exceptions escaping the CLI are tracebacks)."""
    from concepts.cli import app

    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))
    return Outcome(result.exit_code, result.stdout, stderr)


def run(args: list[str], cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> Outcome:
    """Run ``concepts ARGS`` as a separate process, exactly as a user does."""
    full_env = {**os.environ, "CONCEPTS_NO_PROGRESS": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "concepts", *[str(a) for a in args]],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_one_error(out: Outcome, *needles: str, code: int | None = None) -> str:
    """Exit non-zero (or ``code``), exactly one ``error:`` line containing every needle, no traceback."""
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr[-3000:]
    assert out.code != 0, f"exit 0; stderr: {out.stderr[-2000:]}"
    if code is not None:
        assert out.code == code, f"exit {out.code}, expected {code}; stderr: {out.stderr[-2000:]}"
    lines = out.errors
    assert len(lines) == 1, f"expected one error line, got {lines!r}; stderr: {out.stderr[-2000:]}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(*roots: Path) -> dict[str, str]:
    """Hash every file and link under ``roots`` (links by their target, never followed)."""
    state: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if root.is_symlink() or root.is_file():
            state[str(root)] = _digest(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = Path(dirpath, name)
                state[str(p)] = _digest(p)
    return state


def _digest(p: Path) -> str:
    if p.is_symlink():
        return "link:" + os.readlink(p)
    if not p.is_file():
        return "special"
    return hashlib.sha256(p.read_bytes()).hexdigest()


def assert_unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    """Every file that existed before still exists with the same content."""
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"changed or removed: {changed[:10]}"


def assert_no_leftovers(*folders: Path) -> None:
    """No ``.NAME.partial-*`` or ``.NAME.old-*`` staging folders remain."""
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        left = [p.name for p in Path(folder).iterdir() if ".partial-" in p.name or ".old-" in p.name]
        assert not left, f"leftovers in {folder}: {left}"


def assert_not_in_tree(root: Path, content: str = SECRET) -> None:
    """No file under ``root`` holds ``content`` (a file from outside the input leaked in)."""
    needle = content.encode()
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath, name)
            if not p.is_symlink() and needle in p.read_bytes():
                raise AssertionError(f"{p} holds content from outside the input")
