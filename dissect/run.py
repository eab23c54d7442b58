"""Run a whole dissection: forward pass, thresholds, tallies, results, and what to skip on resume.

:func:`dissect` is the one entry point, for the CLI and for Python alike::

    from concepts.dissect import dissect

    result = dissect(model, "broden1_224", layers=["layer4"], out="runs/r18", preprocess=weights.transforms())
    result.tally("layer4")
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from concepts.hub import HubDataset, open_any
from concepts.errors import ConceptsError, DatasetFormatError, OutputExistsError, UsageError
from concepts.dissect.features import FeatureStore
from concepts.dissect.hooks import check_layers
from concepts.dissect.models import LoadedModel, file_hash, load_model, parse_device, parse_model_args, parse_normalize, resolve_preprocess
from concepts.dissect.results import DissectResult, atomic_write, layer_files, write_json, write_layer
from concepts.staging import MARKER, OutputWriteError, guard_target, is_output, write_failed, write_marker
from concepts.dissect.tally import UNIONS, Tally
from concepts.dissect.thresholds import ExactQuantile

log = logging.getLogger(__name__)


@dataclass
class DissectConfig:
    """Everything a dissection run depends on (the CLI's options)."""

    dataset: str | Path  # a Broden folder, a published folder or hf://OWNER/NAME
    layers: list[str]
    out: Path
    model: str | torch.nn.Module | None = None  # a name (see dissect.models) or a model object
    weights: Path | None = None
    pretrained: bool = False
    trust_pickle: bool = False
    categories: list[str] | None = None
    quantile: float = 0.005
    iou_threshold: float = 0.04
    union: str = "ndlite"
    normalize: str = "auto"  # auto: the model's own mean and std when it states them, else imagenet
    thresholds: dict[str, Path] = field(default_factory=dict)  # layer ("" = every layer) -> .npy
    batch_size: int = 32
    workers: int | None = None  # None: default_workers()
    device: str = "cpu"
    split: str | None = None
    limit: int | None = None
    top_k: int = 10
    cache_budget_gb: float = 8.0
    force: bool = False
    checkpoint_s: float = 60.0  # how often an unfinished run saves what it has done
    layout: str | None = None  # how layer outputs hold units (dissect.hooks.parse_layout); None: from the model
    layer_output: str | None = None  # which element of a tuple, dict or ModelOutput layer output; None: the hidden state
    model_args: dict[str, str] = field(default_factory=dict)  # --model-arg KEY=VALUE for a factory or timm model
    preprocess: Any = None  # the model's own preprocessing given from Python (weights.transforms(), (mean, std), ...)


def default_workers() -> int:
    """Loader processes when none are asked for: one core stays with the model (measured best on 2 cores)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


#: DissectConfig fields that hold local paths: run.json keeps them absolute, so a report can run from anywhere.
_PATH_ARGS = ("dataset", "out", "weights")
#: What a --split may be called (as publish allows): no spaces, no '/'.
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def _arg(key: str, value: Any) -> Any:
    """An argument as run.json keeps it: path-typed ones absolute, every other one as typed."""
    if key in _PATH_ARGS and value is not None and not str(value).startswith("hf://"):
        return _absolute(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _absolute(path: str | Path) -> str:
    return str(Path(path).absolute())


def _finite(name: str, value: float, low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> None:
    """Refuse a NaN, an infinity or a value outside ``[low, high]`` (ends excluded when open), in one line."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        lo, hi = ("(" if open_low else "[") + f"{low:g}", f"{high:g}" + (")" if open_high else "]")
        raise UsageError(f"{name} {value}: must be a number in {lo}, {hi}")


def _check(cfg: DissectConfig) -> None:
    if not cfg.layers:
        raise UsageError("give at least one --layer")
    _finite("--quantile", cfg.quantile, 0, 1, open_low=True, open_high=True)
    _finite("--iou-threshold", cfg.iou_threshold, 0, 1)
    _finite("--cache-gb", cfg.cache_budget_gb, 0, 1e6)
    if cfg.union not in UNIONS:
        raise UsageError(f"--union {cfg.union!r}: choose one of {', '.join(UNIONS)}")
    if cfg.workers is None:
        cfg.workers = default_workers()
    for name, value in (("--batch-size", cfg.batch_size), ("--top-k", cfg.top_k), ("--limit", cfg.limit)):
        if value is not None and value < 1:
            raise UsageError(f"{name} {value}: must be positive")
    if cfg.workers < 0:
        raise UsageError(f"--workers {cfg.workers}: must not be negative")
    if cfg.split is not None and not _SPLIT_NAME.fullmatch(cfg.split):
        raise UsageError(f"--split {cfg.split!r}: a split name is letters, digits, '_', '-' and '.'")
    parse_device(cfg.device)
    parse_normalize(cfg.normalize)
    cfg.model_args = parse_model_args(cfg.model_args)
    unknown = [k for k in cfg.thresholds if k and k not in cfg.layers]
    if unknown:
        raise UsageError(f"--thresholds for {', '.join(unknown)}, which is not a --layer")
    for path in cfg.thresholds.values():
        if not Path(path).is_file():
            raise UsageError("--thresholds file not found", path=path)
        _read_thresholds(Path(path))  # a bad file is refused now, not after the forward pass starts


def _preflight(ds: Any, samples: list[Any], categories: list[str]) -> None:
    """Fail before the long passes on what index.csv alone shows: missing files, mixed image sizes."""
    sizes = {(s.ih, s.iw) for s in samples}
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:4])
        raise DatasetFormatError(f"images of different sizes ({shown}); dissection needs one image size", path=Path(ds.root) / "index.csv")
    if isinstance(ds, HubDataset):
        return  # its files are Parquet rows, checked when the dataset was opened
    images = Path(ds.root) / "images"
    for s in samples:
        for rel in [s.image] + [p for c in categories for p in s.pixel_paths(c)]:
            if not os.path.isfile(images / rel):
                raise DatasetFormatError(f"images/{rel} is missing", path=Path(ds.root) / "index.csv", row=s.index + 2)


