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


@pytest.fixture(autouse=True)
def _default_limits():
    # `concepts --max-pixels N` sets the limit for its whole process (workers inherit it through the
    # environment); in-process CLI runs must not hand it on to the next test.
    from concepts import limits

    saved = {k: os.environ.get(k) for k in (limits.ENV, limits.ARCHIVE_BYTES_ENV, limits.ARCHIVE_RATIO_ENV)}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    limits.apply_to_pillow()


# Property-based fuzzing: a bounded number of examples in the normal run, more on demand
# (CONCEPTS_FUZZ_EXAMPLES=5000 pytest tests -k fuzz); a failure prints the minimal input.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "concepts",
        max_examples=int(os.environ.get("CONCEPTS_FUZZ_EXAMPLES", "60")),
        deadline=None,
        derandomize=not os.environ.get("CONCEPTS_FUZZ_EXAMPLES"),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )
    settings.load_profile("concepts")
except ImportError:  # hypothesis comes with the test extras
    pass


@pytest.fixture
def in_tests_dir(monkeypatch):
    """Run from the tests folder, where factories such as ``synth:red_unit_net`` are importable."""
    monkeypatch.chdir(Path(__file__).parent)
