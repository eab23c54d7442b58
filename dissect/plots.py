"""Tables and figures of dissection results, read from run folders only.

Every figure has a table function that returns exactly the numbers it draws, so notebooks and
tests can use either:

- :func:`detectors_per_category` -> :func:`plot_categories` (unique concepts and detectors per
  category, one bar group per category and one bar per run and layer);
- :func:`detectors_per_layer` -> :func:`plot_layers` (detectors of each category as a % of the
  layer's units, across layers);
- :func:`detectors_per_concept` -> :func:`plot_concepts` (units detecting each concept).

A unit is a detector when its IoU (the tally's ``score``) exceeds the run's ``--iou-threshold``,
and its category and concept are the tally's ``category`` and ``label``, as in ``summary.json``.
Figures are :class:`matplotlib.figure.Figure` objects made without pyplot, so no global state
or display backend is involved.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from concepts.errors import UnsafeInputError, UsageError
from concepts.dissect.results import atomic_write, layer_files

#: Column names of the per-category table, in order.
CATEGORY_COLUMNS = ["run", "layer", "category", "units", "detectors", "unique_concepts", "detectors_pct"]


@dataclass
class Run:
    """One dissection run folder: its record and lazily read per-layer results."""

    path: Path
    name: str
    record: dict[str, Any]
    layers: list[str]
    _tallies: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def params(self, layer: str) -> dict[str, Any]:
        """The arguments that produced a layer's results (``run.json`` ``layers.<layer>.params``)."""
        self._check_layer(layer)
        return self.record["layers"][layer].get("params", {})

    def file(self, layer: str, kind: str) -> Path:
        """Path of one of a layer's result files (``tally``, ``matrices``, ``thresholds``, ``topk``), inside the run folder."""
        self._check_layer(layer)
        name = self.record["layers"][layer].get("files", {}).get(kind) or layer_files(layer)[kind]
        return _inside(self.path, name, self.path / "run.json", f"layers.{layer}.files.{kind}")

    def iou_threshold(self, layer: str) -> float:
        """The IoU above which a unit of ``layer`` is a detector."""
        p = self.params(layer)
        value = p.get("iou_threshold")
        if value is None:
            value = self.record.get("args", {}).get("iou_threshold")
        return float(0.04 if value is None else value)

    def categories(self, layer: str) -> list[str]:
        """The categories the layer was dissected against, in dataset order."""
        cats = self.params(layer).get("categories")
        if cats:
            return list(cats)
        tally = self.tally(layer)
        return [c[: -len("-label")] for c in tally.columns if c.endswith("-label")]

    def tally(self, layer: str) -> pd.DataFrame:
        """The layer's ``tally_*.csv`` (label columns kept as strings, empty labels as ``''``)."""
        if layer not in self._tallies:
            path = self.file(layer, "tally")
            try:
                df = pd.read_csv(path, dtype=str, keep_default_na=False)
            except FileNotFoundError:
                raise UsageError("tally file is missing", path=path) from None
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
                raise UsageError(f"cannot read tally: {(str(e).splitlines() or [type(e).__name__])[0]}", path=path) from None
            missing = [c for c in ("unit", "category", "label", "score") if c not in df.columns]
            if missing:
                raise UsageError(f"tally has no column(s) {', '.join(missing)}", path=path)
            try:
                df["unit"] = df["unit"].astype(int)
                df["score"] = df["score"].astype(float)
            except (ValueError, OverflowError, TypeError) as e:
                raise UsageError(f"tally has a non-numeric unit or score ({e})", path=path) from None
            self._tallies[layer] = df
        return self._tallies[layer]

    def topk(self, layer: str) -> pd.DataFrame:
        """The layer's top activating images per unit (``unit, rank, image_index, image, max_activation``)."""
        path = self.file(layer, "topk")
        columns = ["unit", "rank", "image_index", "image", "max_activation"]
        try:
            df = pd.read_csv(path, dtype={"image": str}, keep_default_na=False)
        except FileNotFoundError:
            raise UsageError("top-k file is missing", path=path) from None
        except pd.errors.EmptyDataError:
            return pd.DataFrame(columns=columns)
        except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
            raise UsageError(f"cannot read top-k images: {(str(e).splitlines() or [type(e).__name__])[0]}", path=path) from None
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise UsageError(f"top-k file has no column(s) {', '.join(missing)}", path=path)
        try:
            for c in ("unit", "rank", "image_index"):
                df[c] = df[c].astype(np.int64)
            df["max_activation"] = df["max_activation"].astype(float)
        except (ValueError, OverflowError, TypeError) as e:
            raise UsageError(f"top-k file has a non-numeric unit, rank, index or activation ({e})", path=path) from None
        if len(df) and (df[["unit", "rank"]].to_numpy().min() < 1 or df["image_index"].min() < 0):
            raise UsageError("top-k file has a unit or rank below 1 or a negative image index", path=path)
        return df

    def thresholds(self, layer: str) -> np.ndarray:
        """The per-unit activation thresholds of ``layer`` (unit ``u`` at index ``u - 1``)."""
        path = self.file(layer, "thresholds")
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")  # a header's size is not allocated before it is checked
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
                raise ValueError("not an array of numbers")
            if arr.size > len(self.tally(layer)):
                raise ValueError(f"holds {arr.size} values for {len(self.tally(layer))} units")
            return np.array(arr, np.float32).reshape(-1)
        except (OSError, ValueError, EOFError) as e:
            raise UsageError(f"cannot read thresholds: {e}", path=path) from None

    def _check_layer(self, layer: str) -> None:
        if layer not in self.record.get("layers", {}):
            from concepts.listing import shorten

            raise UsageError(f"no results for layer {layer!r}; the run has {shorten(self.layers) or 'none'}", path=self.path)


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Open a run folder written by ``concepts dissect`` (its ``run.json`` checked before anything is read)."""
    path = Path(path)
    record_path = path / "run.json"
    if not record_path.is_file():
        raise UsageError("not a dissection run folder (no run.json)", path=path)
    _inside(path, "run.json", record_path, "run.json")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read run record: {e}", path=record_path) from None
    except RecursionError:
        raise UsageError("cannot read run record: nested too deeply", path=record_path) from None
    except OSError as e:
        raise UsageError(f"cannot read run record: {e.strerror or e}", path=record_path) from None
    check_record(record, path)
    done = list(record["layers"])
    # The last invocation's --layer order first (run.json sorts its keys), then older layers.
    asked = [lay for lay in record.get("args", {}).get("layers") or [] if lay in done]
    layers = list(dict.fromkeys(asked + sorted(done)))
    return Run(path=path, name=name or path.resolve().name, record=record, layers=layers)


#: The fields of ``run.json`` the report reads, with the JSON types each may have (None always allowed).
_STR, _NUM, _INT, _BOOL = (str,), (int, float), (int,), (bool,)
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "model": _STR, "weights": _STR, "layer": _STR, "dataset": _STR, "quantile": _NUM, "iou_threshold": _NUM,
    "union": _STR, "normalize": _STR, "split": _STR, "limit": _INT, "top_k": _INT, "thresholds": _STR,
}
_ARG_TYPES: dict[str, tuple[type, ...]] = {
    "model": _STR, "weights": _STR, "dataset": _STR, "pretrained": _BOOL, "normalize": _STR, "quantile": _NUM,
    "iou_threshold": _NUM, "union": _STR, "split": _STR, "limit": _INT,
}


def _typed(value: Any, types: tuple[type, ...], where: str, record_path: Path) -> None:
    if value is None:
        return
    # bool is an int to Python, never to run.json; NaN and infinities are not numbers a run writes.
    ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
    if ok and float in types and not isinstance(value, bool):
        try:
            ok = math.isfinite(float(value))
        except OverflowError:  # an integer of 400 digits is valid JSON
            ok = False
    if not ok:
        raise UsageError(f"{where} is {_describe(value)}, expected {' or '.join(t.__name__ for t in types)}", path=record_path)


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'JSON object' if isinstance(value, dict) else 'list'}"
    return f"{type(value).__name__} {str(value)[:40]!r}"


def check_record(record: Any, run_path: Path) -> None:
    """Refuse a ``run.json`` whose fields have types the report cannot use, or whose files lie outside the run folder."""
    record_path = Path(run_path) / "run.json"
    if not isinstance(record, dict) or not isinstance(record.get("layers"), dict):
        raise UsageError("run record has no 'layers' table", path=record_path)
    if not record["layers"]:
        raise UsageError("the run has no finished layer yet (was it interrupted? run the same dissect command again)", path=record_path)
    args = record.get("args", {})
    if not isinstance(args, dict):
        raise UsageError(f"args is {_describe(args)}, expected a JSON object", path=record_path)
    for key, types in _ARG_TYPES.items():
        _typed(args.get(key), types, f"args.{key}", record_path)
        if isinstance(args.get(key), str) and "\0" in args[key]:
            raise UsageError(f"args.{key} holds a NUL character", path=record_path)
    asked = args.get("layers")
    if asked is not None and not (isinstance(asked, list) and all(isinstance(v, str) for v in asked)):
        raise UsageError("args.layers is not a list of layer names", path=record_path)
    _typed(record.get("images"), _INT, "images", record_path)
    for layer, entry in record["layers"].items():
        if not layer:
            raise UsageError("layers holds an empty layer name", path=record_path)
        if not isinstance(entry, dict):
            raise UsageError(f"layers.{layer} is {_describe(entry)}, expected a JSON object", path=record_path)
        params, files = entry.get("params", {}), entry.get("files", {})
        if not isinstance(params, dict):
            raise UsageError(f"layers.{layer}.params is {_describe(params)}, expected a JSON object", path=record_path)
        if not isinstance(files, dict):
            raise UsageError(f"layers.{layer}.files is {_describe(files)}, expected a JSON object", path=record_path)
        for key, types in _PARAM_TYPES.items():
            _typed(params.get(key), types, f"layers.{layer}.params.{key}", record_path)
        cats = params.get("categories")
        if cats is not None and not (isinstance(cats, list) and all(isinstance(c, str) and c for c in cats)):
            raise UsageError(f"layers.{layer}.params.categories is not a list of category names", path=record_path)
        for kind in layer_files(layer):
            name = files.get(kind)
            _typed(name, _STR, f"layers.{layer}.files.{kind}", record_path)
            if name:
                _inside(Path(run_path), name, record_path, f"layers.{layer}.files.{kind}")


def _inside(root: Path, name: str, record_path: Path, where: str) -> Path:
    """``root / name`` when it names a file inside ``root`` (symbolic links resolved), else one error line."""
    if "\0" in name or os.path.isabs(name):
        raise UnsafeInputError(f"{where} names {name[:80]!r}, outside the run folder; nothing read", path=record_path)
    target = root / name
    real_root = os.path.realpath(root)
    real = os.path.realpath(target)
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise UnsafeInputError(f"{where} names {name[:80]!r}, which resolves outside the run folder; nothing read", path=record_path)
    return target


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Open several run folders, giving each a distinct display name."""
    paths = [Path(p) for p in paths]
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    seen: dict[str, int] = {}
    out = []
    for p, n in zip(paths, names):
        seen[n] = seen.get(n, 0) + 1
        out.append(load_run(p, n if seen[n] == 1 else f"{n} ({seen[n]})"))
    return out


