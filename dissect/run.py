"""Run a whole dissection: forward pass, thresholds, tallies, results, and what to skip on resume.

:func:`dissect` is the one entry point, for the CLI and for Python alike::

    from concepts.dissect import dissect

    result = dissect(model, "broden1_224", layers=["layer4"], out="runs/r18", preprocess=weights.transforms())
    result.tally("layer4")
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import secrets
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
from concepts.dissect.distributed import Dist, DistributedError, current, fail_point, on_main
from concepts.dissect.features import FeatureStore
from concepts.dissect.hooks import check_layers
from concepts.dissect.layouts import parse_layout
from concepts.dissect.models import LoadedModel, file_hash, is_factory, load_model, parse_device, parse_model_args, parse_normalize, resolve_preprocess
from concepts.dissect.results import DissectResult, atomic_write, best_labels, layer_files, safe_name, sweep_rows, write_json, write_layer, write_sweep
from concepts.dissect.significance import Significance, candidate_labels, chunks, evaluate
from concepts.staging import MARKER, OutputWriteError, guard_target, is_output, write_failed, write_marker
from concepts.dissect.tally import UNIONS, Tally
from concepts.dissect.tally import iou as compute_iou
from concepts.dissect.thresholds import ExactQuantile
from concepts.dissect.topmaps import merge_topk, save_topmaps

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
    quantile: float = 0.005  # or a list: the first makes the main outputs, the others go to sweep_quantiles
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
    layout: str | None = None  # how layer outputs hold units (dissect.layouts.parse_layout); None: from the model
    layer_output: str | None = None  # which element of a tuple, dict or ModelOutput layer output; None: the hidden state
    model_args: dict[str, str] = field(default_factory=dict)  # --model-arg KEY=VALUE for a factory or timm model
    preprocess: Any = None  # the model's own preprocessing given from Python (weights.transforms(), (mean, std), ...)
    significance: bool = True  # permutation null, bootstrap intervals and Benjamini-Hochberg (dissect.significance)
    alpha: float = 0.05  # false discovery rate of the significant detectors
    null_shifts: int = 8  # K: label derangements of the permutation null
    bootstrap: int = 1000  # B: bootstrap resamples of the images for the IoU intervals
    seed: int = 0  # seeds the null's pairings, the bootstrap and the random baseline's weights
    baseline: str | None = None  # "random": also dissect the architecture with random weights
    sweep_quantiles: list[float] = field(default_factory=list)  # more quantiles after the first (--quantile A,B,C)


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
    if isinstance(cfg.quantile, (list, tuple)):
        # The first quantile makes the main outputs; the others go to the sweeps (and .q files).
        if not cfg.quantile:
            raise UsageError("--quantile: give at least one value")
        cfg.quantile, cfg.sweep_quantiles = cfg.quantile[0], list(cfg.quantile[1:]) + list(cfg.sweep_quantiles)
    _finite("--quantile", cfg.quantile, 0, 1, open_low=True, open_high=True)
    for q in cfg.sweep_quantiles:
        _finite("--quantile", q, 0, 1, open_low=True, open_high=True)
    if len({float(q) for q in [cfg.quantile, *cfg.sweep_quantiles]}) != 1 + len(cfg.sweep_quantiles):
        raise UsageError(f"--quantile {','.join(f'{q:g}' for q in [cfg.quantile, *cfg.sweep_quantiles])}: a value is given twice")
    if cfg.sweep_quantiles and cfg.thresholds:
        raise UsageError("--quantile with several values and --thresholds: a thresholds file fixes the thresholds, so there is no quantile to sweep; give one of them")
    _check_trust(cfg)
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
    parse_layout(cfg.layout)
    cfg.model_args = parse_model_args(cfg.model_args)
    unknown = [k for k in cfg.thresholds if k and k not in cfg.layers]
    if unknown:
        raise UsageError(f"--thresholds for {', '.join(unknown)}, which is not a --layer")
    for path in cfg.thresholds.values():
        if not Path(path).is_file():
            raise UsageError("--thresholds file not found", path=path)
        _read_thresholds(Path(path))  # a bad file is refused now, not after the forward pass starts


def _check_trust(cfg: DissectConfig) -> None:
    """Refuse bad significance and baseline options in one line each."""
    for name, value in (("significance", cfg.significance),):
        if not isinstance(value, bool):
            raise UsageError(f"{name}={value!r}: must be True or False")
    _finite("--alpha", cfg.alpha, 0, 1, open_low=True)
    for name, value, low in (("--null-shifts", cfg.null_shifts, 2), ("--bootstrap", cfg.bootstrap, 2), ("--seed", cfg.seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"{name} {value}: must be a whole number of at least {low}")
    if cfg.baseline not in (None, "random"):
        raise UsageError(f"--baseline {cfg.baseline!r}: the one baseline is 'random' (the same architecture with random weights)")


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
    arr = np.array(arr, np.float64).reshape(-1)  # float64 as given: the comparison is the reference's
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
        # None when off, so runs without them keep one key whatever alpha, K, B or the seed say.
        "significance": {"alpha": cfg.alpha, "shifts": cfg.null_shifts, "bootstrap": cfg.bootstrap, "seed": cfg.seed} if cfg.significance else None,
        "baseline": {"kind": cfg.baseline, "seed": cfg.seed} if cfg.baseline else None,
        "sweep_quantiles": list(cfg.sweep_quantiles) or None,
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
    missing = [f for f in _outputs(layer, params).values() if not (out / f).is_file()]
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
_OPTIONS = ("weights", "pretrained", "trust_pickle", "categories", "quantile", "iou_threshold", "union", "normalize", "thresholds", "batch_size", "workers", "split", "limit", "top_k", "cache_budget_gb", "force", "checkpoint_s", "layout", "layer_output", "model_args", "significance", "alpha", "null_shifts", "bootstrap", "seed", "baseline", "sweep_quantiles")


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
    # A group torchrun describes is joined here (dissect.distributed.current) and left after a finished run.
    own_group = torch.distributed.is_available() and not torch.distributed.is_initialized()
    try:
        result = DissectResult(out_path, _dissect(cfg, out_path), module)
    except ConceptsError as e:
        raise _ranked(e)  # some are OSErrors too (OutputExistsError), and already one line
    except OSError as e:
        if write_failed(e, out_path):
            raise _ranked(OutputWriteError(f"cannot write the dissection: {e.strerror or type(e).__name__}", path=cfg.out)) from None
        name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes, os.PathLike)) else str(cfg.dataset)
        raise _ranked(DatasetFormatError(f"cannot read: {e.strerror or type(e).__name__}", path=name)) from None
    finally:
        if module is not None:
            module.train(training)  # the caller's object leaves in the mode it came in
    if own_group and torch.distributed.is_initialized():
        # Leave together: a rank tearing down its gloo connections while a peer still uses them
        # aborts that peer ("terminate called without an active exception").
        if torch.distributed.get_world_size() > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _ranked(err: ConceptsError) -> ConceptsError:
    """In a distributed run, the error's one line starts with the rank that raised it."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and not err.message.startswith("rank "):
        err.message = f"rank {dist.get_rank()}: {err.message}"
        err.args = (err.format(),)
    return err


