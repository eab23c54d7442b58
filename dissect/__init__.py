"""Network Dissection: label the units of a vision model's layers with concepts of a dataset.

The one entry point is :func:`dissect`, for Python and the CLI alike::

    from concepts.dissect import dissect

    result = dissect(model, "broden1_224", layers=["layer4"], out="runs/r18", preprocess=weights.transforms())
    result.tally("layer4"); result.summary(); result.iou("layer4"); result.report("runs/r18/report")

The data flows one way: the reader feeds images and labels (:mod:`dissect.data`), hooks capture
layers (:mod:`dissect.hooks`, :mod:`dissect.features`), per-unit thresholds
(:mod:`dissect.thresholds`), tallies (:mod:`dissect.tally`), results (:mod:`dissect.results`);
:mod:`dissect.run` ties them together. DISSECTION.md is the specification.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DissectConfig", "DissectResult", "dissect"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `concepts report` reads results and must not pay for torch and scipy.
    if name in ("DissectConfig", "dissect"):
        from concepts.dissect import run

        return getattr(run, name)
    if name == "DissectResult":
        from concepts.dissect.results import DissectResult

        return DissectResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
