"""A tiny COCO 2017 release on disk, laid out and keyed as the official downloads are.

``annotations_trainval2017.zip`` gives ``annotations/instances_val2017.json``,
``captions_val2017.json`` and ``person_keypoints_val2017.json`` (keys in the official order: info,
licenses, images, annotations, categories); ``image_info_test2017.zip`` gives
``image_info_test-dev2017.json`` (no annotations); ``stuff_annotations_trainval2017.zip`` gives
``stuff_val2017.json`` (compressed RLE, categories 92-183 with 183 ``other`` over every thing pixel);
``panoptic_annotations_trainval2017.zip`` gives ``panoptic_val2017.json`` and the PNG folder
``panoptic_val2017/`` (ids as R + 256 G + 256^2 B). Images are ``val2017/<12 digits>.jpg``.
Category ids, names and supercategories are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as cocomask

H, W = 12, 16
IMAGES = [{"license": 4, "file_name": "000000000139.jpg", "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg",
           "height": H, "width": W, "date_captured": "2013-11-21 01:34:01", "flickr_url": "http://farm9.staticflickr.com/x.jpg", "id": 139},
          {"license": 1, "file_name": "000000000285.jpg", "coco_url": "http://images.cocodataset.org/val2017/000000000285.jpg",
           "height": H, "width": W, "date_captured": "2013-11-18 22:17:15", "flickr_url": "http://farm8.staticflickr.com/y.jpg", "id": 285}]
INFO = {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0", "year": 2017,
        "contributor": "COCO Consortium", "date_created": "2017/09/01"}
LICENSES = [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "Attribution-NonCommercial-ShareAlike License"}]
THINGS = [{"supercategory": "person", "id": 1, "name": "person"}, {"supercategory": "animal", "id": 23, "name": "bear"},
          {"supercategory": "furniture", "id": 62, "name": "chair"}]
STUFF = [{"supercategory": "plant", "id": 124, "name": "grass"}, {"supercategory": "sky", "id": 157, "name": "sky-other"},
         {"supercategory": "other", "id": 183, "name": "other"}]
PANOPTIC_CATEGORIES = [{"supercategory": "animal", "isthing": 1, "id": 23, "name": "bear", "color": [174, 57, 255]},
                       {"supercategory": "sky", "isthing": 0, "id": 187, "name": "sky-other-merged", "color": [106, 154, 176]},
                       {"supercategory": "plant", "isthing": 0, "id": 193, "name": "grass-merged", "color": [255, 214, 179]}]


def rle(mask: np.ndarray) -> dict:
    """Compressed RLE as the release stores it (pycocotools' encode, counts as text)."""
    enc = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(enc["size"][0]), int(enc["size"][1])], "counts": enc["counts"].decode("ascii")}


def instances() -> list[dict]:
    """Image 139: a person (float polygon) over a chair, then a crowd of people (RLE); 285: a bear in two pieces."""
    crowd = np.zeros((H, W), bool)
    crowd[9:12, 0:5] = True
    return [
        {"segmentation": [[1.5, 2.2, 9.7, 2.0, 10.4, 8.6, 2.1, 9.3]], "area": 50.0, "iscrowd": 0, "image_id": 139,
         "bbox": [1.5, 2.0, 8.9, 7.3], "category_id": 62, "id": 101},
        {"segmentation": [[4.0, 0.5, 7.5, 0.5, 8.2, 11.0, 3.3, 10.6]], "area": 40.0, "iscrowd": 0, "image_id": 139,
         "bbox": [3.3, 0.5, 4.9, 10.5], "category_id": 1, "id": 102},
        {"segmentation": rle(crowd), "area": 15, "iscrowd": 1, "image_id": 139, "bbox": [0, 9, 5, 3], "category_id": 1, "id": 103},
        {"segmentation": [[10.0, 3.0, 15.0, 3.0, 15.0, 9.0, 10.0, 9.0], [1.0, 1.0, 4.0, 1.0, 2.5, 5.0]], "area": 36.0,
         "iscrowd": 0, "image_id": 285, "bbox": [1, 1, 14, 8], "category_id": 23, "id": 104},
    ]