def _rank_device(spec: str, d: Dist) -> torch.device:
    """Where this rank's model runs: ``--device cuda`` on several ranks means one GPU each, ``LOCAL_RANK``."""
    device = parse_device(spec)
    if d.world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return device


def _same_args(cfg: DissectConfig) -> dict[str, Any]:
    """The arguments every rank must share (a model object by its class; loader workers may differ between nodes)."""
    out = {}
    for f in fields(cfg):
        if f.name == "workers":
            continue
        value = getattr(cfg, f.name)
        if f.name in ("model", "preprocess") and value is not None and not isinstance(value, str):
            value = f"{type(value).__module__}.{type(value).__qualname__}"
        out[f.name] = _arg(f.name, value)
    return out


#: The file rank 0 writes into the output folder for the other ranks to find.
_TOKEN = ".concepts-ranks-check"


def _check_shared(d: Dist, out: Path) -> None:
    """Fail in one line unless every rank sees the output folder rank 0 writes (one folder, on several nodes a shared filesystem)."""
    if d.world == 1:
        return
    path = out / _TOKEN

    def write() -> str:
        token = secrets.token_hex(16)
        atomic_write(path, token)
        return token

    token = on_main(d, "checking the output folder", write)
    deadline = time.monotonic() + 10  # a network filesystem may show a new file a little later
    while True:
        try:
            seen = path.read_text(encoding="utf-8") == token
        except OSError:
            seen = False
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    seen_by = d.gather(seen)
    if d.main:
        path.unlink(missing_ok=True)
    blind = [r for r, ok in enumerate(seen_by) if not ok]
    if blind:
        raise DistributedError(f"rank {blind[0]} cannot see the output folder {out} as rank 0 writes it; every rank must write into one folder (on several nodes, a shared filesystem mounted at the same path)")


