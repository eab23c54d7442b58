"""``concepts info``: a summary table of a dataset (placeholder until the validator lands)."""
