"""The contract every source builder follows.

A builder reads one source format and never writes files. A subclass provides:

* ``NAME``: the format name users type (``ade20k``, ``cvat``), unique in the registry;
* ``KEY``: the default source key, the folder under ``images/`` (defaults to ``NAME``);
* ``DESCRIPTION``: one line for ``--help`` and detection errors;
* ``detect(path)``: a :class:`Detection` saying how sure it is that ``path`` holds this format,
  or which requirements are unmet; a release-style source can instead provide ``locate(path)``
  (the folder holding the release: ``path`` itself, a conventional child or an extracted
  archive's folder) with ``EXPECTS`` (what it looks for) and ``RELEASE`` (its name in errors);
* ``items()``: a cheap, deterministic, picklable list of the source's items (no decoding);
* ``load(item)``: the :class:`~concepts.records.Record` of one item; runs in worker processes;
  raises :class:`~concepts.errors.SourceItemError` to skip an unreadable item.

Options (``options`` mapping) are source specific (``pascal_context_classes``, ``supply``);
a builder ignores options that are not its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from concepts.errors import SourceError, UsageError
from concepts.records import Record


@dataclass
class Detection:
    """How well a path matches a format: ``confidence`` in 0..1, or the unmet requirements."""

    confidence: float = 0.0
    unmet: list[str] = field(default_factory=list)

    @classmethod
    def match(cls, confidence: float = 1.0) -> Detection:
        """A positive detection."""
        return cls(confidence=confidence)

    @classmethod
    def missing(cls, *requirements: str) -> Detection:
        """A failed detection listing what was expected and not found."""
        return cls(confidence=0.0, unmet=list(requirements))

    def __bool__(self) -> bool:
        return self.confidence > 0


class Builder(ABC):
    """Base class of the source readers; see the module docstring for the contract."""

    NAME: ClassVar[str]
    KEY: ClassVar[str | None] = None
    DESCRIPTION: ClassVar[str] = ""
    #: What :meth:`detect` reports missing when :meth:`locate` finds nothing.
    EXPECTS: ClassVar[str] = ""
    #: How errors name the source when it is not found (``"an ADE20K 2016 release"``).
    RELEASE: ClassVar[str] = ""

    def __init__(self, root: str | Path, options: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.options: dict[str, Any] = dict(options or {})
        self.key: str = str(self.options.get("key") or self.KEY or self.NAME)
        #: Categories this source contributes (``"color"`` included); ``None`` means all it has.
        self.supply: set[str] | None = None

    @classmethod
    def locate(cls, path: Path) -> Path | None:
        """The folder inside ``path`` (or ``path`` itself) that holds this source, or None."""
        return None

    @classmethod
    def detect(cls, path: Path) -> Detection:
        """Say whether ``path`` holds this format, and if not, what is missing."""
        return Detection.match(1.0) if cls.locate(path) else Detection.missing(cls.EXPECTS)

    def located(self) -> Path:
        """The folder :meth:`locate` finds under ``self.root``; a SourceError when there is none."""
        base = self.locate(self.root)
        if base is None:
            raise SourceError(f"not {self.RELEASE or self.NAME}: expected {self.EXPECTS}", path=self.root)
        return base

    @abstractmethod
    def items(self) -> Sequence[Hashable]:
        """List the source's items cheaply and deterministically."""

    @abstractmethod
    def load(self, item: Any) -> Record:
        """Decode one item into a record (runs in a worker process)."""

    def declared_categories(self) -> dict[str, tuple[Path | None, str | None, type[Exception]]]:
        """Categories the user's files name (a mapping, a label table): ``name -> (path, where, error)``.

        The unifier checks them against the build options (a user category ``color`` clashes with
        the computed colour category only while ``--color`` is on). By default: the categories of
        the builder's concept mapping file, if it has one.
        """
        from concepts.mapping import locate

        mapping = getattr(self, "mapping", None)
        categories = getattr(mapping, "categories", None) or {}
        return {name: (mapping.source, locate(mapping.source, where), UsageError) for name, where in categories.items()}

    def summary(self) -> dict[str, int]:
        """Counts gathered while listing items (for example images listed but missing)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"
