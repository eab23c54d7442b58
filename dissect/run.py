"""Run a whole dissection: forward pass, thresholds, tallies, results, and what to skip on resume."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from concepts.broden.reader import open_dataset
from concepts.errors import ConceptsError, DatasetFormatError, UsageError
from dissect.features import FeatureStore
from dissect.hooks import check_layers
from dissect.models import file_hash, load_model, parse_normalize
from dissect.results import layer_files, write_json, write_layer
from dissect.tally import UNIONS, Tally
from dissect.thresholds import ExactQuantile

log = logging.getLogger(__name__)


@dataclass
class DissectConfig:
    """Everything a dissection run depends on (the CLI's options)."""

    dataset: Path
    layers: list[str]
    out: Path
    model: str | None = None
    weights: Path | None = None
    pretrained: bool = False
    trust_pickle: bool = False
    categories: list[str] | None = None
    quantile: float = 0.005
    iou_threshold: float = 0.04
    union: str = "ndlite"
    normalize: str = "imagenet"
    thresholds: dict[str, Path] = field(default_factory=dict)  # layer ("" = every layer) -> .npy
    batch_size: int = 32
    workers: int = 2
    device: str = "cpu"
    split: str | None = None
    limit: int | None = None
    top_k: int = 10
    cache_budget_gb: float = 8.0
    force: bool = False


def _check(cfg: DissectConfig) -> None:
    if not cfg.layers:
        raise UsageError("give at least one --layer")
    if not 0 < cfg.quantile < 1:
        raise UsageError(f"--quantile {cfg.quantile}: must be between 0 and 1")
    if cfg.union not in UNIONS:
        raise UsageError(f"--union {cfg.union!r}: choose one of {', '.join(UNIONS)}")
    if cfg.batch_size < 1 or cfg.workers < 0 or cfg.top_k < 0 or (cfg.limit is not None and cfg.limit < 1):
        raise UsageError("--batch-size and --limit must be positive, --workers and --top-k not negative")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    unknown = [k for k in cfg.thresholds if k and k not in cfg.layers]
    if unknown:
        raise UsageError(f"--thresholds for {', '.join(unknown)}, which is not a --layer")


def _load_thresholds(path: Path, units: int, layer: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read thresholds: {e}", item=str(path)) from None
    arr = np.asarray(arr, np.float32).reshape(-1)
    if arr.shape != (units,):
        raise UsageError(f"has {arr.size} thresholds but layer {layer} has {units} units", item=str(path))
    return arr


def _params(cfg: DissectConfig, layer: str, model_hash: str, fingerprint: str, categories: list[str]) -> dict[str, Any]:
    tfile = cfg.thresholds.get(layer) or cfg.thresholds.get("")
    return {
        "model": cfg.model,
        "weights": model_hash,
        "layer": layer,
        "dataset": fingerprint,
        "categories": categories,
        "quantile": cfg.quantile,
        "iou_threshold": cfg.iou_threshold,
        "union": cfg.union,
        "normalize": cfg.normalize,
        "thresholds": file_hash(Path(tfile)) if tfile else None,
        "split": cfg.split,
        "limit": cfg.limit,
        "top_k": cfg.top_k,
    }


def _key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    import torchvision

    import concepts

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__, "concepts": getattr(concepts, "__version__", "")}


def _stale(previous: dict[str, Any] | None, params: dict[str, Any], out: Path, layer: str) -> str | None:
    """Why a layer must be (re)computed, or None when its finished results can be reused."""
    if not previous:
        return "no earlier run"
    old = previous.get("params", {})
    changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in params.items() if old.get(k) != v]
    if changed:
        return "changed: " + "; ".join(changed)
    missing = [f for f in layer_files(layer).values() if not (out / f).is_file()]
    return f"missing {', '.join(missing)}" if missing else None


