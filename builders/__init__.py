"""Source readers, one module per format, in an explicit registry.

``register`` refuses duplicate names; ``get`` and ``detect`` look builders up by name or by the
contents of a path. Modules listed in ``_MODULES`` are imported on first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TypeVar

from concepts.builders.base import Builder, Detection
from concepts.errors import SourceError, UsageError

B = TypeVar("B", bound=type[Builder])

_REGISTRY: dict[str, type[Builder]] = {}
_MODULES: tuple[str, ...] = (
    "concepts.builders.folder",
    "concepts.builders.ade20k",
    "concepts.builders.ade20k_scene_parsing",
    "concepts.builders.pascal",
    "concepts.builders.opensurfaces",
    "concepts.builders.dtd",
    "concepts.builders.cvat",
    "concepts.builders.coco",
    "concepts.builders.cvat_mask",
    "concepts.builders.voc",
    "concepts.builders.labelme",
    "concepts.builders.labelme_json",
    "concepts.builders.cityscapes",
)
_loaded = False


def register(cls: B) -> B:
    """Class decorator adding a builder to the registry; a duplicate name is a bug."""
    name = cls.NAME
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a builder named {name!r} is already registered ({_REGISTRY[name].__name__})")
    _REGISTRY[name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(module)
        _loaded = True


def names() -> list[str]:
    """Return the registered format names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> type[Builder]:
    """Return the builder class of a format name."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown source format {name!r}", hint=f"known formats: {', '.join(names())}") from None


def detect(path: Path) -> type[Builder]:
    """Return the builder that recognises ``path`` best, or fail listing what each one expected."""
    _load_all()
    if not path.exists():
        raise SourceError("no such file or directory", path=path)
    results = {name: cls.detect(path) for name, cls in sorted(_REGISTRY.items())}
    best = max(results, key=lambda n: results[n].confidence)
    if results[best].confidence > 0:
        return _REGISTRY[best]
    expected = "; ".join(f"{name}: {', '.join(r.unmet) or 'no match'}" for name, r in results.items())
    raise SourceError(
        "format not recognised",
        path=path,
        hint=f"name it as FORMAT=PATH, or provide what a format expects: {expected}",
    )


__all__ = ["Builder", "Detection", "detect", "get", "names", "register"]
