"""DTD builder at the record level, on a fake r1.0.1 tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from concepts import builders
from concepts.builders.dtd import DtdBuilder
from concepts.errors import SourceError, SourceItemError
from fake_sources import photo, write_dtd


@pytest.fixture
def dtd(tmp_path: Path) -> Path:
    return write_dtd(
        tmp_path,
        [
            ("polka-dotted/polka-dotted_0101.jpg", ["polka-dotted", "banded"], photo(20, 20, 1)),
            ("banded/banded_0002.jpg", ["banded"], photo(20, 20, 2)),
            # The key attribute (the folder) is not always listed first.
            ("zigzagged/zigzagged_0007.jpg", ["striped", "zigzagged", "striped"], photo(20, 20, 3)),
        ],
    )


def test_records(dtd: Path) -> None:
    assert DtdBuilder.detect(dtd.parent).confidence == 1.0
    assert builders.detect(dtd) is DtdBuilder
    b = DtdBuilder(dtd.parent)
    assert b.items() == ["polka-dotted/polka-dotted_0101.jpg", "banded/banded_0002.jpg", "zigzagged/zigzagged_0007.jpg"]
    assert (dtd / "labels" / "labels_joint_anno.txt").read_text().splitlines()[0].endswith(" ")
    names = {}
    for item in b.items():
        rec = b.load(item)
        rec.check()
        assert rec.pixel == {}
        names[rec.key] = [rec.names[("texture", i)][0] for i in rec.image_level["texture"]]
    assert names == {
        "polka-dotted_0101": ["polka-dotted", "banded"],
        "banded_0002": ["banded"],
        "zigzagged_0007": ["zigzagged", "striped"],  # folder class first, duplicates dropped
    }
    assert b.load(b.items()[1]).image_level["texture"] == [b.ids["banded"]] == [b.load(b.items()[0]).image_level["texture"][1]]


def test_missing_image_and_bad_line(dtd: Path) -> None:
    b = DtdBuilder(dtd)
    (dtd / "images" / "banded" / "banded_0002.jpg").unlink()
    with pytest.raises(SourceItemError) as err:
        b.load("banded/banded_0002.jpg")
    assert err.value.reason == "missing image"
    (dtd / "labels" / "labels_joint_anno.txt").write_text("banded_0002.jpg banded \n")
    with pytest.raises(SourceError, match="row 1"):
        DtdBuilder(dtd)


def test_without_joint_labels_uses_folders(dtd: Path) -> None:
    (dtd / "labels" / "labels_joint_anno.txt").unlink()
    assert not DtdBuilder.detect(dtd)
    b = DtdBuilder(dtd)
    assert b.items() == ["banded/banded_0002.jpg", "polka-dotted/polka-dotted_0101.jpg", "zigzagged/zigzagged_0007.jpg"]
    rec = b.load("zigzagged/zigzagged_0007.jpg")
    assert [rec.names[("texture", i)] for i in rec.image_level["texture"]] == [("zigzagged",)]