def _runs(runs: Run | str | Path | Sequence[Run | str | Path]) -> list[Run]:
    if isinstance(runs, (Run, str, Path)):
        runs = [runs]
    return [r if isinstance(r, Run) else load_run(r) for r in runs]


def _layers(run: Run, layers: Sequence[str] | str | None) -> list[str]:
    """The run's layers among ``layers`` (all when None), so one list can name layers of several runs."""
    if layers is None:
        return list(run.layers)
    if isinstance(layers, str):
        layers = [layers]
    present = [layer for layer in layers if layer in run.record.get("layers", {})]
    if not present:
        run._check_layer(layers[0])
    return present


def unit_table(run: Run | str | Path, layer: str) -> pd.DataFrame:
    """One row per unit, by IoU descending: ``unit, label, category, iou, detector``."""
    (r,) = _runs(run)
    t = r.tally(layer)
    df = pd.DataFrame({"unit": t["unit"], "label": t["label"], "category": t["category"], "iou": t["score"]})
    df["detector"] = df["iou"] > r.iou_threshold(layer)
    return df.sort_values(["iou", "unit"], ascending=[False, True], kind="stable").reset_index(drop=True)


def detectors_per_category(runs: Run | str | Path | Sequence[Run | str | Path], layers: Sequence[str] | str | None = None) -> pd.DataFrame:
    """Per run, layer and category: units, detectors, unique concepts, detectors as % of units."""
    rows = []
    for r in _runs(runs):
        for layer in _layers(r, layers):
            units = unit_table(r, layer)
            det = units[units["detector"]]
            for cat in r.categories(layer):
                sel = det[det["category"] == cat]
                n = int(len(sel))
                rows.append([r.name, layer, cat, int(len(units)), n, int(sel["label"].nunique()), 100.0 * n / len(units) if len(units) else 0.0])
    return pd.DataFrame(rows, columns=CATEGORY_COLUMNS)


