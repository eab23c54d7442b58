"""Turn one layer's counts into labels and write its result files (each atomically)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np



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
        "topmaps": f"topmaps_{s}.npz",
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
    *,
    significance: tuple[Any, Any] | None = None,
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write a layer's tally CSV, matrices, thresholds and top-k images; return its summary.

    ``significance``: the layer's ``(Counts, Result)`` from :mod:`concepts.dissect.significance`,
    whose columns are appended to the tally and whose arrays join the matrices. ``names``: other
    file names for ``tally``, ``matrices``, ``thresholds`` (and ``topk``, written only when named),
    for a random baseline or another quantile.
    """
    from concepts.dissect.tally import iou as compute_iou  # torch only when results are written

    files = {k: out / v for k, v in (names or layer_files(layer)).items()}
    iou = compute_iou(arrays)
    rows, unit_label, unit_score, best = tally_rows(arrays, iou, primary, categories, label_names)
    fields = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in categories for f in ("label", "truth", "activation", "intersect", "iou")]
    extra: dict[str, np.ndarray] = {}
    if significance is not None:
        from concepts.dissect.significance import COLUMNS

        counts, result = significance
        per_unit = result.columns()
        for row in rows:
            row.update(per_unit[row["unit"]])
        fields += list(COLUMNS)
        extra = {**counts.matrices(), **result.matrices()}
    atomic_write(files["tally"], _csv(fields, rows))
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        **extra,
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
    np.save(buf, np.asarray(thresholds, np.float64))
    atomic_write(files["thresholds"], buf.getvalue())
    values, index = topk
    if "topk" not in files:
        return layer_summary(unit_score, unit_label, best, categories, iou_threshold)
    top_rows = [
        {"unit": u + 1, "rank": r + 1, "image_index": int(index[r, u]), "image": images[int(index[r, u])], "max_activation": float(values[r, u])}
        for u in range(values.shape[1])
        for r in range(values.shape[0])
        if index[r, u] >= 0
    ]
    atomic_write(files["topk"], _csv(["unit", "rank", "image_index", "image", "max_activation"], top_rows))
    summary = layer_summary(unit_score, unit_label, best, categories, iou_threshold)
    if significance is not None:
        from concepts.dissect.significance import add_to_summary

        add_to_summary(summary, significance[1].significant, unit_label, best, categories)
    return summary


def layer_summary(unit_score: np.ndarray, unit_label: np.ndarray, best: np.ndarray, categories: Sequence[str], iou_threshold: float) -> dict[str, Any]:
    """Units, detectors (score above ``iou_threshold``) and unique concepts, overall and per category."""
    detector = unit_score > iou_threshold
    summary: dict[str, Any] = {"units": int(len(unit_score)), "detectors": int(detector.sum()), "unique_concepts": int(len(set(unit_label[detector].tolist()))), "categories": {}}
    for c, cat in enumerate(categories):
        sel = detector & (best == c)
        summary["categories"][cat] = {"detectors": int(sel.sum()), "unique_concepts": int(len(set(unit_label[sel].tolist())))}
    return summary


#: The IoU thresholds of ``sweep_{layer}.csv``: 0.01 to 0.20 in steps of 0.01.
SWEEP_IOU = tuple(round(0.01 * i, 2) for i in range(1, 21))


def sweep_rows(iou: np.ndarray, primary: np.ndarray, categories: Sequence[str], quantile: float, grid: Sequence[float] = SWEEP_IOU) -> list[dict[str, Any]]:
    """Detectors and unique concepts at each IoU threshold of ``grid`` (category ``all`` first, then each category)."""
    label, score, best = best_labels(iou, primary, len(categories))
    u = np.arange(iou.shape[0])
    unit_score, unit_label = score[best, u], label[best, u]
    rows = []
    for t in grid:
        s = layer_summary(unit_score, unit_label, best, categories, t)
        rows.append({"quantile": quantile, "iou_threshold": t, "category": "all", "detectors": s["detectors"], "unique_concepts": s["unique_concepts"]})
        rows += [{"quantile": quantile, "iou_threshold": t, "category": c, **v} for c, v in s["categories"].items()]
    return rows


