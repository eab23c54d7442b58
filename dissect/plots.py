"""Tables and figures of dissection results, read from run folders only.

Every figure has a table function that returns exactly the numbers it draws, so notebooks and
tests can use either:

- :func:`detectors_per_category` -> :func:`plot_unique_layers` (unique concepts per category
  across layers, stacked bars, one panel per run: the figure of the paper and the book) and
  :func:`plot_categories` (unique concepts and detectors per category; series told apart by hatch);
- :func:`interpretable_per_layer` -> :func:`plot_interpretable` (detectors as a % of units per
  layer, with the random-weights baseline when ``summary.json`` has one);
- :func:`detectors_per_layer` -> :func:`plot_layers` (each category's detectors as a % of units);
- :func:`detectors_per_concept` -> :func:`plot_concepts` (units per concept, coloured by category);
- ``Run.sweep`` -> :func:`plot_sweep` (detectors against the IoU threshold, one line per quantile).

Every category keeps one colour in every figure (:func:`category_colors`); several runs get one
panel each (so layers of different architectures never share an axis) or, in
:func:`plot_categories`, hatches. A run with random weights is named so in every title.
:func:`save_figure` writes PNG, SVG (text kept as text) and the figure's numbers as CSV.

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
import zipfile
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
from concepts.dissect.results import atomic_write, layer_files, safe_name

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
    _summary: dict[str, Any] | None = field(default=None, repr=False)

    def params(self, layer: str) -> dict[str, Any]:
        """The arguments that produced a layer's results (``run.json`` ``layers.<layer>.params``)."""
        self._check_layer(layer)
        return self.record["layers"][layer].get("params", {})

    def file(self, layer: str, kind: str) -> Path:
        """Path of one of a layer's result files (``tally``, ``matrices``, ``thresholds``, ``topk``, ``topmaps``), inside the run folder."""
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

    @property
    def random_weights(self) -> bool:
        """Whether the run dissected a network with random weights (its ``model`` entry says so, or no weights were given)."""
        model = self.record.get("model")
        if isinstance(model, dict):
            if model.get("random") is True:
                return True
            tags = [model.get(k) for k in ("weights", "weights_hash")]
            if any(isinstance(t, str) and t.split(":")[0] == "random" for t in tags):
                return True
            if any(isinstance(t, str) and t for t in tags):
                return False
        args = self.record.get("args", {})
        name = str(args.get("model") or "")
        # A factory builds its own weights; only a named architecture without weights is surely random.
        return args.get("pretrained") is False and not args.get("weights") and ":" not in name

    @property
    def title(self) -> str:
        """The run's name as figures and pages show it, marked when its weights are random."""
        return f"{self.name} (random weights)" if self.random_weights else self.name

    def layer_summary(self, layer: str) -> dict[str, Any]:
        """The layer's entry of ``summary.json`` (or of ``run.json``'s summary), ``{}`` when neither has one."""
        self._check_layer(layer)
        if self._summary is None:
            found: Any = None
            path = self.path / "summary.json"
            if path.is_file():
                _inside(self.path, "summary.json", self.path / "run.json", "summary.json")
                try:
                    found = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
                    raise UsageError(f"cannot read summary: {(str(e).splitlines() or [type(e).__name__])[0]}", path=path) from None
            if not isinstance(found, dict):
                found = self.record.get("summary") if isinstance(self.record.get("summary"), dict) else {}
            self._summary = found
        entry = self._summary.get(layer)
        return entry if isinstance(entry, dict) else {}

    def topmaps(self, layer: str) -> Any:
        """The layer's stored top-k activation maps (:class:`dissect.topmaps.TopMaps`), or None for a run made before they were kept."""
        from concepts.dissect.topmaps import load_topmaps

        path = self.file(layer, "topmaps")
        return load_topmaps(path) if path.is_file() else None

    def matrices(self, layer: str) -> dict[str, np.ndarray]:
        """The layer's ``iou`` (units x labels), ``label_names`` and ``categories`` from its matrices file."""
        path = self.file(layer, "matrices")
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in ("iou", "label_names", "categories", "primary") if k in z.files}
        except FileNotFoundError:
            raise UsageError("matrices file is missing", path=path) from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UsageError(f"cannot read matrices: {(str(e).splitlines() or [type(e).__name__])[0]}", path=path) from None
        if "iou" not in out or "label_names" not in out or out["iou"].ndim != 2 or out["iou"].shape[1] != len(out["label_names"]):
            raise UsageError("matrices file has no units x labels 'iou' array matching its 'label_names'", path=path)
        return out

    def sweep(self, layer: str) -> pd.DataFrame | None:
        """The layer's ``sweep_{layer}.csv`` (detectors against the IoU threshold), or None when the run has none."""
        self._check_layer(layer)
        name = f"sweep_{safe_name(layer)}.csv"
        if not os.path.lexists(self.path / name):
            return None
        path = _inside(self.path, name, self.path / "run.json", name)
        columns = ["quantile", "iou_threshold", "category", "detectors", "unique_concepts"]
        try:
            df = pd.read_csv(path, dtype={"category": str}, keep_default_na=False)
            missing = [c for c in columns if c not in df.columns]
            if missing:
                raise ValueError(f"no column(s) {', '.join(missing)}")
            for c in ("quantile", "iou_threshold"):
                df[c] = df[c].astype(float)
            for c in ("detectors", "unique_concepts"):
                df[c] = df[c].astype(np.int64)
        except (ValueError, TypeError, OverflowError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
            raise UsageError(f"cannot read the threshold sweep: {(str(e).splitlines() or [type(e).__name__])[0]}", path=path) from None
        return df[columns]

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


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)) else None


