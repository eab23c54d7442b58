"""OpenSurfaces builder at the record level, on a fake release-0 tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concepts import builders
from concepts.builders.opensurfaces import OpenSurfacesBuilder, parse_supply, surface_names
from concepts.errors import SourceError, SourceItemError, UsageError
from fake_sources import OsPhoto, photo, write_opensurfaces

SUBSTANCES = ["Brick", "Carpet/rug", "Plastic - clear", "Wood"]
NAMES = ["Cabinet/cupboard", "Floor", "Wall"]
SCENES = ["Bathroom", "Kitchen", "Living room"]
LH, LW = 32, 48  # label renderings are 1024 high in the release, never photo-sized


def _labels() -> tuple[np.ndarray, np.ndarray]:
    material = np.zeros((LH, LW), np.uint8)
    material[:16, :] = 2  # carpet/rug
    material[16:, :24] = 3  # plastic - clear
    objects = np.zeros((LH, LW), np.uint8)
    objects[:16, :] = 2  # floor
    objects[20:, 30:] = 1  # cabinet
    return material, objects


@pytest.fixture
def release(tmp_path: Path) -> Path:
    material, objects = _labels()
    zeros = np.zeros((LH, LW), np.uint8)
    bad = material.copy()
    bad[0, 0] = 9
    photos = [
        OsPhoto(101, photo(60, 90, 1), "Kitchen", material, objects),
        OsPhoto(7, photo(60, 90, 2), "", zeros, zeros),  # unlabeled photo, empty scene
        OsPhoto(55, None, "Bathroom", material, objects),  # download failed
        OsPhoto(12, photo(60, 90, 3), "Living room", bad, objects),
    ]
    return write_opensurfaces(tmp_path / "opensurfaces", SUBSTANCES, NAMES, SCENES, photos)


def test_names_and_supply() -> None:
    assert surface_names("Carpet/rug") == ("Carpet", "rug")
    assert surface_names("Plastic - clear") == ("Plastic-clear",)
    assert parse_supply("material, color") == {"material", "color"} and parse_supply(None) is None
    with pytest.raises(UsageError, match="texture"):
        parse_supply("material,texture")


def test_records_read_red_and_green_never_blue(release: Path) -> None:
    assert OpenSurfacesBuilder.detect(release.parent).confidence == 1.0
    assert builders.detect(release) is OpenSurfacesBuilder
    b = OpenSurfacesBuilder(release)
    assert b.supply is None and b.items() == ["101", "7", "55", "12"]  # photos.csv order
    rec = b.load("101")
    rec.check()
    material, objects = _labels()
    np.testing.assert_array_equal(rec.pixel["material"][0], material)
    # Blue holds the scene (2 = Kitchen) on every pixel; it must not leak into objects.
    np.testing.assert_array_equal(rec.pixel["object"][0], objects)
    assert rec.names[("material", 2)] == ("Carpet", "rug") and rec.names[("material", 3)] == ("Plastic-clear",)
    assert rec.names[("object", 1)] == ("Cabinet", "cupboard")
    assert rec.names[("scene", rec.image_level["scene"][0])] == ("kitchen-s",)
    assert rec.image == release / "photos" / "101.jpg"
    unlabeled = b.load("7")
    assert unlabeled.pixel == {} and unlabeled.image_level == {}


def test_supply_limits_categories(release: Path) -> None:
    b = OpenSurfacesBuilder(release, {"supply": "material,color"})
    assert b.supply == {"material", "color"}
    rec = b.load("101")
    assert set(rec.pixel) == {"material"} and rec.image_level == {}
    assert {c for c, _ in rec.names} == {"material"}


def test_bad_items(release: Path) -> None:
    b = OpenSurfacesBuilder(release)
    with pytest.raises(SourceItemError) as err:
        b.load("55")
    assert err.value.reason == "missing image"
    with pytest.raises(SourceItemError) as err:
        b.load("12")
    assert err.value.reason == "unknown label id" and "material code 9" in str(err.value)
    (release / "photos-labels" / "7.png").unlink()
    with pytest.raises(SourceItemError) as err:
        b.load("7")
    assert err.value.reason == "missing label image"
    (release / "label-substance-colors.csv").write_text("substance_id,substance_name\n1,Brick\n")
    with pytest.raises(SourceError, match="red_color"):
        OpenSurfacesBuilder(release)


def test_exif_rotated_photo_is_turned_to_match_labels(release: Path) -> None:
    # Stored 90 x 60 (portrait) with orientation 6: shown as 60 high x 90 wide, like the labels.
    stored = Image.fromarray(photo(90, 60, 5))
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(release / "photos" / "101.jpg", exif=exif)
    rec = OpenSurfacesBuilder(release).load("101")
    assert isinstance(rec.image, Image.Image) and rec.image.size == (90, 60)


def test_found_inside_an_extracted_folder(release: Path, tmp_path: Path) -> None:
    extracted = tmp_path / "scratch"
    extracted.mkdir()
    release.rename(extracted / "OpenSurfaces-release-0")
    assert OpenSurfacesBuilder.detect(extracted).confidence == 1.0
    assert OpenSurfacesBuilder(extracted).items() == ["101", "7", "55", "12"]
    assert OpenSurfacesBuilder.detect(tmp_path).unmet == ["photos.csv + photos-labels/ (OpenSurfaces release 0)"]
