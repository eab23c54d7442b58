"""concepts: build, validate and publish concept datasets, and dissect vision models against them."""

import logging

from concepts.broden import ConceptDataset, Label, Sample, open_dataset
from concepts.errors import ConceptsError
from concepts.records import Record

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["ConceptDataset", "ConceptsError", "Label", "Record", "Sample", "__version__", "open_dataset"]