#: Where a distributed run's ``.partial`` records its key and number of ranks.
_WORLD = "world.json"


def _check_partial(out: Path, key: str, world: int) -> None:
    """Refuse to resume an interrupted run on another number of ranks; set ``.partial`` up for a distributed run (rank 0)."""
    part = out / ".partial"
    if part.is_symlink():
        return  # never ours: _Work replaces it
    info = _read_json(part / _WORLD) if (part / _WORLD).is_file() else None
    if isinstance(info, dict):
        old_key, old_world = info.get("key"), info.get("world")
    else:
        state = _read_json(part / "state.json") if (part / "state.json").is_file() else None
        old_key, old_world = (state.get("key") if isinstance(state, dict) else None), 1
    if old_key == key and old_world != world:
        raise UsageError(
            f"holds an interrupted run of this dissection on {old_world} process(es), and this run has {world}; "
            f"rerun it on {old_world} to resume (torchrun --nproc-per-node {old_world}, or one process for 1), or delete the folder to start again",
            path=part,
        )
    if world > 1:
        if old_key != key and os.path.lexists(part):
            log.info("discarding the partial results of an interrupted run with other arguments")
            shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True, exist_ok=True)
        write_json(part / _WORLD, {"key": key, "world": world})


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
    d = current(cfg.device)
    device = _rank_device(cfg.device, d)
    if d.world > 1:
        d.agree(_same_args(cfg), "command line (arguments)")
    fail_point(d, "start")
    # Rank 0 alone guards, creates and writes the output folder; the others wait for it.
    on_main(d, "checking the output folder", lambda: _guard_output(out, _inputs(cfg)))
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
    baseline = _random_model(cfg, loaded) if cfg.baseline else None
    fingerprint = ds.fingerprint()
    if d.world > 1:
        d.agree((fingerprint, len(samples), loaded.weights_hash), "dataset or model (fingerprint, images, weights)")
    on_main(d, "creating the output folder", lambda: _prepare_output(out))
    _check_shared(d, out)
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
    if d.world > 1:
        d.agree(todo, "list of layers to compute (the output folder changed while the ranks started)")
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
        "world_size": d.world,
    }
    if not todo:
        def finished() -> None:
            if (out / ".partial").exists():
                shutil.rmtree(out / ".partial", ignore_errors=True)
                log.info("removed the partial results of an interrupted run (every layer asked for is finished)")
            write_json(run_path, record)

        timings["total_s"] = time.perf_counter() - t_start
        record["timings"] = timings
        record["summary"] = {k: summaries.get(k) for k in layers}
        on_main(d, "writing run.json", finished)
        return record
    shard = _shard(d, len(samples))
    key = _key({k: params[k] for k in todo})
    on_main(d, "checking the partial results", lambda: _check_partial(out, key, d.world))
    work = _Work(out, key, rank=d.rank if d.world > 1 else None)
    timings, record["resumed"] = _compute(cfg, ds, samples, categories, loaded.module, todo, prep, work, summaries, baseline=baseline, d=d, shard=shard, device=device)
    if cfg.significance and record["resumed"].get("tally_images") == len(samples):
        # The significance pass keeps no checkpoint of its own: after an interrupt it runs again from the first image.
        record["significance_restarted"] = True
    for layer in todo:
        record["layers"][layer] = {"key": _key(params[layer]), "params": params[layer], "files": _outputs(layer, params[layer])}
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = timings
    record["summary"] = {k: summaries.get(k) for k in layers}
    files = [f for layer in todo for f in _outputs(layer, params[layer]).values()]

    def commit() -> None:
        write_json(work.results / _JOURNAL, {"files": files, "record": record, "summary": summaries})
        _finish_commit(out)

    on_main(d, "writing the results", commit)
    return record