def _read_thresholds(path: Path) -> np.ndarray:
    """The numbers of a thresholds ``.npy`` (never unpickled), refusing text, objects and NaN."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"cannot read thresholds: {(str(e).splitlines() or [type(e).__name__])[0]}", path=path) from None
    if not isinstance(arr, np.ndarray):
        raise UsageError("is not one .npy array of thresholds", path=path)
    if arr.dtype.kind not in "fiu":
        raise UsageError(f"holds {arr.dtype} values, not numbers; thresholds must be a float array", path=path)
    arr = np.array(arr, np.float32).reshape(-1)
    nan = int(np.isnan(arr).sum())
    if nan:
        raise UsageError(f"holds {nan} NaN threshold(s) of {arr.size}; every unit needs a number", path=path)
    return arr


def _load_thresholds(path: Path, units: int, layer: str) -> np.ndarray:
    arr = _read_thresholds(path)
    if arr.shape != (units,):
        raise UsageError(f"has {arr.size} thresholds but layer {layer} has {units} units", item=str(path))
    return arr


def _params(cfg: DissectConfig, layer: str, loaded: LoadedModel, fingerprint: str, categories: list[str], normalize: str, prep: Any) -> dict[str, Any]:
    tfile = cfg.thresholds.get(layer) or cfg.thresholds.get("")
    return {
        "model": loaded.name,
        "weights": loaded.weights_hash,
        "layer": layer,
        "dataset": fingerprint,
        "categories": categories,
        "quantile": cfg.quantile,
        "iou_threshold": cfg.iou_threshold,
        "union": cfg.union,
        "normalize": normalize,
        # Absent (None) unless the images are resized, so runs from before resizing existed still match.
        "resize": {"size": list(prep.resize), "interpolation": prep.interpolation} if prep.resize else None,
        "model_args": dict(cfg.model_args) or None,
        "thresholds": file_hash(Path(tfile)) if tfile else None,
        "split": cfg.split,
        "limit": cfg.limit,
        "top_k": cfg.top_k,
        "layout": cfg.layout,
        "layer_output": cfg.layer_output,
    }


def _key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    import torchvision

    import concepts

    versions = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__, "concepts": getattr(concepts, "__version__", "")}
    # The model libraries count only when this run used them (they are imported then).
    for name in ("timm", "transformers"):
        if name in sys.modules:
            versions[name] = getattr(sys.modules[name], "__version__", "")
    return versions


def _stale(previous: dict[str, Any] | None, params: dict[str, Any], out: Path, layer: str, summary: Any) -> str | None:
    """Why a layer must be (re)computed, or None when its finished results can be reused."""
    if not previous:
        return "no earlier run"
    old = previous.get("params", {})
    changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in params.items() if old.get(k) != v]
    if changed:
        return "changed: " + "; ".join(changed)
    missing = [f for f in layer_files(layer).values() if not (out / f).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    return None if _summary_ok(summary) else "its summary in summary.json is missing or unreadable"


def _summary_ok(summary: Any) -> bool:
    """Whether a layer's entry of summary.json has the shape dissect writes (the CLI prints it)."""
    if not isinstance(summary, dict) or not isinstance(summary.get("categories"), dict):
        return False
    numbers = [summary.get(k) for k in ("units", "detectors", "unique_concepts")]
    numbers += [v.get(k) if isinstance(v, dict) else None for v in summary["categories"].values() for k in ("detectors", "unique_concepts")]
    return all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)