def detectors_per_layer(run: Run | str | Path, layers: Sequence[str] | str | None = None) -> pd.DataFrame:
    """Detectors of each category as a % of the layer's units: one row per layer, one column per category."""
    (r,) = _runs(run)
    table = detectors_per_category(r, layers)
    cats = list(dict.fromkeys(table["category"]))
    wide = table.pivot(index="layer", columns="category", values="detectors_pct")
    wide = wide.reindex(index=list(dict.fromkeys(table["layer"])), columns=cats).fillna(0.0)
    wide.columns.name = None
    return wide


def detectors_per_concept(run: Run | str | Path, layer: str, category: str | None = None, top: int | None = None) -> pd.DataFrame:
    """Per detected concept: ``concept, category, detectors, best_iou``, most detectors first."""
    (r,) = _runs(run)
    units = unit_table(r, layer)
    det = units[units["detector"]]
    if category is not None:
        if category not in r.categories(layer):
            raise UsageError(f"no category {category!r} in layer {layer}; it has {', '.join(r.categories(layer))}", path=r.path)
        det = det[det["category"] == category]
    grouped = det.groupby(["label", "category"], sort=False).agg(detectors=("unit", "size"), best_iou=("iou", "max")).reset_index()
    grouped = grouped.rename(columns={"label": "concept"})
    grouped = grouped.sort_values(["detectors", "best_iou", "concept"], ascending=[False, False, True], kind="stable").reset_index(drop=True)
    grouped["detectors"] = grouped["detectors"].astype(int)
    return grouped.head(top) if top is not None else grouped