def _level(block: Any, category: str | None) -> dict[str, Any]:
    """A summary block itself (category None) or its entry for one category, ``{}`` when absent."""
    if not isinstance(block, dict):
        return {}
    if category is None:
        return block
    cats = block.get("categories")
    entry = cats.get(category) if isinstance(cats, dict) else None
    return entry if isinstance(entry, dict) else {}


def _trust(r: Run, layer: str, category: str | None) -> dict[str, float]:
    """The significance and random-baseline counts ``summary.json`` holds for a layer (or one category), when present.

    ``significant_detectors`` and ``significant_unique_concepts`` sit beside ``detectors`` and
    ``unique_concepts`` (per layer and under ``categories``); ``baseline`` has the shape of the
    layer entry itself.
    """
    entry = r.layer_summary(layer)
    here, base = _level(entry, category), _level(entry.get("baseline"), category)
    out: dict[str, float] = {}
    for key in ("detectors", "unique_concepts"):
        for name, value in ((f"significant_{key}", here.get(f"significant_{key}")), (f"baseline_{key}", base.get(key))):
            v = _number(value)
            if v is not None:
                out[name] = v
    return out


def interpretable_per_layer(runs: Run | str | Path | Sequence[Run | str | Path], layers: Sequence[str] | str | None = None) -> pd.DataFrame:
    """Per run and layer: units, detectors, their % of units and unique concepts (with significance and baseline when present)."""
    rows = []
    for r in _runs(runs):
        mine = _layers(r, layers)
        for i, layer in enumerate(mine):
            units = unit_table(r, layer)
            det = units[units["detector"]]
            n = int(len(units))
            row: dict[str, Any] = {"run": r.name, "layer": layer, "depth": i / (len(mine) - 1) if len(mine) > 1 else 1.0, "units": n,
                                   "detectors": int(len(det)), "detectors_pct": 100.0 * len(det) / n if n else 0.0, "unique_concepts": int(det["label"].nunique())}
            trust = _trust(r, layer, None)
            row.update(trust)
            if "baseline_detectors" in trust:
                row["baseline_pct"] = 100.0 * trust["baseline_detectors"] / n if n else 0.0
            rows.append(row)
    return pd.DataFrame(rows)


def with_trust(table: pd.DataFrame, runs: Run | str | Path | Sequence[Run | str | Path]) -> pd.DataFrame:
    """``detectors_per_category`` with the significant and baseline counts per category as extra columns, where the runs have them."""
    by_name = {r.name: r for r in _runs(runs)}
    extra = [_trust(by_name[row.run], row.layer, row.category) if row.run in by_name else {} for row in table.itertuples(index=False)]
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(extra, index=range(len(table)))], axis=1)


# -- figures ---------------------------------------------------------------------------------

_PALETTE = matplotlib.colormaps["tab10"].colors
#: Broden's categories keep one colour in every figure; other categories take the next free ones.
_KNOWN = ["object", "part", "scene", "material", "texture", "color"]
#: Runs told apart by hatch where colour means category.
HATCHES = ["", "///", "...", "xxx", "\\\\\\", "---", "ooo", "+++"]