def _prepare_output(out: Path) -> None:
    """Create the output folder and finish putting in place what an interrupted run had completed."""
    _make_output(out)
    if _finish_commit(out):
        log.info("finished putting in place the results of an interrupted run")


def _shard(d: Dist, n: int) -> range:
    """This rank's images: whole chunks of the significance pairing (dissect.significance.chunks), the same on any number of ranks."""
    if d.world == 1:
        return range(n)
    parts = chunks(n)
    if len(parts) < d.world:
        raise UsageError(f"{n} images make {len(parts)} chunk(s) of at least 16 images, the unit a rank takes; run on at most {len(parts)} process(es)")
    return d.shard_chunks(parts)


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

    def __init__(self, out: Path, key: str, rank: int | None = None) -> None:
        # A distributed run keeps each rank's cache and counts apart (rank-R), its results in one place.
        self.dir = out / ".partial" / f"rank-{rank}" if rank is not None else out / ".partial"
        #: Finished result files wait here until every one is complete (see _finish_commit).
        self.results = out / ".partial" / "results"
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


def _outputs(layer: str, params: dict[str, Any]) -> dict[str, str]:
    """Every result file of one layer: :func:`layer_files`, the sweep, and the baseline's and other quantiles' tallies."""
    files = dict(layer_files(layer))
    s = safe_name(layer)
    files["sweep"] = f"sweep_{s}.csv"
    tags = (["baseline"] if params.get("baseline") else []) + [_qtag(q) for q in params.get("sweep_quantiles") or []]
    for tag in tags:
        files |= {f"{kind}.{tag}": f"{kind}_{s}.{tag}.{ext}" for kind, ext in (("tally", "csv"), ("matrices", "npz"), ("thresholds", "npy"))}
    return files


def _qtag(q: float) -> str:
    """How another quantile's files are named: ``tally_{layer}.q0.01.csv``."""
    return f"q{q:g}"