# -- figures ---------------------------------------------------------------------------------

_PALETTE = matplotlib.colormaps["tab10"].colors


def _series_names(table: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(run, layer, legend text) of each bar series, naming only what varies."""
    pairs = list(dict.fromkeys(zip(table["run"], table["layer"])))
    one_run = len({p[0] for p in pairs}) == 1
    one_layer_each = all(sum(1 for q in pairs if q[0] == p[0]) == 1 for p in pairs)
    out = []
    for run, layer in pairs:
        text = layer if one_run else run if one_layer_each else f"{run} {layer}"
        out.append((run, layer, text))
    return out


def plot_categories(runs: Run | str | Path | Sequence[Run | str | Path], layers: Sequence[str] | str | None = None) -> Figure:
    """Bar charts of unique concepts and of detectors (% of units) per category, runs side by side."""
    table = detectors_per_category(runs, layers)
    cats = list(dict.fromkeys(table["category"]))
    series = _series_names(table)
    many = len(series) > 2
    # Many series: panels stacked, so each can be wide enough for its groups of bars.
    panel = min(12.0, max(4.0, len(cats) * (0.2 * len(series) + 0.35) + 1.2))
    fig = Figure(figsize=(panel, 6.4) if many else (2 * panel, 3.6), layout="constrained")
    axes = fig.subplots(2, 1) if many else fig.subplots(1, 2)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(cats))
    for ax, column, title in ((axes[0], "unique_concepts", "unique concepts detected"), (axes[1], "detectors_pct", "detectors (% of units)")):
        for i, (run, layer, text) in enumerate(series):
            sel = table[(table["run"] == run) & (table["layer"] == layer)].set_index("category").reindex(cats)
            values = sel[column].fillna(0).to_numpy(float)
            color = _PALETTE[i % len(_PALETTE)] if len(series) > 1 else [_PALETTE[j % len(_PALETTE)] for j in range(len(cats))]
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=text, color=color)
            if len(series) <= 3:
                ax.bar_label(bars, labels=[f"{v:.0f}" if column == "unique_concepts" else f"{v:.1f}" for v in values], fontsize=7, padding=1)
        tilt = len(cats) * max(1, len(series)) > 12
        ax.set_xticks(x, cats, rotation=30 if tilt else 0, ha="right" if tilt else "center")
        ax.set_title(title, fontsize=10)
        if column == "unique_concepts":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.spines[["top", "right"]].set_visible(False)
        ax.margins(y=0.15)
    if len(series) > 1:
        axes[1].legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    elif series:
        fig.suptitle(f"{series[0][0]} {series[0][1]}", fontsize=10)
    return fig


def plot_layers(runs: Run | str | Path | Sequence[Run | str | Path], layers: Sequence[str] | str | None = None) -> Figure:
    """Detectors per category as a % of units across layers; one line per category (and run)."""
    rs = _runs(runs)
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    colors: dict[str, Any] = {}
    names: list[list[str]] = []
    for i, r in enumerate(rs):
        wide = detectors_per_layer(r, layers)
        x = np.arange(len(wide.index))
        for cat in wide.columns:
            color = colors.setdefault(cat, _PALETTE[len(colors) % len(_PALETTE)])
            label = cat if len(rs) == 1 else f"{r.name} {cat}"
            ax.plot(x, wide[cat].to_numpy(float), styles[i % len(styles)], marker="o", color=color, label=label)
        for j, layer in enumerate(wide.index):
            if j == len(names):
                names.append([])
            if layer not in names[j]:
                names[j].append(layer)
    # Runs of different architectures share the axis by depth: a tick names each run's layer there.
    ax.set_xticks(np.arange(len(names)), [" / ".join(n) for n in names])
    ax.set_ylabel("detectors (% of units)")
    ax.set_xlabel("layer")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if len(rs) == 1:
        ax.set_title(rs[0].name, fontsize=10)
    return fig


def plot_concepts(run: Run | str | Path, layer: str, category: str | None = None, top: int = 20) -> Figure:
    """Horizontal bars of the number of detectors per concept (the ``top`` most detected)."""
    table = detectors_per_concept(run, layer, category, top)
    (r,) = _runs(run)
    fig = Figure(figsize=(5.0, 0.9 + 0.22 * max(1, len(table))), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(table))
    bars = ax.barh(y, table["detectors"].to_numpy(int), color=_PALETTE[0])
    ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_yticks(y, list(table["concept"]), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("detectors (units)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{r.name} {layer}" + (f": {category}" if category else ""), fontsize=10)
    if table.empty:
        ax.text(0.5, 0.5, "no detectors", ha="center", va="center", transform=ax.transAxes)
    return fig


def save_figure(fig: Figure, stem: Path, dpi: int = 100) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` atomically, with no date or random ids (deterministic)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with matplotlib.rc_context({"svg.hashsalt": "concepts", "svg.fonttype": "path"}):
        for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=dpi, metadata=meta)
            path = stem.with_name(f"{stem.name}.{ext}")
            atomic_write(path, buf.getvalue())
            out.append(path)
    return out


__all__ = [
    "Run",
    "detectors_per_category",
    "detectors_per_concept",
    "detectors_per_layer",
    "load_run",
    "load_runs",
    "plot_categories",
    "plot_concepts",
    "plot_layers",
    "save_figure",
    "unit_table",
]