def _read_json(path: Path) -> Any:
    """A JSON file of the run folder, or None when it is absent or unreadable (then it is rewritten)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:
        log.info("%s is unreadable (%s): its results are recomputed", path, (str(e).splitlines() or [type(e).__name__])[0])
        return None


def _previous_layers(record: Any) -> dict[str, dict[str, Any]]:
    """The finished layers of an earlier run.json, keeping only well-formed entries (files named by us, not by the file)."""
    layers = record.get("layers") if isinstance(record, dict) else None
    if not isinstance(layers, dict):
        return {}
    return {
        k: {"key": v.get("key"), "params": v["params"], "files": layer_files(k)}
        for k, v in layers.items()
        if k and isinstance(v, dict) and isinstance(v.get("params"), dict)
    }


def _is_run_record(path: Path) -> bool:
    """Whether ``path`` holds a run.json that concepts dissect wrote (before outputs carried a marker)."""
    record = _read_json(path / "run.json") if (path / "run.json").is_file() else None
    return isinstance(record, dict) and isinstance(record.get("layers"), dict) and isinstance(record.get("args"), dict) and "versions" in record


def _guard_output(out: Path, inputs: list[Path]) -> None:
    """Refuse, in one line and before any work starts, an ``out`` that is not a dissection folder to be.

    A dissection resumes in place, so its folder is never replaced: ``-o`` may name a new or
    empty folder, a folder an earlier dissect wrote (its marker, or a run.json of a run from
    before markers existed), never anything else, nor an input, the current or home folder.
    """
    try:
        guard_target(out, kind="dissection", overwrite=True, inputs=inputs)
    except OutputExistsError:
        foreign = out.is_dir() and not out.is_symlink() and not os.path.lexists(out / MARKER)
        if not foreign:
            raise
        if not _is_run_record(out):
            raise OutputExistsError(
                f"is a folder concepts did not write (no {MARKER} marker, no run.json); dissect never writes into it",
                path=out, hint="choose a new or empty folder for -o",
            ) from None


def _make_output(out: Path) -> None:
    """Create the dissection folder (once the run is known to start) and mark it as ours."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not is_output(out, "dissection"):
            write_marker(out, "dissection")
    except FileExistsError:
        raise OutputWriteError("cannot be created: a file stands where a folder must be", path=out) from None
    except OSError as e:
        raise OutputWriteError(f"cannot be created: {e.strerror or type(e).__name__}", path=out) from None


def _inputs(cfg: DissectConfig) -> list[Path]:
    """The local files and folders this run reads, which its output must neither be, hold nor lie in."""
    paths = [] if str(cfg.dataset).startswith("hf://") else [Path(cfg.dataset)]
    paths += [Path(p) for p in [cfg.weights, *cfg.thresholds.values()] if p is not None]
    if isinstance(cfg.model, str) and cfg.model.startswith(("hf:", "hf-backbone:")) and Path(cfg.model.partition(":")[2]).expanduser().is_dir():
        paths.append(Path(cfg.model.partition(":")[2]).expanduser())
    return paths


#: What ``dissect(model, dataset, ...)`` takes besides its named arguments: the other DissectConfig fields.
_OPTIONS = ("weights", "pretrained", "trust_pickle", "categories", "quantile", "iou_threshold", "union", "normalize", "thresholds", "batch_size", "workers", "split", "limit", "top_k", "cache_budget_gb", "force", "checkpoint_s", "layout", "layer_output", "model_args")


