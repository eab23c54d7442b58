"""``concepts validate``: check a dataset against the format (placeholder until the validator lands)."""