def write_sweep(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``sweep_{layer}.csv``."""
    atomic_write(path, _csv(["quantile", "iou_threshold", "category", "detectors", "unique_concepts"], rows))


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, keys in a stable order."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class DissectResult(Mapping):
    """A finished dissection: its run folder read as tables and arrays.

    Units are numbered from 1 everywhere, as in ``tally_{layer}.csv`` and the reference: the
    ``unit`` column of :meth:`tally` and the index of :meth:`iou` are the same numbers. As a
    mapping it is the run's ``run.json`` record (``result["summary"]``, ``result["timings"]``).
    """

    def __init__(self, path: str | Path, record: dict[str, Any], model: Any = None) -> None:
        self.path = Path(path)
        self.record = record
        self._run: Any = None
        # A model object dissected from Python stays alive with its result, so report() can redraw its masks.
        self._model = model

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)

    @property
    def layers(self) -> list[str]:
        """The layers of this run, in the order they were asked for."""
        return [k for k, v in self.record.get("summary", {}).items() if v is not None]

    def run(self) -> Any:
        """The run folder as :class:`concepts.dissect.plots.Run` (for the plots module's tables and figures)."""
        if self._run is None:
            from concepts.dissect.plots import load_run

            self._run = load_run(self.path)
        return self._run

    def tally(self, layer: str) -> Any:
        """The rows of ``tally_{layer}.csv`` as a DataFrame (best score first; ``unit`` 1-based)."""
        return self.run().tally(layer)

    def summary(self) -> Any:
        """One row per layer and category: ``layer, category, units, detectors, unique_concepts``."""
        import pandas as pd

        rows = []
        for layer in self.layers:
            s = self.record["summary"][layer]
            for cat, v in s["categories"].items():
                rows.append({"layer": layer, "category": cat, "units": s["units"], "detectors": v["detectors"], "unique_concepts": v["unique_concepts"]})
        return pd.DataFrame(rows, columns=["layer", "category", "units", "detectors", "unique_concepts"])

    def iou(self, layer: str) -> Any:
        """The ``units x labels`` IoU matrix as a DataFrame: index ``unit`` 1-based (as the CSV), one column per label.

        Column ``j`` is label number ``j`` of ``label.csv`` (column 0, no label, is always 0), so
        ``result.iou(layer).to_numpy()[u - 1, j]`` is unit ``u``'s IoU with label ``j``.
        """
        import pandas as pd

        with np.load(self.run().file(layer, "matrices"), allow_pickle=False) as m:
            iou, names = m["iou"], [str(n) for n in m["label_names"]]
        frame = pd.DataFrame(iou, index=pd.RangeIndex(1, iou.shape[0] + 1, name="unit"), columns=names)
        frame.columns.name = "label"
        return frame

    def report(self, path: str | Path, *, layers: Sequence[str] | None = None, images: bool = True, device: str | None = None) -> Path:
        """Write the HTML report of this run into ``path`` (an earlier report there is replaced); return its index page."""
        from concepts.dissect.report import render_reports

        args = self.record.get("args", {})
        dataset = str(args.get("dataset", ""))
        inputs = [Path(p) for p in (dataset, args.get("weights")) if p and not str(p).startswith("hf://")]
        # The model is the one this very process just dissected (the caller's own code or object).
        render_reports([self.run()], Path(path), overwrite=True, inputs=inputs, layers=layers, images=images,
                       device=device or args.get("device") or "cpu", trust_model_code=True, trust_pickle=bool(args.get("trust_pickle")))
        return Path(os.path.abspath(path)) / "index.html"

    def __repr__(self) -> str:
        parts = []
        for layer in self.layers:
            s = self.record["summary"][layer]
            parts.append(f"{layer}: {s['units']} units, {s['detectors']} detectors, {s['unique_concepts']} concepts")
        model = self.record.get("model", {}).get("name") or self.record.get("args", {}).get("model")
        return f"DissectResult({str(self.path)!r}, model={model!r}, images={self.record.get('images')}; " + "; ".join(parts) + ")"

    __str__ = __repr__
