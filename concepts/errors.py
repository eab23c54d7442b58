"""Exceptions raised by `concepts`.

Every error a user can cause derives from :class:`ConceptsError` and also from the builtin
exception that matches it, so callers can catch either. Each carries the offending ``path``
(and ``row`` or ``item`` where known); ``str(err)`` is the one line the CLI prints.
"""

from __future__ import annotations

from pathlib import Path


class ConceptsError(Exception):
    """Root of every error `concepts` raises on bad input or usage."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        row: int | None = None,
        item: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        self.row = row
        self.item = item
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        """Return the one-line message: ``path[, row N][, item]: message (hint)``."""
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.item is not None:
            where.append(str(self.item))
        text = f"{', '.join(where)}: {self.message}" if where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class UsageError(ConceptsError, ValueError):
    """The command line or API call asks for something impossible."""

    exit_code = 2


class DatasetFormatError(ConceptsError, ValueError):
    """A concept dataset on disk does not follow the Broden format."""


class SourceError(ConceptsError, ValueError):
    """A source dataset or export cannot be read as a whole."""


class SourceItemError(ConceptsError, ValueError):
    """One item of a source is unreadable; the build skips it (or fails under ``--strict``)."""

    def __init__(self, message: str, *, reason: str = "unreadable", **kwargs) -> None:
        self.reason = reason
        super().__init__(message, **kwargs)


class UnsafeInputError(ConceptsError, ValueError):
    """Untrusted input tried something dangerous (path escape, entity expansion, pixel bomb)."""


class OutputExistsError(ConceptsError, FileExistsError):
    """The output exists and ``--overwrite`` was not given."""


class ModelError(ConceptsError, ValueError):
    """A model, checkpoint or layer cannot be used as asked."""


class WorkerDiedError(ConceptsError, RuntimeError):
    """A worker process ended without finishing its work (killed by the system, out of memory)."""
