"""Property-based check of the output guard: whatever ``-o`` a user types, an accepted target is safe.

Paths are generated from the names of a planted working folder (an input, a file, a marked
output, a user's folder, a link, ``.`` and ``..``); for every accepted target the safety rules are
checked against what was planted, not against the guard's code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from concepts.errors import ConceptsError  # noqa: E402
from concepts.staging import MARKER, guard_target, write_marker  # noqa: E402

SEGMENTS = [".", "..", "export", "images", "a.png", "ds", "notes", "thesis.docx", "new", "link", "empty", "hf"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("fuzz") / "work"
    (work / "export" / "images").mkdir(parents=True)
    (work / "export" / "images" / "a.png").write_bytes(b"png")
    (work / "ds").mkdir()
    write_marker(work / "ds", "dataset")
    (work / "hf").mkdir()
    write_marker(work / "hf", "published")
    (work / "notes").mkdir()
    (work / "notes" / "draft.txt").write_text("mine")
    (work / "empty").mkdir()
    (work / "thesis.docx").write_text("mine")
    (work / "link").symlink_to(work / "export")
    return work


@given(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4), st.booleans())
def test_accepted_targets_are_safe(planted: Path, parts: list[str], overwrite: bool) -> None:
    work = planted
    out = work.joinpath(*parts)
    try:
        guard_target(out, kind="dataset", overwrite=overwrite, inputs=[work / "export"])
    except ConceptsError as err:
        assert "\n" not in str(err)
        return
    real = Path(os.path.realpath(out))
    export = Path(os.path.realpath(work / "export"))
    assert not real.is_relative_to(export) and not export.is_relative_to(real), real
    assert not Path(os.path.realpath(work)).is_relative_to(real), "would replace a folder holding the cwd-like work"
    assert not out.is_symlink()
    if out.exists():
        assert out.is_dir()
        assert not any(out.iterdir()) or ((out / MARKER).is_file() and overwrite and real == Path(os.path.realpath(work / "ds")))