def dissect(
    model: DissectConfig | str | torch.nn.Module,
    dataset: str | Path | None = None,
    *,
    layers: str | list[str] | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    preprocess: Any = None,
    **options: Any,
) -> DissectResult:
    """Dissect layers of a model against a concept dataset; return the result (the run folder, read).

    ``model``: an ``nn.Module`` already in memory, or a name: torchvision (``resnet18``),
    ``timm:NAME``, ``hf:OWNER/NAME`` or ``hf:FOLDER``, ``package.module:factory``. ``dataset``: a
    Broden folder, a published folder or ``hf://OWNER/NAME``. ``layers``: module names. ``out``:
    the run folder (an earlier run there resumes). ``preprocess``: the model's own preprocessing
    (``weights.transforms()``, a timm data config, an image processor, or a ``(mean, std)`` pair);
    without it, the model's stated one, else ImageNet's. ``options``: the other
    :class:`DissectConfig` fields (``quantile``, ``categories``, ``batch_size``, ``workers``, ...).
    A :class:`DissectConfig` alone is accepted as well (the CLI passes one).
    """
    if isinstance(model, DissectConfig):
        extra = [k for k, v in (("dataset", dataset), ("layers", layers), ("out", out), ("preprocess", preprocess)) if v is not None]
        if extra or options or device != "cpu":
            raise UsageError(f"give a DissectConfig alone, or the model and its options ({', '.join(extra + list(options)) or 'device'} given beside a DissectConfig)")
        cfg = model
    else:
        unknown = [k for k in options if k not in _OPTIONS]
        if unknown:
            raise UsageError(f"dissect() has no option {', '.join(map(repr, unknown))}; options: {', '.join(_OPTIONS)}")
        if dataset is None or layers is None or out is None:
            missing = [k for k, v in (("dataset", dataset), ("layers", layers), ("out", out)) if v is None]
            raise UsageError(f"dissect() needs {', '.join(missing)}")
        if isinstance(options.get("thresholds"), (str, Path)):
            options["thresholds"] = {"": Path(options["thresholds"])}
        cfg = DissectConfig(dataset=dataset, layers=[layers] if isinstance(layers, str) else list(layers), out=Path(out), model=model, device=device, preprocess=preprocess, **options)
    out_path = Path(os.path.abspath(cfg.out))
    module = cfg.model if isinstance(cfg.model, torch.nn.Module) else None
    training = module.training if module is not None else False
    try:
        return DissectResult(out_path, _dissect(cfg, out_path), module)
    except ConceptsError:
        raise  # some are OSErrors too (OutputExistsError), and already one line
    except OSError as e:
        if write_failed(e, out_path):
            raise OutputWriteError(f"cannot write the dissection: {e.strerror or type(e).__name__}", path=cfg.out) from None
        name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes, os.PathLike)) else str(cfg.dataset)
        raise DatasetFormatError(f"cannot read: {e.strerror or type(e).__name__}", path=name) from None
    finally:
        if module is not None:
            module.train(training)  # the caller's object leaves in the mode it came in


def _record_args(cfg: DissectConfig, model_name: str) -> dict[str, Any]:
    """The arguments as run.json keeps them: a model object by its name, never pickled."""
    args = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "model":
            value = model_name
        elif f.name == "preprocess":
            value = None if value is None else type(value).__name__
        elif f.name == "thresholds":
            value = {k: _absolute(v) for k, v in value.items()}
        args[f.name] = _arg(f.name, value)
    return args


