"""The format's codecs and small rules (FORMATS.md A.3-A.11)."""

from __future__ import annotations

import numpy as np
import pytest

from concepts.broden import format as fmt


def test_rg_codec_round_trip_and_layout() -> None:
    labels = np.array([[0, 1, 255], [256, 257, fmt.MAX_RG]])
    rgb = fmt.encode_rg(labels)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[1, 1].tolist() == [1, 1, 0] and rgb[0, 2].tolist() == [255, 0, 0]
    assert not rgb[..., 2].any()
    assert np.array_equal(fmt.decode_rg(rgb), labels) and fmt.decode_rg(rgb).dtype == np.int32


@pytest.mark.parametrize("bad", [np.array([[-1]]), np.array([[fmt.MAX_RG + 1]]), np.zeros(3, int)])
def test_rg_codec_refuses_what_it_cannot_carry(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        fmt.encode_rg(bad)


def test_split_hash_check_values() -> None:
    # The check values FORMATS.md A.11 gives from the published broden1_224.
    assert fmt.split_hash("opensurfaces/6582.jpg") == pytest.approx(0.000144, abs=5e-7)
    assert fmt.split_hash("ade20k/ADE_train_00003891.jpg") == pytest.approx(0.0000852, abs=5e-8)
    splits = fmt.parse_splits("train=0.7,val=0.3")
    assert splits == [("train", 0.7), ("val", 0.3)]
    assert fmt.assign_split("opensurfaces/6582.jpg", splits) == "train"
    names = [f"x/{i}.jpg" for i in range(2000)]
    share = sum(fmt.assign_split(n, splits) == "train" for n in names) / len(names)
    assert 0.66 < share < 0.74


@pytest.mark.parametrize("text", ["train=0.7", "train=0.7,val=0.4", "train", "train=x,val=1", "a=0.5,a=0.5", ""])
def test_bad_splits(text: str) -> None:
    with pytest.raises(ValueError):
        fmt.parse_splits(text)


def test_category_cell_and_names() -> None:
    cell = fmt.format_category_cell({"object": 3, "material": 36})
    assert cell == "material(36);object(3)"
    assert fmt.parse_category_cell(cell) == {"material": 36, "object": 3}
    with pytest.raises(ValueError):
        fmt.parse_category_cell("object")
    assert fmt.format_coverage(1e-5) == "0.000010"
    assert fmt.segmentation_name("ADE_1", "part", 2, 3) == "ADE_1_part_2.png"
    assert fmt.segmentation_name("ADE_1", "object", 1, 1) == "ADE_1_object.png"
    assert fmt.code_file("color") == "c_color.csv"


def test_decode_rg_image_matches_the_array_codec() -> None:
    from PIL import Image

    labels = np.random.default_rng(0).integers(0, fmt.MAX_RG + 1, size=(5, 7))
    im = Image.fromarray(fmt.encode_rg(labels), "RGB")
    decoded = fmt.decode_rg_image(im)
    assert decoded.dtype == np.int32 and decoded.shape == (5, 7)
    assert np.array_equal(decoded, labels)