def category_colors(categories: Iterable[str]) -> dict[str, Any]:
    """One colour per category, the same in every figure (Broden's six fixed, others in order of appearance)."""
    out: dict[str, Any] = {}
    free = [i for i in range(len(_PALETTE)) if i >= len(_KNOWN)]
    for c in dict.fromkeys(categories):
        if c in _KNOWN:
            out[c] = _PALETTE[_KNOWN.index(c)]
        else:
            out[c] = _PALETTE[free.pop(0)] if free else matplotlib.colormaps["tab20"].colors[len(out) % 20]
    return out


def _series_names(table: pd.DataFrame, titles: dict[str, str]) -> list[tuple[str, str, str]]:
    """(run, layer, legend text) of each bar series, naming only what varies."""
    pairs = list(dict.fromkeys(zip(table["run"], table["layer"])))
    one_run = len({p[0] for p in pairs}) == 1
    one_layer_each = all(sum(1 for q in pairs if q[0] == p[0]) == 1 for p in pairs)
    out = []
    for run, layer in pairs:
        name = titles.get(run, run)
        text = layer if one_run else name if one_layer_each else f"{name} {layer}"
        out.append((run, layer, text))
    return out


def _finish(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)


def _wrap(title: str, width: int = 28) -> str:
    """A panel title broken into lines that fit a narrow panel."""
    import textwrap

    return "\n".join(textwrap.wrap(title, width)) or title


def plot_categories(runs: Run | str | Path | Sequence[Run | str | Path], layers: Sequence[str] | str | None = None) -> Figure:
    """Bar charts of unique concepts and of detectors (% of units) per category; several series told apart by hatch.

    Each category keeps its colour (:func:`category_colors`); the series (runs, or layers of one
    run) are hatched bars side by side in each category's group, in legend order.
    """
    rs = _runs(runs)
    table = detectors_per_category(rs, layers)
    titles = {r.name: r.title for r in rs}
    cats = list(dict.fromkeys(table["category"]))
    colors = category_colors(cats)
    series = _series_names(table, titles)
    many = len(series) > 2
    panel = min(12.0, max(4.0, len(cats) * (0.2 * len(series) + 0.35) + 1.2))
    fig = Figure(figsize=(panel, 6.4) if many else (2 * panel, 3.6), layout="constrained")
    axes = fig.subplots(2, 1) if many else fig.subplots(1, 2)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(cats))
    for ax, column, title in ((axes[0], "unique_concepts", "unique concepts detected"), (axes[1], "detectors_pct", "detectors (% of units)")):
        for i, (run, layer, text) in enumerate(series):
            sel = table[(table["run"] == run) & (table["layer"] == layer)].set_index("category").reindex(cats)
            values = sel[column].fillna(0).to_numpy(float)
            hatch = HATCHES[i % len(HATCHES)] if len(series) > 1 else None
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=text, color=[colors[c] for c in cats], hatch=hatch, edgecolor="white" if hatch else None, linewidth=0.5)
            if len(series) <= 3:
                ax.bar_label(bars, labels=[f"{v:.0f}" if column == "unique_concepts" else f"{v:.1f}" for v in values], fontsize=7, padding=1)
        tilt = len(cats) * max(1, len(series)) > 12
        ax.set_xticks(x, cats, rotation=30 if tilt else 0, ha="right" if tilt else "center")
        ax.set_title(title, fontsize=10)
        if column == "unique_concepts":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax)
        ax.margins(y=0.15)
    if len(series) > 1:
        from matplotlib.patches import Patch

        handles = [Patch(facecolor="#bbbbbb", edgecolor="#333333", hatch=HATCHES[i % len(HATCHES)], label=text) for i, (_, _, text) in enumerate(series)]
        axes[1].legend(handles=handles, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    elif series:
        fig.suptitle(f"{titles.get(series[0][0], series[0][0])} {series[0][1]}", fontsize=10)
    return fig


def _panels(n: int, width: float, height: float, sharey: bool = True) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(max(4.0, width * n), height), layout="constrained")
    axes = fig.subplots(1, n, sharey=sharey, squeeze=False)[0]
    return fig, list(axes)