def _dissect(cfg: DissectConfig, out: Path) -> dict[str, Any]:
    _check(cfg)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    _guard_output(out, _inputs(cfg))
    try:
        ds = open_any(cfg.dataset)
    except OSError as e:
        raise DatasetFormatError(f"cannot read dataset: {e.strerror or e}", path=cfg.dataset) from None
    categories = list(cfg.categories) if cfg.categories else list(ds.category_names)
    bad = [c for c in categories if c not in ds.category_names]
    if bad:
        from concepts.listing import shorten

        raise UsageError(f"unknown categor{'y' if len(bad) == 1 else 'ies'} {shorten(bad)}; the dataset has {shorten(ds.category_names)}")
    if not categories:
        raise DatasetFormatError("the dataset has no category to dissect against", path=Path(str(cfg.dataset)) / "category.csv")
    samples = ds.select(cfg.split, cfg.limit)
    if not samples:
        if cfg.split:
            raise UsageError(f"no images in split {cfg.split!r}; the dataset has {', '.join(ds.splits()) or 'none'}", item=str(cfg.dataset))
        raise UsageError("the dataset has no images", item=str(cfg.dataset))
    _preflight(ds, samples, categories)
    primary = ds.primary_categories(categories)
    if not (primary[1:] >= 0).any():
        # Found here, not after the forward pass: every unit would score 0 against nothing.
        raise DatasetFormatError(f"no label of label.csv belongs to the categories {', '.join(categories)}; there is nothing to dissect against", path=Path(str(cfg.dataset)))
    loaded = load_model(cfg.model, cfg.weights, pretrained=cfg.pretrained, trust_pickle=cfg.trust_pickle, model_args=cfg.model_args)
    prep, normalize, preprocessing = resolve_preprocess(cfg.normalize, loaded, (samples[0].ih, samples[0].iw), cfg.preprocess)
    check_layers(loaded.module, cfg.layers)
    fingerprint = ds.fingerprint()
    _make_output(out)
    if _finish_commit(out):
        log.info("finished putting in place the results of an interrupted run")
    run_path = out / "run.json"
    previous = _previous_layers(_read_json(run_path))
    summary_path = out / "summary.json"
    summaries = _read_json(summary_path)
    if not isinstance(summaries, dict):
        summaries = {}
    layers = list(dict.fromkeys(cfg.layers))
    params = {layer: _params(cfg, layer, loaded, fingerprint, categories, normalize, prep) for layer in layers}
    todo = []
    for layer in layers:
        why = "--force" if cfg.force else _stale(previous.get(layer), params[layer], out, layer, summaries.get(layer))
        if why:
            log.info("%s: computing (%s)", layer, why)
            todo.append(layer)
        else:
            log.info("%s: finished results with identical arguments found, not recomputed", layer)
    record = {
        "args": _record_args(cfg, loaded.name),
        "model": {"name": loaded.name, "class": f"{type(loaded.module).__module__}.{type(loaded.module).__qualname__}", "weights": loaded.weights, "weights_hash": loaded.weights_hash},
        "preprocessing": preprocessing,
        "versions": _versions(),
        "images": len(samples),
        # A finished layer keeps its entry (and its files) until its new results are complete.
        "layers": dict(previous),
        "timings": {},
        "recomputed": todo,
    }
    if not todo:
        if (out / ".partial").exists():
            shutil.rmtree(out / ".partial", ignore_errors=True)
            log.info("removed the partial results of an interrupted run (every layer asked for is finished)")
        timings["total_s"] = time.perf_counter() - t_start
        record["timings"] = timings
        record["summary"] = {k: summaries.get(k) for k in layers}
        write_json(run_path, record)
        return record
    work = _Work(out, _key({k: params[k] for k in todo}))
    timings, record["resumed"] = _compute(cfg, ds, samples, categories, loaded.module, todo, prep, work, summaries)
    for layer in todo:
        record["layers"][layer] = {"key": _key(params[layer]), "params": params[layer], "files": layer_files(layer)}
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = timings
    record["summary"] = {k: summaries.get(k) for k in layers}
    files = [f for layer in todo for f in layer_files(layer).values()]
    write_json(work.results / _JOURNAL, {"files": files, "record": record, "summary": summaries})
    _finish_commit(out)
    return record


