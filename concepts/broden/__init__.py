"""The Broden format: constants, codecs, the reader and the writer."""

from concepts.broden.format import (
    BRODEN_CATEGORIES,
    assign_split,
    decode_rg,
    encode_rg,
    parse_splits,
    split_hash,
)
from concepts.broden.reader import Category, ConceptDataset, Label, Sample, open_dataset

__all__ = [
    "BRODEN_CATEGORIES",
    "Category",
    "ConceptDataset",
    "Label",
    "Sample",
    "assign_split",
    "decode_rg",
    "encode_rg",
    "open_dataset",
    "parse_splits",
    "split_hash",
]