def plot_unique_layers(runs: Run | str | Path | Sequence[Run | str | Path], layers: Sequence[str] | str | None = None, value: str = "unique_concepts") -> Figure:
    """Unique detectors per category across layers: stacked bars, one bar per layer, one panel per run.

    The figure of the paper and the book (``value="detectors"`` stacks detector units instead).
    Each run has its own panel and layer axis, so architectures of different depth never share
    x positions; categories keep one colour across panels.
    """
    rs = _runs(runs)
    table = detectors_per_category(rs, layers)
    cats = list(dict.fromkeys(table["category"]))
    colors = category_colors(cats)
    fig, axes = _panels(len(rs), max(2.6, 0.8 + 0.55 * max(len(_layers(r, layers)) for r in rs)), 3.6)
    for ax, r in zip(axes, rs):
        mine = table[table["run"] == r.name]
        order = list(dict.fromkeys(mine["layer"]))
        x = np.arange(len(order))
        bottom = np.zeros(len(order))
        for cat in cats:
            v = mine[mine["category"] == cat].set_index("layer").reindex(order)[value].fillna(0).to_numpy(float)
            ax.bar(x, v, 0.7, bottom=bottom, color=colors[cat], label=cat)
            bottom += v
        for xi, total in zip(x, bottom):
            ax.annotate(f"{total:.0f}", (xi, total), ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
        ax.set_xticks(x, order, rotation=30 if len(order) > 4 else 0, ha="right" if len(order) > 4 else "center")
        ax.set_title(_wrap(r.title), fontsize=10)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(y=0.12)
        _finish(ax)
    axes[0].set_ylabel("unique concepts detected" if value == "unique_concepts" else "detector units")
    from matplotlib.patches import Patch

    axes[-1].legend(handles=[Patch(color=colors[c], label=c) for c in reversed(cats)], fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_interpretable(runs: Run | str | Path | Sequence[Run | str | Path], layers: Sequence[str] | str | None = None) -> Figure:
    """The share of interpretable units (detectors, % of units) per layer, one panel per run; the random baseline as a marker when present."""
    rs = _runs(runs)
    table = interpretable_per_layer(rs, layers)
    fig, axes = _panels(len(rs), max(2.6, 0.8 + 0.55 * max(len(_layers(r, layers)) for r in rs)), 3.4)
    for ax, r in zip(axes, rs):
        mine = table[table["run"] == r.name]
        x = np.arange(len(mine))
        bars = ax.bar(x, mine["detectors_pct"].to_numpy(float), 0.7, color="#4c72b0", label="trained" if "baseline_pct" in mine else "detectors")
        ax.bar_label(bars, labels=[f"{v:.0f}%" for v in mine["detectors_pct"]], fontsize=7, padding=1)
        if "baseline_pct" in mine and mine["baseline_pct"].notna().any():
            ax.scatter(x, mine["baseline_pct"].to_numpy(float), marker="_", s=300, color="#c44e52", zorder=3, label="random baseline")
            ax.legend(fontsize=7, frameon=False)
        order = mine["layer"].tolist()
        ax.set_xticks(x, order, rotation=30 if len(order) > 4 else 0, ha="right" if len(order) > 4 else "center")
        ax.set_title(_wrap(r.title), fontsize=10)
        ax.margins(y=0.12)
        _finish(ax)
    axes[0].set_ylabel("interpretable units (% of units)")
    return fig


def plot_layers(runs: Run | str | Path | Sequence[Run | str | Path], layers: Sequence[str] | str | None = None) -> Figure:
    """Detectors per category as a % of units across layers; one line per category, one panel per run."""
    rs = _runs(runs)
    fig, axes = _panels(len(rs), 1.5 + 0.6 * max(2, max(len(_layers(r, layers)) for r in rs)), 3.6)
    colors: dict[str, Any] = {}
    for ax, r in zip(axes, rs):
        wide = detectors_per_layer(r, layers)
        colors.update({c: v for c, v in category_colors(list(colors) + list(wide.columns)).items() if c not in colors})
        x = np.arange(len(wide.index))
        for cat in wide.columns:
            ax.plot(x, wide[cat].to_numpy(float), "-", marker="o", color=colors[cat], label=cat if len(rs) == 1 else f"{r.name} {cat}")
        ax.set_xticks(x, list(wide.index))
        ax.set_xlabel("layer")
        ax.set_title(r.title, fontsize=10)
        _finish(ax)
    axes[0].set_ylabel("detectors (% of units)")
    from matplotlib.lines import Line2D

    axes[-1].legend(handles=[Line2D([], [], color=v, marker="o", label=c) for c, v in colors.items()], fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_concepts(runs: Run | str | Path | Sequence[Run | str | Path], layer: str | Sequence[str], category: str | None = None, top: int = 20) -> Figure:
    """Detectors per concept, bars coloured by category (NetDissect-Lite's chart), one panel per run.

    ``layer`` is one layer name, or one per run when several runs are compared.
    """
    rs = _runs(runs)
    names = [layer] * len(rs) if isinstance(layer, str) else list(layer)
    tables = [detectors_per_concept(r, lay, category, top) for r, lay in zip(rs, names)]
    colors = category_colors([c for r, lay in zip(rs, names) for c in r.categories(lay)])
    rows = max([1] + [len(t) for t in tables])
    fig, axes = _panels(len(rs), 5.0, 0.9 + 0.22 * rows, sharey=False)
    for ax, r, lay, table in zip(axes, rs, names, tables):
        y = np.arange(len(table))
        bars = ax.barh(y, table["detectors"].to_numpy(int), color=[colors[c] for c in table["category"]])
        ax.bar_label(bars, fontsize=7, padding=1)
        ax.set_yticks(y, list(table["concept"]), fontsize=8)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.set_xlabel("detectors (units)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax)
        ax.set_title(f"{r.title} {lay}" + (f": {category}" if category else ""), fontsize=10)
        if table.empty:
            ax.text(0.5, 0.5, "no detectors", ha="center", va="center", transform=ax.transAxes)
    shown = [c for c in colors if any(c in set(t["category"]) for t in tables)]
    if shown and category is None:
        from matplotlib.patches import Patch

        axes[-1].legend(handles=[Patch(color=colors[c], label=c) for c in shown], fontsize=8, frameon=False, loc="lower right")
    return fig


def plot_sweep(run: Run | str | Path, layer: str, category: str = "all") -> Figure:
    """Detectors against the IoU threshold (``sweep_{layer}.csv``), one line per activation quantile."""
    (r,) = _runs(run)
    table = r.sweep(layer)
    if table is None:
        raise UsageError(f"the run has no threshold sweep for layer {layer} (sweep_{safe_name(layer)}.csv)", path=r.path)
    sel = table[table["category"] == category]
    fig = Figure(figsize=(5.2, 3.4), layout="constrained")
    ax = fig.subplots()
    for i, (q, g) in enumerate(sel.groupby("quantile", sort=True)):
        g = g.sort_values("iou_threshold")
        ax.plot(g["iou_threshold"].to_numpy(float), g["detectors"].to_numpy(int), marker="o", ms=3, color=_PALETTE[i % len(_PALETTE)], label=f"quantile {q:g}")
    ax.axvline(r.iou_threshold(layer), color="#888888", lw=0.8, ls="--")
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("detectors (units)" + ("" if category == "all" else f", {category}"))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{r.title} {layer}", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    _finish(ax)
    return fig


def save_figure(fig: Figure, stem: Path, dpi: int = 100, table: pd.DataFrame | None = None) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` atomically, no date or random ids (deterministic), and ``stem.csv`` of ``table`` when given."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    engine = fig.get_layout_engine()
    # SVG text stays text (editable in a paper's figure); the layout is computed once, for the PNG.
    with matplotlib.rc_context({"svg.hashsalt": "concepts", "svg.fonttype": "none"}):
        for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=dpi, metadata=meta)
            path = stem.with_name(f"{stem.name}.{ext}")
            atomic_write(path, buf.getvalue())
            out.append(path)
            fig.set_layout_engine("none")
    fig.set_layout_engine(engine)
    if table is not None:
        path = stem.with_name(f"{stem.name}.csv")
        atomic_write(path, table.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
        out.append(path)
    return out


__all__ = [
    "HATCHES",
    "Run",
    "category_colors",
    "detectors_per_category",
    "detectors_per_concept",
    "detectors_per_layer",
    "interpretable_per_layer",
    "load_run",
    "load_runs",
    "plot_categories",
    "plot_concepts",
    "plot_interpretable",
    "plot_layers",
    "plot_sweep",
    "plot_unique_layers",
    "save_figure",
    "unit_table",
    "with_trust",
]
