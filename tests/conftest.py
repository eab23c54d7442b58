"""Shared test setup: progress bars off, so test output stays readable."""

import os
import sys
from pathlib import Path

import pytest

# tests/ holds the fixture generators (synth.py, folder_source.py, ...), imported as plain modules.
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("CONCEPTS_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _no_progress():
    from concepts import progress

    progress.set_enabled(False)
    yield
    progress.set_enabled(None)
