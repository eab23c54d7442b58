"""Turn one layer's counts into labels and write its result files (each atomically)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from concepts.dissect.tally import iou as compute_iou


def safe_name(layer: str) -> str:
    """A layer name usable in file names."""
    return re.sub(r"[^\w.\-]", "_", layer)


def layer_files(layer: str) -> dict[str, str]:
    """The result file names of one layer."""
    s = safe_name(layer)
    return {
        "tally": f"tally_{s}.csv",
        "matrices": f"matrices_{s}.npz",
        "thresholds": f"thresholds_{s}.npy",
        "topk": f"topk_{s}.csv",
    }


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary name beside ``path``, then move it into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        # A full disk or an interrupt must not leave a half-written hidden file behind.
        tmp.unlink(missing_ok=True)
        raise


def best_labels(iou: np.ndarray, primary: np.ndarray, num_categories: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per category the best label and its IoU (``C x U``), and each unit's best category.

    As in the reference, a category's label is the argmax of IoU masked to the labels whose
    primary category it is (first label on ties), and the unit's category is the best of those
    with ties going to the later category.
    """
    masks = primary[None, :] == np.arange(num_categories)[:, None]  # C x L
    masked = iou[None, :, :] * masks[:, None, :]  # C x U x L
    label = masked.argmax(axis=2)
    score = np.take_along_axis(masked, label[:, :, None], axis=2)[:, :, 0]
    best = num_categories - 1 - score[::-1].argmax(axis=0)
    return label, score, best


def tally_rows(arrays: dict[str, np.ndarray], iou: np.ndarray, primary: np.ndarray, categories: Sequence[str], label_names: Sequence[str]) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]:
    """The reference's ``tally.csv`` rows (sorted by score, descending) plus per-unit summaries."""
    label, score, best = best_labels(iou, primary, len(categories))
    units = iou.shape[0]
    u = np.arange(units)
    unit_score = score[best, u]
    unit_label = label[best, u]
    rows = []
    for k in np.argsort(-unit_score, kind="stable").tolist():
        row: dict[str, Any] = {"unit": k + 1, "category": categories[best[k]], "label": label_names[unit_label[k]], "score": float(unit_score[k])}
        for c, cat in enumerate(categories):
            lab = int(label[c, k])
            row[f"{cat}-label"] = label_names[lab]
            row[f"{cat}-truth"] = int(arrays["truth"][lab])
            # No label of the category overlaps the unit: the argmax is label 0, to which the
            # reference gives the last category as primary; its CSV shows that category's count.
            row[f"{cat}-activation"] = int(arrays["activation"][k, lab] if lab else arrays["activation_category"][k, -1])
            row[f"{cat}-intersect"] = int(arrays["intersection"][k, lab])
            row[f"{cat}-iou"] = float(score[c, k])
        rows.append(row)
    return rows, unit_label, unit_score, best


def _csv(fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_layer(
    out: Path,
    layer: str,
    arrays: dict[str, np.ndarray],
    thresholds: np.ndarray,
    primary: np.ndarray,
    categories: Sequence[str],
    label_names: Sequence[str],
    iou_threshold: float,
    topk: tuple[np.ndarray, np.ndarray],
    images: Sequence[str],
) -> dict[str, Any]:
    """Write a layer's tally CSV, matrices, thresholds and top-k images; return its summary."""
    files = {k: out / v for k, v in layer_files(layer).items()}
    iou = compute_iou(arrays)
    rows, unit_label, unit_score, best = tally_rows(arrays, iou, primary, categories, label_names)
    fields = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in categories for f in ("label", "truth", "activation", "intersect", "iou")]
    atomic_write(files["tally"], _csv(fields, rows))
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        iou=iou.astype(np.float32),
        intersection=arrays["intersection"],
        activation=arrays["activation"],
        truth=arrays["truth"],
        activation_category=arrays["activation_category"],
        label_names=np.array(label_names, dtype=str),
        categories=np.array(categories, dtype=str),
        primary=primary,
    )
    atomic_write(files["matrices"], buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, np.asarray(thresholds, np.float32))
    atomic_write(files["thresholds"], buf.getvalue())
    values, index = topk
    top_rows = [
        {"unit": u + 1, "rank": r + 1, "image_index": int(index[r, u]), "image": images[int(index[r, u])], "max_activation": float(values[r, u])}
        for u in range(values.shape[1])
        for r in range(values.shape[0])
        if index[r, u] >= 0
    ]
    atomic_write(files["topk"], _csv(["unit", "rank", "image_index", "image", "max_activation"], top_rows))
    detector = unit_score > iou_threshold
    summary: dict[str, Any] = {"units": int(len(unit_score)), "detectors": int(detector.sum()), "unique_concepts": int(len(set(unit_label[detector].tolist()))), "categories": {}}
    for c, cat in enumerate(categories):
        sel = detector & (best == c)
        summary["categories"][cat] = {"detectors": int(sel.sum()), "unique_concepts": int(len(set(unit_label[sel].tolist())))}
    return summary


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, keys in a stable order."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