def dissect(cfg: DissectConfig) -> dict[str, Any]:
    """Dissect ``cfg.layers`` of the model against the dataset; return the run record."""
    _check(cfg)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        ds = open_dataset(cfg.dataset)
    except OSError as e:
        raise DatasetFormatError(f"cannot read dataset: {e.strerror or e}", path=cfg.dataset) from None
    categories = list(cfg.categories) if cfg.categories else list(ds.category_names)
    bad = [c for c in categories if c not in ds.category_names]
    if bad:
        raise UsageError(f"unknown categor{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)}; the dataset has {', '.join(ds.category_names)}")
    samples = ds.select(cfg.split, cfg.limit)
    if not samples:
        raise UsageError(f"no images in split {cfg.split!r}" if cfg.split else "the dataset has no images", item=str(cfg.dataset))
    mean_std = parse_normalize(cfg.normalize)
    loaded = load_model(cfg.model, cfg.weights, pretrained=cfg.pretrained, trust_pickle=cfg.trust_pickle)
    check_layers(loaded.module, cfg.layers)
    fingerprint = ds.fingerprint()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run_path = out / "run.json"
    previous = json.loads(run_path.read_text()) if run_path.is_file() else {}
    layers = list(dict.fromkeys(cfg.layers))
    params = {layer: _params(cfg, layer, loaded.weights_hash, fingerprint, categories) for layer in layers}
    todo = []
    for layer in layers:
        why = "--force" if cfg.force else _stale(previous.get("layers", {}).get(layer), params[layer], out, layer)
        if why:
            log.info("%s: computing (%s)", layer, why)
            todo.append(layer)
        else:
            log.info("%s: finished results with identical arguments found, not recomputed", layer)
    summary_path = out / "summary.json"
    summaries = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    record = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()} | {"thresholds": {k: str(v) for k, v in cfg.thresholds.items()}},
        "versions": _versions(),
        "images": len(samples),
        "layers": {k: v for k, v in previous.get("layers", {}).items() if k not in todo},
        "timings": {},
        "recomputed": todo,
    }
    if todo:
        timings = _compute(cfg, ds, samples, categories, loaded.module, todo, mean_std, out, summaries)
        for layer in todo:
            record["layers"][layer] = {"key": _key(params[layer]), "params": params[layer], "files": layer_files(layer)}
        write_json(summary_path, summaries)
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = timings
    record["summary"] = {k: summaries.get(k) for k in layers}
    write_json(run_path, record)
    return record


def _compute(cfg: DissectConfig, ds: Any, samples: list[Any], categories: list[str], model: torch.nn.Module, layers: list[str], mean_std: Any, out: Path, summaries: dict[str, Any]) -> dict[str, float]:
    """The three steps for ``layers`` in shared passes over the data."""
    device = torch.device(cfg.device)
    timings: dict[str, float] = {}
    store = FeatureStore(model, layers, ds, samples, categories, mean_std=mean_std, batch_size=cfg.batch_size, workers=cfg.workers, device=device, cache_dir=out / f".features-{time.time_ns()}", budget_bytes=int(cfg.cache_budget_gb * 1e9))
    quantiles: dict[str, ExactQuantile] = {}
    fixed: dict[str, np.ndarray] = {}
    top: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def on_batch(items, feats) -> None:
        idx = torch.tensor([it.index for it in items], device=device)
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
            if cfg.top_k:
                mx = f.amax(dim=(2, 3)).float()
                vals, ids = top.get(name, (torch.empty(0, units, device=device), torch.empty(0, units, dtype=torch.long, device=device)))
                vals = torch.cat([vals, mx])
                ids = torch.cat([ids, idx[:, None].expand_as(mx)])
                order = torch.sort(vals, dim=0, descending=True, stable=True).indices[: cfg.top_k]
                top[name] = (vals.gather(0, order), ids.gather(0, order))

    try:
        t = time.perf_counter()
        store.forward_pass(on_batch)
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
        thresholds = fixed | {k: q.result() for k, q in quantiles.items()}
        timings["thresholds_s"] = time.perf_counter() - t
        t = time.perf_counter()
        primary = ds.primary_categories(categories)
        primary[0] = -1
        tallies = {k: Tally(store.shapes[k][0], primary, len(categories), thresholds[k], cfg.union, device) for k in layers}
        for items, feats in store.batches(labels=True, desc="tally"):
            for k in layers:
                tallies[k].update(feats[k], items)
        timings["tally_s"] = time.perf_counter() - t
    finally:
        store.close()
    t = time.perf_counter()
    names = ds.label_names()
    images = [getattr(s, "image", str(i)) for i, s in enumerate(samples)]
    for k in layers:
        vals, ids = top.get(k, (torch.empty(0, 0), torch.empty(0, 0, dtype=torch.long)))
        summaries[k] = write_layer(out, k, tallies[k].arrays(), thresholds[k], primary, categories, names, cfg.iou_threshold, (vals.cpu().numpy(), ids.cpu().numpy()), images)
    timings["results_s"] = time.perf_counter() - t
    return timings


__all__ = ["ConceptsError", "DissectConfig", "dissect"]
