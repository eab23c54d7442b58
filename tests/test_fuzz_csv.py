"""Property-based fuzzing of a concept dataset's tables (issue 11, section 6).

One cell of ``index.csv``, ``label.csv``, ``category.csv`` or ``c_*.csv`` of an otherwise valid tiny
dataset (tests/synth.py) becomes an arbitrary string: unicode, huge numbers, NaN, empty, quotes,
line breaks, a byte-order mark, NUL. ``validate`` must report findings and ``open_dataset`` must
either succeed or raise a one-line ConceptsError; nothing else may escape. The number of examples
is bounded by the ``concepts`` hypothesis profile (CONCEPTS_FUZZ_EXAMPLES=N for more); a failure
prints the minimal cell.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from synth import toy_dataset  # noqa: E402

from concepts.broden.reader import open_dataset  # noqa: E402
from concepts.errors import ConceptsError  # noqa: E402
from concepts.validate import validate  # noqa: E402

TABLES = {
    "index.csv": ["image", "split", "ih", "iw", "sh", "sw", "color", "object", "scene"],
    "label.csv": ["number", "name", "category", "frequency", "coverage", "syns"],
    "category.csv": ["name", "first", "last", "count", "frequency"],
    "c_object.csv": ["code", "number", "name", "frequency", "coverage"],
}

# Values chosen to break parsers, mixed with arbitrary text.
NASTY = st.sampled_from([
    "", " ", "nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "65536", "1" + "0" * 23, "9" * 5000, "²", "٣", "1_0",
    "0.5", "1e-3", "\x00", "a\x00b.png", "\ufeff", "\ufeff1", '"', '""', "a\nb", "\r", ";", ";;", "(", "object(1", "x(1);y",
    "../../etc/passwd", "/abs.png", "synth\\x.png", "c:/x.png", "synth/img000_object.png", "object", "image", "color",
    "𝟘", "\u2028", "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "a" * 200,
])
CELL = st.one_of(NASTY, st.text(max_size=40), st.integers(min_value=-(10**30), max_value=10**30).map(str),
                 st.floats(allow_nan=True, allow_infinity=True).map(repr))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy_dataset(tmp_path_factory.mktemp("fuzz") / "ds", n=3, size=8, seg=4)


def _plant(pristine: Path, target: Path, table: str, row: int, column: str, value: str) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(pristine, target, symlinks=True)
    path = target / table
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[min(row, len(rows) - 1)][rows[0].index(column)] = value
    with path.open("w", newline="", encoding="utf-8", errors="surrogatepass") as f:
        csv.writer(f).writerows(rows)


def _one_line(e: ConceptsError) -> None:
    assert str(e) and "\n" not in str(e) and "\r" not in str(e), repr(str(e))


def _check(target: Path) -> None:
    try:
        ds = open_dataset(target)
    except ConceptsError as e:
        _one_line(e)
    else:
        # What dissect does with an opened dataset: every image and label layer.
        ds.primary_categories()
        ds.fingerprint()
        for sample in ds:
            for read in [lambda: ds.load_image(sample)] + [lambda c=c: ds.load_labels(sample, c) for c in ds.category_names]:
                try:
                    read()
                except ConceptsError as e:
                    _one_line(e)
    report = validate(target, workers=1)
    for finding in report.findings:
        assert finding.code and finding.severity in ("error", "warning")
        assert "\n" not in str(finding) and "\r" not in str(finding), repr(str(finding))


@given(data=st.data())
def test_fuzz_one_cell(pristine: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    table = data.draw(st.sampled_from(sorted(TABLES)), label="table")
    column = data.draw(st.sampled_from(TABLES[table]), label="column")
    row = data.draw(st.integers(min_value=0, max_value=3), label="row")  # 0 is the header
    value = data.draw(CELL, label="value")
    target = tmp_path_factory.getbasetemp() / "fuzz-target"
    _plant(pristine, target, table, row, column, value)
    _check(target)


@given(prefix=st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b"\r\n", b'"', b"\xef\xbb\xbf\xef\xbb\xbf"]),
       table=st.sampled_from(sorted(TABLES)))
def test_fuzz_table_prefix(pristine: Path, tmp_path_factory: pytest.TempPathFactory, prefix: bytes, table: str) -> None:
    target = tmp_path_factory.getbasetemp() / "fuzz-prefix"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(pristine, target, symlinks=True)
    (target / table).write_bytes(prefix + (target / table).read_bytes())
    _check(target)