#: The commit journal: which finished files go into the run folder, and the run.json and summary.json that name them.
_JOURNAL = "commit.json"


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while a few renames run, so an interrupt never falls between them."""
    mask = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _finish_commit(out: Path) -> bool:
    """Move finished results from ``OUT/.partial/results`` into place as the journal says; True if there was one.

    The journal is written only once every new file is complete, so until then run.json names
    the old files, which stay untouched; after it, this step (repeated by the next run if the
    process dies half-way) moves the new files in and then writes the run.json naming them.
    """
    results = out / ".partial" / "results"
    if (out / ".partial").is_symlink() or results.is_symlink():
        return False  # never ours: _Work replaces it
    journal = _read_json(results / _JOURNAL) if (results / _JOURNAL).is_file() else None
    if journal is None:
        return False
    files = journal.get("files") if isinstance(journal, dict) else None
    plain = isinstance(files, list) and all(isinstance(f, str) and f and f == Path(f).name and not f.startswith(".") for f in files)
    if not plain or not isinstance(journal.get("record"), dict) or not isinstance(journal.get("summary"), dict):
        log.warning("discarding an unreadable commit journal in %s", results)
        shutil.rmtree(out / ".partial", ignore_errors=True)
        return False
    with _signals_deferred():
        for name in files:
            if (results / name).is_file():
                os.replace(results / name, out / name)
        write_json(out / "summary.json", journal["summary"])
        write_json(out / "run.json", journal["record"])
        (results / _JOURNAL).unlink()
    shutil.rmtree(out / ".partial", ignore_errors=True)
    return True


class _Work:
    """The folder where an unfinished run keeps what it has done so far (``OUT/.partial``).

    ``state.json`` names the arguments (``key``) and the finished steps: how many rows of the
    feature cache are complete, whether the thresholds are known, how many images the tallies
    cover. A run with other arguments starts it afresh; a finished run removes it.
    """

    def __init__(self, out: Path, key: str) -> None:
        self.dir = out / ".partial"
        #: Finished result files wait here until every one is complete (see _finish_commit).
        self.results = self.dir / "results"
        self.state: dict[str, Any] = {}
        path = self.dir / "state.json"
        if path.is_file():
            try:
                self.state = json.loads(path.read_text())
            except ValueError:
                self.state = {}
        if self.state.get("key") != key or self.dir.is_symlink():
            if os.path.lexists(self.dir):
                log.info("discarding the partial results of an interrupted run with other arguments")
            if self.dir.is_symlink():
                self.dir.unlink()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.state = {"key": key}
        self.results.mkdir(parents=True, exist_ok=True)
        self.found = {k: v for k, v in self.state.items() if k != "key"}

    def save(self, **changes: Any) -> None:
        """Record finished steps (after their files are written)."""
        self.state.update(changes)
        write_json(self.dir / "state.json", self.state)

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Write one ``.npz`` of the work folder atomically."""
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(self.dir / name, buf.getvalue())

    def load_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """Read one ``.npz`` of the work folder, or None when it is absent or unreadable."""
        try:
            with np.load(self.dir / name, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile):
            return None


