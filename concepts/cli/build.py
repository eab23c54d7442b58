"""``concepts build``: join sources into one concept dataset."""
