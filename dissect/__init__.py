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

from concepts.dissect.results import DissectResult
from concepts.dissect.run import DissectConfig, dissect

__all__ = ["DissectConfig", "DissectResult", "dissect"]