class _Every:
    """True at most once per ``seconds`` (checkpoints cost a write; interrupts save anyway)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            return True
        return False


def _compute(cfg: DissectConfig, ds: Any, samples: list[Any], categories: list[str], model: torch.nn.Module, layers: list[str], mean_std: Any, work: _Work, summaries: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """The three steps for ``layers`` in shared passes over the data; return timings and what was resumed.

    The result files are written into ``work.results``; the caller moves them into place.
    """
    device = parse_device(cfg.device)
    timings: dict[str, float] = {}
    resumed: dict[str, Any] = {}
    store = FeatureStore(model, layers, ds, samples, categories, mean_std=mean_std, batch_size=cfg.batch_size, workers=cfg.workers, device=device, cache_dir=work.dir, budget_bytes=int(cfg.cache_budget_gb * 1e9), layout=cfg.layout, layer_output=cfg.layer_output)
    feat_state = work.found.get("features") or {}
    if feat_state.get("shapes"):
        store.resume(feat_state["shapes"], int(feat_state.get("rows", 0)))
        if store.rows:
            resumed["feature_rows"] = store.rows
    names = {k: f"layer{i}" for i, k in enumerate(layers)}
    thresholds: dict[str, np.ndarray] = {}
    top: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if work.found.get("thresholds"):
        for k in layers:
            saved = work.load_arrays(f"{names[k]}_thresholds.npz")
            if saved is None:
                thresholds = {}
                break
            thresholds[k] = saved["thresholds"]
            top[k] = (torch.from_numpy(saved["top_values"]).to(device), torch.from_numpy(saved["top_index"]).to(device))
            store.shapes[k] = tuple(int(v) for v in saved["shape"])
        if thresholds:
            resumed["thresholds"] = True
    every = _Every(cfg.checkpoint_s)

    def save_features() -> None:
        store.flush()
        work.save(features={"rows": store.rows, "shapes": {k: list(v) for k, v in store.shapes.items()}})

    try:
        if not thresholds:
            thresholds, top = _thresholds(cfg, store, layers, device, lambda: every() and save_features(), timings)
            for k in layers:
                vals, ids = top[k]
                work.save_arrays(f"{names[k]}_thresholds.npz", {"thresholds": thresholds[k], "top_values": vals.cpu().numpy(), "top_index": ids.cpu().numpy(), "shape": np.array(store.shapes[k])})
            save_features()
            work.save(thresholds=True)
        t = time.perf_counter()
        primary = ds.primary_categories(categories)
        primary[0] = -1
        tallies = {k: Tally(store.shapes[k][0], primary, len(categories), thresholds[k], cfg.union, device) for k in layers}
        start = 0
        if work.found.get("tally"):
            saved_tallies = {k: work.load_arrays(f"{names[k]}_tally.npz") for k in layers}
            counts = {int(v["images"]) for v in saved_tallies.values() if v is not None}
            if None not in saved_tallies.values() and len(counts) == 1:
                for k in layers:
                    tallies[k].load_state(saved_tallies[k])
                start = counts.pop()
                resumed["tally_images"] = start

        def save_tallies() -> None:
            if any(tl.committing for tl in tallies.values()):
                return  # interrupted while adding a batch: the last checkpoint stands
            for k in layers:
                work.save_arrays(f"{names[k]}_tally.npz", tallies[k].state())
            work.save(tally=True)

        try:
            for items, feats in store.batches(labels=True, desc="tally", start=start):
                for k in layers:
                    tallies[k].update(feats[k], items)
                if every():
                    save_tallies()
        except BaseException:
            save_tallies()
            raise
        timings["tally_s"] = time.perf_counter() - t
    except BaseException:
        if store.maps is not None and not work.found.get("thresholds"):
            try:
                save_features()
            except Exception:  # noqa: BLE001 - never hide the error that stopped the run
                log.debug("could not checkpoint the feature cache", exc_info=True)
        store.close()
        raise
    store.close()
    t = time.perf_counter()
    names_l = ds.label_names()
    images = [getattr(s, "image", str(i)) for i, s in enumerate(samples)]
    for k in layers:
        vals, ids = top.get(k, (torch.empty(0, 0), torch.empty(0, 0, dtype=torch.long)))
        summaries[k] = write_layer(work.results, k, tallies[k].arrays(), thresholds[k], primary, categories, names_l, cfg.iou_threshold, (vals.cpu().numpy(), ids.cpu().numpy()), images)
    timings["results_s"] = time.perf_counter() - t
    return timings, resumed


def _thresholds(cfg: DissectConfig, store: FeatureStore, layers: list[str], device: torch.device, checkpoint: Callable[[], Any], timings: dict[str, float]) -> tuple[dict[str, np.ndarray], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The forward pass (features, top-k, first quantile pass), then the remaining quantile passes."""
    quantiles: dict[str, ExactQuantile] = {}
    fixed: dict[str, np.ndarray] = {}
    top: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def on_batch(_items, i0: int, feats: dict[str, torch.Tensor]) -> None:
        for name, f in feats.items():
            units = f.shape[1]
            if name not in quantiles and name not in fixed:
                tfile = cfg.thresholds.get(name) or cfg.thresholds.get("")
                if tfile:
                    fixed[name] = _load_thresholds(Path(tfile), units, name)
                else:
                    quantiles[name] = ExactQuantile(units, 1.0 - cfg.quantile)
            if name in quantiles:
                quantiles[name].update(f)
            if name not in top:
                top[name] = (torch.empty(0, units, device=device), torch.empty(0, units, dtype=torch.long, device=device))
            if cfg.top_k:
                mx = f.amax(dim=(2, 3)).float()
                idx = torch.arange(i0, i0 + len(f), device=device)
                vals, ids = top[name]
                vals = torch.cat([vals, mx])
                ids = torch.cat([ids, idx[:, None].expand_as(mx)])
                order = torch.sort(vals, dim=0, descending=True, stable=True).indices[: cfg.top_k]
                top[name] = (vals.gather(0, order), ids.gather(0, order))

    t = time.perf_counter()
    store.forward_pass(on_batch, checkpoint)
    timings["features_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for q in quantiles.values():
        q.end_pass()
    passes = 0
    while any(q.needs_pass() for q in quantiles.values()):
        passes += 1
        pending = [k for k, q in quantiles.items() if q.needs_pass()]
        for _, feats in store.batches(labels=False, desc=f"quantiles {passes}"):
            for k in pending:
                quantiles[k].update(feats[k])
        for k in pending:
            quantiles[k].end_pass()
    timings["thresholds_s"] = time.perf_counter() - t
    return fixed | {k: q.result() for k, q in quantiles.items()}, top


__all__ = ["ConceptsError", "DissectConfig", "dissect"]