def _random_model(cfg: DissectConfig, loaded: LoadedModel) -> torch.nn.Module:
    """The same architecture with seeded random weights, for ``--baseline random``.

    A torchvision or timm model named on the command line is built again without weights (its
    library's own random initialisation); any other model (an object, a factory, which may set
    weights itself, an hf: model, a whole pickled model) is copied and every module's
    ``reset_parameters()`` called, refused when a parameter belongs to no module that has one.
    """
    named = isinstance(cfg.model, str) and not cfg.model.startswith(("hf:", "hf-backbone:", "memory:")) and not is_factory(cfg.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if named:
            return load_model(cfg.model, None, pretrained=False, trust_pickle=False, model_args=cfg.model_args).module.eval()
        try:
            module = copy.deepcopy(loaded.module)
        except Exception as e:  # noqa: BLE001 - TorchScript and exotic modules: one line saying so
            raise UsageError(f"--baseline random: cannot copy the model {loaded.name} to re-initialise it ({type(e).__name__})") from None
        covered: set[int] = set()
        for mod in module.modules():
            reset = getattr(mod, "reset_parameters", None)
            if callable(reset):
                reset()
                covered |= {id(prm) for prm in mod.parameters(recurse=False)}
        left = [name for name, prm in module.named_parameters() if id(prm) not in covered]
        if left:
            shown = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
            raise UsageError(f"--baseline random: parameter(s) {shown} of {loaded.name} belong to no module with reset_parameters(), so random weights cannot be drawn for them; dissect a freshly built model by name instead")
        return module.eval()


def _significance(cfg: DissectConfig, store: FeatureStore, layers: list[str], tallies: dict[str, Tally], thresholds: dict[str, np.ndarray], primary: np.ndarray, num_categories: int, num_images: int, device: torch.device, timings: dict[str, float], *, d: Dist | None = None, shard: range | None = None) -> dict[str, tuple[Any, Any]]:
    """The significance pass over the cached features: per layer ``(Counts, Result)`` (empty when off or with one image).

    Over several ranks each feeds its ``shard`` (whole chunks, so whole blocks) and the counts
    are combined; rank 0 alone evaluates them (the others get ``(Counts, None)``).
    """
    d = d or Dist()
    shard = shard if shard is not None else range(num_images)
    if not cfg.significance:
        return {}
    if num_images < 2:
        log.warning("significance skipped: the permutation null needs at least 2 images, the run has %d", num_images)
        return {}
    t = time.perf_counter()
    sigs: dict[str, Significance] = {}
    for k in layers:
        arrays = tallies[k].arrays()
        label, _, best = best_labels(compute_iou(arrays), primary, num_categories)
        units = label.shape[1]
        unit_label = label[best, np.arange(units)]
        cand = candidate_labels(compute_iou(arrays), unit_label, primary)
        sigs[k] = Significance(units, primary, num_categories, thresholds[k], cand, num_images, union=cfg.union, shifts=cfg.null_shifts, seed=cfg.seed, device=device)
    order = next(iter(sigs.values())).order  # the same for every layer: it depends on the images and the seed only
    # The shard holds whole chunks and the order keeps chunks in place: its slice is the shard's images.
    local = order[shard.start : shard.stop] - shard.start
    for items, feats in store.batches(labels=True, desc="significance", order=local):
        for it in items:
            it.index += shard.start
        for k in layers:
            sigs[k].update(feats[k], items)
    out = {}
    for k in layers:
        counts = sigs[k].finish(d)
        if not np.array_equal(counts.inter[0], tallies[k].arrays()["intersection"]):
            raise RuntimeError(f"layer {k}: the significance pass's observed counts differ from the tally's (a bug; please report it)")
        out[k] = (counts, evaluate(counts, cfg.iou_threshold, cfg.alpha, cfg.bootstrap, cfg.seed) if d.main else None)
    timings["significance_s"] = time.perf_counter() - t
    return out


def _search_and_tally(store: FeatureStore, layers: list[str], quantile: float, primary: np.ndarray, num_categories: int, union: str, device: torch.device, desc: str, forward: bool, d: Dist | None = None) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Thresholds at ``quantile`` and the tally with them: per layer ``(thresholds, tally arrays)``, over every rank's images; no checkpoints."""
    quantiles: dict[str, ExactQuantile] = {}

    def feed(feats: dict[str, torch.Tensor], only: list[str]) -> None:
        for k in only:
            if k not in quantiles:
                quantiles[k] = ExactQuantile(feats[k].shape[1], 1.0 - quantile, dist=d)
            quantiles[k].update(feats[k])

    if forward:
        store.forward_pass(lambda _items, _i0, feats: feed(feats, layers))
    else:
        for _, feats in store.batches(labels=False, desc=f"{desc} quantiles"):
            feed(feats, layers)
    for q in quantiles.values():
        q.end_pass()
    while any(q.needs_pass() for q in quantiles.values()):
        pending = [k for k, q in quantiles.items() if q.needs_pass()]
        for _, feats in store.batches(labels=False, desc=f"{desc} quantiles"):
            feed(feats, pending)
        for k in pending:
            quantiles[k].end_pass()
    thresholds = {k: q.result() for k, q in quantiles.items()}
    tallies = {k: Tally(store.shapes[k][0], primary, num_categories, thresholds[k], union, device) for k in layers}
    for items, feats in store.batches(labels=True, desc=f"{desc} tally"):
        for k in layers:
            tallies[k].update(feats[k], items)
    for k in layers:
        tallies[k].reduce(d)
    return {k: (thresholds[k], tallies[k].arrays()) for k in layers}


def _more_quantiles(cfg: DissectConfig, store: FeatureStore, layers: list[str], primary: np.ndarray, num_categories: int, device: torch.device, timings: dict[str, float], d: Dist | None = None) -> dict[float | None, dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]]:
    """A threshold search and a tally per further quantile, over the cached features (no forward pass when they fit the cache)."""
    t = time.perf_counter()
    out: dict[float | None, Any] = {}
    for q in cfg.sweep_quantiles:
        out[q] = _search_and_tally(store, layers, q, primary, num_categories, cfg.union, device, f"quantile {q:g}", forward=False, d=d)
    if cfg.sweep_quantiles:
        timings["quantiles_s"] = time.perf_counter() - t
    return out


