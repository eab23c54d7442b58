"""Network Dissection: label the units of a vision model's layers with concepts of a dataset.

The data flows one way: the reader feeds images and labels (:mod:`dissect.data`), hooks capture
layers (:mod:`dissect.hooks`, :mod:`dissect.features`), per-unit thresholds
(:mod:`dissect.thresholds`), tallies (:mod:`dissect.tally`), results (:mod:`dissect.results`);
:mod:`dissect.run` ties them together. DISSECTION.md is the specification.
"""

from concepts.dissect.run import DissectConfig, dissect

__all__ = ["DissectConfig", "dissect"]