def stuff_masks() -> dict[int, list[tuple[int, np.ndarray]]]:
    """Planted COCO-Stuff regions per image: sky on top, grass below, ``other`` in the middle."""
    out = {}
    for image_id in (139, 285):
        sky, grass, other = (np.zeros((H, W), bool) for _ in range(3))
        sky[:4] = True
        grass[8:] = True
        other[4:8] = True
        out[image_id] = [(157, sky), (124, grass), (183, other)]
    return out


def panoptic_ids() -> np.ndarray:
    """Image 285's planted segment ids: sky, grass, one bear; a band of 0 (void)."""
    ids = np.zeros((H, W), np.int64)
    ids[:5] = 6_953_322  # sky
    ids[7:] = 11_768_063  # grass
    ids[6:10, 3:9] = 2_000_001  # the bear
    return ids


SEGMENTS = [{"id": 6_953_322, "category_id": 187, "iscrowd": 0, "bbox": [0, 0, W, 5], "area": 5 * W},
            {"id": 11_768_063, "category_id": 193, "iscrowd": 0, "bbox": [0, 7, W, 5], "area": 0},
            {"id": 2_000_001, "category_id": 23, "iscrowd": 0, "bbox": [3, 6, 6, 4], "area": 24}]


def id_png(ids: np.ndarray) -> Image.Image:
    """An RGB PNG holding ids as R + 256 G + 256^2 B (panopticapi's id2rgb)."""
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _dump(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_release(root: Path, *, things: bool = True, stuff: bool = True, panoptic: bool = False, image_dir: str = "val2017",
                  nested_png: bool = False, skip_images: tuple[str, ...] = ()) -> Path:
    """Write the release under ``root``; ``image_dir`` is where the images go (relative, "" for beside)."""
    ann = root / "annotations"
    if things:
        _dump(ann / "instances_val2017.json", {"info": INFO, "licenses": LICENSES, "images": IMAGES,
                                               "annotations": instances(), "categories": THINGS})
    _dump(ann / "captions_val2017.json", {"info": INFO, "licenses": LICENSES, "images": IMAGES, "annotations": [
        {"image_id": 139, "id": 1, "caption": "A woman stands in the dining area at the table."},
        {"image_id": 285, "id": 2, "caption": "A big brown bear is sitting in the grass."}]})
    person = dict(THINGS[0], keypoints=["nose", "left_eye"], skeleton=[[1, 2]])
    _dump(ann / "person_keypoints_val2017.json", {"info": INFO, "licenses": LICENSES, "images": IMAGES, "annotations": [
        dict(instances()[1], keypoints=[5, 2, 2, 6, 2, 1], num_keypoints=2)], "categories": [person]})
    _dump(ann / "image_info_test-dev2017.json", {"info": INFO, "licenses": LICENSES, "images": [dict(IMAGES[0], id=1)],
                                                 "categories": THINGS})
    if stuff:
        anns = [{"segmentation": rle(mask), "area": float(mask.sum()), "iscrowd": 0, "image_id": image_id,
                 "bbox": [0, 0, W, H], "category_id": cat, "id": 10_000 + 10 * image_id + k}
                for image_id, regions in stuff_masks().items() for k, (cat, mask) in enumerate(regions)]
        _dump(ann / "stuff_val2017.json", {"info": INFO, "licenses": LICENSES, "images": IMAGES, "annotations": anns,
                                           "categories": STUFF})
    if panoptic:
        _dump(ann / "panoptic_val2017.json", {"info": INFO, "licenses": LICENSES, "images": [IMAGES[1]],
                                              "annotations": [{"segments_info": SEGMENTS, "file_name": "000000000285.png",
                                                               "image_id": 285}], "categories": PANOPTIC_CATEGORIES})
        folder = ann / "panoptic_val2017" / ("panoptic_val2017" if nested_png else "")
        folder.mkdir(parents=True, exist_ok=True)
        id_png(panoptic_ids()).save(folder / "000000000285.png")
    rng = np.random.default_rng(0)
    for im in IMAGES:
        if im["file_name"] in skip_images:
            continue
        target = root / image_dir / im["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(target)
    return root