def _random_baseline(cfg: DissectConfig, ds: Any, samples: list[Any], categories: list[str], model: torch.nn.Module, layers: list[str], mean_std: Any, work: _Work, primary: np.ndarray, device: torch.device, timings: dict[str, float], d: Dist | None = None) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The random-weights model's own forward pass, thresholds and tally at the run's quantile (``samples``: this rank's)."""
    t = time.perf_counter()
    cache = work.dir / "baseline"
    shutil.rmtree(cache, ignore_errors=True)  # never resumed: a fresh pass after an interrupt
    store = FeatureStore(model, layers, ds, samples, categories, mean_std=mean_std, batch_size=cfg.batch_size, workers=cfg.workers, device=device, cache_dir=cache, budget_bytes=int(cfg.cache_budget_gb * 1e9), layout=cfg.layout, layer_output=cfg.layer_output)
    try:
        out = _search_and_tally(store, layers, cfg.quantile, primary, len(categories), cfg.union, device, "baseline", forward=True, d=d)
    finally:
        store.close()
        shutil.rmtree(cache, ignore_errors=True)
    timings["baseline_s"] = time.perf_counter() - t
    return out


def _write_more(cfg: DissectConfig, results: Path, layer: str, arrays: dict[str, np.ndarray], more: dict[float | None, Any], summary: dict[str, Any], primary: np.ndarray, categories: list[str], label_names: list[str]) -> None:
    """The sweep of one layer over IoU thresholds (every quantile), and the other quantiles' and the baseline's tallies."""
    files = _outputs(layer, {"baseline": cfg.baseline, "sweep_quantiles": cfg.sweep_quantiles})
    rows = sweep_rows(compute_iou(arrays), primary, categories, cfg.quantile)
    for q, per_layer in more.items():
        tag = "baseline" if q is None else _qtag(q)
        names = {kind: files[f"{kind}.{tag}"] for kind in ("tally", "matrices", "thresholds")}
        th, arr = per_layer[layer]
        s = write_layer(results, layer, arr, th, primary, categories, label_names, cfg.iou_threshold, (np.zeros((0, 0)), np.zeros((0, 0), np.int64)), [], names=names)
        if q is None:
            summary["baseline"] = {"detectors": s["detectors"], "unique_concepts": s["unique_concepts"], "categories": s["categories"]}
        else:
            rows += sweep_rows(compute_iou(arr), primary, categories, q)
            summary.setdefault("quantiles", {})[f"{q:g}"] = {"detectors": s["detectors"], "unique_concepts": s["unique_concepts"], "categories": s["categories"]}
    write_sweep(results / files["sweep"], rows)


def _compute(cfg: DissectConfig, ds: Any, samples: list[Any], categories: list[str], model: torch.nn.Module, layers: list[str], mean_std: Any, work: _Work, summaries: dict[str, Any], baseline: torch.nn.Module | None = None, *, d: Dist | None = None, shard: range | None = None, device: torch.device | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """The three steps for ``layers`` in shared passes over the data; return timings and what was resumed.

    The result files are written into ``work.results`` (by rank 0 alone); the caller moves them
    into place. Each rank passes over its ``shard`` of ``samples`` only; counts, quantile searches
    and top-k lists are combined across ranks (``d``), and indices are positions in ``samples``.
    """
    d = d or Dist()
    shard = shard if shard is not None else range(len(samples))
    device = device if device is not None else parse_device(cfg.device)
    mine = list(samples[shard.start : shard.stop])
    timings: dict[str, float] = {}
    resumed: dict[str, Any] = {}
    store = FeatureStore(model, layers, ds, mine, categories, mean_std=mean_std, batch_size=cfg.batch_size, workers=cfg.workers, device=device, cache_dir=work.dir, budget_bytes=int(cfg.cache_budget_gb * 1e9), layout=cfg.layout, layer_output=cfg.layer_output)
    feat_state = work.found.get("features") or {}
    if feat_state.get("shapes"):
        store.resume(feat_state["shapes"], int(feat_state.get("rows", 0)))
        if store.rows:
            resumed["feature_rows"] = store.rows
    names = {k: f"layer{i}" for i, k in enumerate(layers)}
    thresholds: dict[str, np.ndarray] = {}
    top: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    if work.found.get("thresholds"):
        for k in layers:
            saved = work.load_arrays(f"{names[k]}_thresholds.npz")
            if saved is None:
                thresholds = {}
                break
            if "top_maps" not in saved:  # saved before top-k maps were kept: redo the pass that makes them
                thresholds = {}
                break
            thresholds[k] = saved["thresholds"]
            top[k] = (torch.from_numpy(saved["top_values"]).to(device), torch.from_numpy(saved["top_index"]).to(device), torch.from_numpy(saved["top_maps"]).to(device))
            store.shapes[k] = tuple(int(v) for v in saved["shape"])
        if d.world > 1 and not all(d.gather(bool(thresholds))):
            thresholds, top = {}, {}  # another rank stopped before saving them: every rank searches again
            if store.maps is None:
                store.shapes = {}  # so the forward pass opens the feature cache again
        if thresholds:
            resumed["thresholds"] = True
    elif d.world > 1:
        d.gather(False)  # the same collective as a rank that found saved thresholds
    every = _Every(cfg.checkpoint_s)

    def save_features() -> None:
        store.flush()
        work.save(features={"rows": store.rows, "shapes": {k: list(v) for k, v in store.shapes.items()}})

    try:
        if not thresholds:
            thresholds, top = _thresholds(cfg, store, layers, device, lambda: every() and save_features(), timings, d=d, offset=shard.start)
            for k in layers:
                vals, ids, maps = top[k]
                work.save_arrays(f"{names[k]}_thresholds.npz", {"thresholds": thresholds[k], "top_values": vals.cpu().numpy(), "top_index": ids.cpu().numpy(), "top_maps": maps.cpu().numpy(), "shape": np.array(store.shapes[k])})
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
                fail_point(d, "tally")
        except BaseException:
            save_tallies()
            raise
        timings["tally_s"] = time.perf_counter() - t
        save_tallies()  # complete: an interrupt in the passes below resumes after the tally
        for k in layers:
            tallies[k].reduce(d)  # after the checkpoint, which keeps this rank's own counts
        fail_point(d, "significance")
        sig = _significance(cfg, store, layers, tallies, thresholds, primary, len(categories), len(samples), device, timings, d=d, shard=shard)
        more = _more_quantiles(cfg, store, layers, primary, len(categories), device, timings, d=d)
    except BaseException:
        if store.maps is not None and not work.found.get("thresholds"):
            try:
                save_features()
            except Exception:  # noqa: BLE001 - never hide the error that stopped the run
                log.debug("could not checkpoint the feature cache", exc_info=True)
        store.close()
        raise
    store.close()
    if baseline is not None:
        more[None] = _random_baseline(cfg, ds, mine, categories, baseline, layers, mean_std, work, primary, device, timings, d=d)
    fail_point(d, "write")
    if not d.main:
        return timings, resumed
    t = time.perf_counter()
    names_l = ds.label_names()
    images = [getattr(s, "image", str(i)) for i, s in enumerate(samples)]
    for k in layers:
        vals, ids, maps = top.get(k, (torch.empty(0, 0), torch.empty(0, 0, dtype=torch.long), torch.empty(0, 0, 0, 0)))
        summaries[k] = write_layer(work.results, k, tallies[k].arrays(), thresholds[k], primary, categories, names_l, cfg.iou_threshold, (vals.cpu().numpy(), ids.cpu().numpy()), images, significance=sig.get(k))
        _write_more(cfg, work.results, k, tallies[k].arrays(), more, summaries[k], primary, categories, names_l)
        # The report draws unit masks from these maps, so it needs neither the model nor its weights.
        save_topmaps(work.results / layer_files(k)["topmaps"], maps.cpu().numpy(), ids.cpu().numpy(), vals.cpu().numpy(), thresholds[k])
    timings["results_s"] = time.perf_counter() - t
    return timings, resumed


def _thresholds(cfg: DissectConfig, store: FeatureStore, layers: list[str], device: torch.device, checkpoint: Callable[[], Any], timings: dict[str, float], *, d: Dist | None = None, offset: int = 0) -> tuple[dict[str, np.ndarray], dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """The forward pass (features, top-k, first quantile pass), then the remaining quantile passes.

    Over several ranks each streams its own images (the first at ``offset``); the quantile passes
    are synchronised and the top-k lists merged, so every rank ends with one process's values.
    """
    d = d or Dist()
    quantiles: dict[str, ExactQuantile] = {}
    fixed: dict[str, np.ndarray] = {}
    top: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def on_batch(_items, i0: int, feats: dict[str, torch.Tensor]) -> None:
        for name, f in feats.items():
            units = f.shape[1]
            if name not in quantiles and name not in fixed:
                tfile = cfg.thresholds.get(name) or cfg.thresholds.get("")
                if tfile:
                    fixed[name] = _load_thresholds(Path(tfile), units, name)
                else:
                    quantiles[name] = ExactQuantile(units, 1.0 - cfg.quantile, dist=d)
            if name in quantiles:
                quantiles[name].update(f)
            if name not in top:
                top[name] = (torch.empty(0, units, device=device), torch.empty(0, units, dtype=torch.long, device=device), torch.empty(0, units, *f.shape[2:], device=device))
            if cfg.top_k:
                mx = f.amax(dim=(2, 3)).float()
                idx = torch.arange(offset + i0, offset + i0 + len(f), device=device)
                vals, ids, maps = top[name]
                vals = torch.cat([vals, mx])
                ids = torch.cat([ids, idx[:, None].expand_as(mx)])
                order = torch.sort(vals, dim=0, descending=True, stable=True).indices[: cfg.top_k]
                # The top images' low-resolution maps travel with them (k x U x h x w), in the same order.
                maps = torch.cat([maps, f.float()]).gather(0, order[:, :, None, None].expand(-1, -1, *f.shape[2:]))
                top[name] = (vals.gather(0, order), ids.gather(0, order), maps)

    t = time.perf_counter()
    store.forward_pass(on_batch, checkpoint)
    fail_point(d, "features")
    if d.world > 1:
        # Ranks hold contiguous shards, so their lists in rank order merge as one process orders them.
        lists = d.gather({k: tuple(v.cpu().numpy() for v in top[k]) for k in top})
        for k in top:
            merged = merge_topk([part[k] for part in lists], cfg.top_k)
            top[k] = tuple(torch.from_numpy(np.ascontiguousarray(v)).to(device) for v in merged)
    timings["features_s"] = time.perf_counter() - t
    fail_point(d, "thresholds")
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
