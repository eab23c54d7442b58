"""Run a whole dissection: forward pass, thresholds, tallies, results, and what to skip on resume."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from concepts.hub import HubDataset, open_any
from concepts.errors import ConceptsError, DatasetFormatError, UsageError
from concepts.dissect.features import FeatureStore
from concepts.dissect.hooks import check_layers
from concepts.dissect.models import file_hash, load_model, parse_device, parse_normalize
from concepts.dissect.results import atomic_write, layer_files, write_json, write_layer
from concepts.dissect.tally import UNIONS, Tally
from concepts.dissect.thresholds import ExactQuantile

log = logging.getLogger(__name__)


@dataclass
class DissectConfig:
    """Everything a dissection run depends on (the CLI's options)."""

    dataset: str | Path  # a Broden folder, a published folder or hf://OWNER/NAME
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
    workers: int | None = None  # None: default_workers()
    device: str = "cpu"
    split: str | None = None
    limit: int | None = None
    top_k: int = 10
    cache_budget_gb: float = 8.0
    force: bool = False
    checkpoint_s: float = 60.0  # how often an unfinished run saves what it has done


def default_workers() -> int:
    """Loader processes when none are asked for: one core stays with the model (measured best on 2 cores)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _arg(value: Any) -> Any:
    """An argument as run.json keeps it: local paths absolute, so a report can run from anywhere."""
    if isinstance(value, Path) or (isinstance(value, str) and value and not value.startswith("hf://") and Path(value).exists()):
        return str(Path(value).absolute())
    return value


def _check(cfg: DissectConfig) -> None:
    if not cfg.layers:
        raise UsageError("give at least one --layer")
    if not 0 < cfg.quantile < 1:
        raise UsageError(f"--quantile {cfg.quantile}: must be between 0 and 1")
    if cfg.union not in UNIONS:
        raise UsageError(f"--union {cfg.union!r}: choose one of {', '.join(UNIONS)}")
    if cfg.workers is None:
        cfg.workers = default_workers()
    if cfg.batch_size < 1 or cfg.workers < 0 or cfg.top_k < 0 or (cfg.limit is not None and cfg.limit < 1):
        raise UsageError("--batch-size and --limit must be positive, --workers and --top-k not negative")
    parse_device(cfg.device)
    unknown = [k for k in cfg.thresholds if k and k not in cfg.layers]
    if unknown:
        raise UsageError(f"--thresholds for {', '.join(unknown)}, which is not a --layer")
    for path in cfg.thresholds.values():
        if not Path(path).is_file():
            raise UsageError("--thresholds file not found", path=path)


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
        ds = open_any(cfg.dataset)
    except OSError as e:
        raise DatasetFormatError(f"cannot read dataset: {e.strerror or e}", path=cfg.dataset) from None
    categories = list(cfg.categories) if cfg.categories else list(ds.category_names)
    bad = [c for c in categories if c not in ds.category_names]
    if bad:
        raise UsageError(f"unknown categor{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)}; the dataset has {', '.join(ds.category_names)}")
    samples = ds.select(cfg.split, cfg.limit)
    if not samples:
        raise UsageError(f"no images in split {cfg.split!r}" if cfg.split else "the dataset has no images", item=str(cfg.dataset))
    _preflight(ds, samples, categories)
    mean_std = parse_normalize(cfg.normalize)
    loaded = load_model(cfg.model, cfg.weights, pretrained=cfg.pretrained, trust_pickle=cfg.trust_pickle)
    check_layers(loaded.module, cfg.layers)
    fingerprint = ds.fingerprint()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run_path = out / "run.json"
    try:
        previous = json.loads(run_path.read_text()) if run_path.is_file() else {}
    except ValueError:
        previous = {}  # an unreadable record: recompute everything
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
    try:
        summaries = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except ValueError:
        summaries = {}
    record = {
        "args": {k: _arg(v) for k, v in asdict(cfg).items()} | {"thresholds": {k: _arg(v) for k, v in cfg.thresholds.items()}},
        "versions": _versions(),
        "images": len(samples),
        "layers": {k: v for k, v in previous.get("layers", {}).items() if k not in todo},
        "timings": {},
        "recomputed": todo,
    }
    if todo:
        # Forget the layers about to be rewritten first: an interrupt while their files are
        # replaced must not leave the old arguments beside the new files.
        write_json(run_path, record)
        key = _key({k: params[k] for k in todo})
        timings, record["resumed"] = _compute(cfg, ds, samples, categories, loaded.module, todo, mean_std, out, summaries, key)
        for layer in todo:
            record["layers"][layer] = {"key": _key(params[layer]), "params": params[layer], "files": layer_files(layer)}
        write_json(summary_path, summaries)
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = timings
    record["summary"] = {k: summaries.get(k) for k in layers}
    write_json(run_path, record)
    return record


class _Work:
    """The folder where an unfinished run keeps what it has done so far (``OUT/.partial``).

    ``state.json`` names the arguments (``key``) and the finished steps: how many rows of the
    feature cache are complete, whether the thresholds are known, how many images the tallies
    cover. A run with other arguments starts it afresh; a finished run removes it.
    """

    def __init__(self, out: Path, key: str) -> None:
        self.dir = out / ".partial"
        self.state: dict[str, Any] = {}
        path = self.dir / "state.json"
        if path.is_file():
            try:
                self.state = json.loads(path.read_text())
            except ValueError:
                self.state = {}
        if self.state.get("key") != key:
            if self.dir.exists():
                log.info("discarding the partial results of an interrupted run with other arguments")
            shutil.rmtree(self.dir, ignore_errors=True)
            self.state = {"key": key}
        self.dir.mkdir(parents=True, exist_ok=True)
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

    def remove(self) -> None:
        """Delete the folder once the results are in place."""
        shutil.rmtree(self.dir, ignore_errors=True)


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


def _compute(cfg: DissectConfig, ds: Any, samples: list[Any], categories: list[str], model: torch.nn.Module, layers: list[str], mean_std: Any, out: Path, summaries: dict[str, Any], key: str) -> tuple[dict[str, float], dict[str, Any]]:
    """The three steps for ``layers`` in shared passes over the data; return timings and what was resumed."""
    device = parse_device(cfg.device)
    timings: dict[str, float] = {}
    work = _Work(out, key)
    resumed: dict[str, Any] = {}
    store = FeatureStore(model, layers, ds, samples, categories, mean_std=mean_std, batch_size=cfg.batch_size, workers=cfg.workers, device=device, cache_dir=work.dir, budget_bytes=int(cfg.cache_budget_gb * 1e9))
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
        summaries[k] = write_layer(out, k, tallies[k].arrays(), thresholds[k], primary, categories, names_l, cfg.iou_threshold, (vals.cpu().numpy(), ids.cpu().numpy()), images)
    timings["results_s"] = time.perf_counter() - t
    work.remove()
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
