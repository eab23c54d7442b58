"""Join records from one or more sources into one concept dataset (FORMATS.md A.8-A.12).

Two passes over the items, both in worker processes:

1. *stage*: load the record, decode and resize the image to JPEG, name every pixel's colour, count
   each source label's frequency and coverage on the unscaled annotations (the inputs of the
   name claiming, A.8), and keep each label layer resized (nearest) to the segmentation size as
   source ids, appended to the worker's spool file (one scratch file per process, not one per
   image: creating files is costly), with the source labels present in those resized layers;
2. *encode*: once every statistic is known and labels are numbered, map the staged layers to
   unified numbers and write the RG-encoded PNGs.

Between the passes the parent resolves names and counts each unified label on the images: from
every item's set of source labels present in its written layers, an image counts once per label
and category however many merged source labels it holds (see :mod:`concepts.vocabulary`). The
filters use these counts and ``label.csv`` reports them, so they match what the written label
maps hold, and ``concepts validate`` can recount them exactly.

Everything is written into a temporary folder beside the target and renamed into place only when
complete; results are gathered in item order, so the output does not depend on the worker count.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import io
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
import unicodedata
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from concepts.builders.base import Builder
from concepts import progress
from concepts.broden import format as fmt
from concepts.broden.writer import IndexRow, write_readme, write_syns, write_tables
from concepts.colors import COLOR_CATEGORY, COLOR_LABEL_NAMES, COLOR_SOURCE, color_ids
from concepts.errors import ConceptsError, SourceError, SourceItemError, UsageError, WorkerDiedError
from concepts.labelcount import forget as forget_counts
from concepts.labelcount import label_counts
from concepts.listing import shorten
from concepts.limits import apply_to_pillow  # noqa: F401  (Pillow refuses images above the pixel limit)
from concepts.staging import guard_target, staged_output, write_failed
from concepts.vocabulary import Numbering, Vocabulary

log = logging.getLogger(__name__)


Size = tuple[int, int]
#: Encoder settings of the label PNGs: label maps are long runs, which zlib's run-length strategy
#: packs faster and smaller than its default one (measured on ADE20K-like maps).
PNG_OPTIONS: dict[str, int] = {"compress_level": 1, "compress_type": zlib.Z_RLE}
#: With one worker, builds of at least this many items still run in one worker process, whose
#: allocator is tuned for the per-image churn (:func:`_tune_allocator`); smaller ones run here.
POOL_MIN_ITEMS = 32


@dataclass
class BuildOptions:
    """Settings of a build; the Broden recipe is ``size=(224, 224)``, 10 and 0.5, colour on."""

    size: Size | None = None
    seg_size: Size | None = None
    min_frequency: int = 0
    min_coverage: float = 0.0
    color: bool = True
    splits: list[tuple[str, float]] = field(default_factory=lambda: [("train", 0.7), ("val", 0.3)])
    synonyms: bool = True
    ascii_names: bool = False
    workers: int | None = None
    strict: bool = False
    overwrite: bool = False
    jpeg_quality: int = 90

    def settings(self) -> dict[str, Any]:
        """The settings recorded in README.txt."""
        return {
            "size": self.size,
            "segmentation_size": self.seg_size,
            "crop": False,
            "splits": dict(self.splits),
            "min_frequency": self.min_frequency,
            "min_coverage": self.min_coverage,
            "color": self.color,
            "synonyms": self.synonyms,
            "jpeg_quality": self.jpeg_quality,
        }


@dataclass
class BuildSummary:
    """What a build did: images per source, what was skipped and why, labels and categories."""

    output: Path
    images: dict[str, int]
    skipped: Counter
    skipped_items: list[tuple[str, str, str]]
    annotations_skipped: Counter
    labels: int
    dropped_labels: int
    categories: list[str]
    seconds: float


@dataclass
class _Staged:
    """Pass-1 result of one item (sent back from a worker)."""

    task: int
    key: str = ""
    ih: int = 0
    iw: int = 0
    sh: int = 0
    sw: int = 0
    layers: list[tuple[str, int]] = field(default_factory=list)
    image_level: dict[str, list[int]] = field(default_factory=dict)
    stats: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    names: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    # Source labels present in the resized (written) layers and the fraction of them they cover.
    present: dict[tuple[str, int], float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    error: tuple[str, str, str] | None = None  # (path, reason, message)
    spool: tuple[str, int, str] | None = None  # (spool file name, byte offset, dtype) of the layers


# -- worker state -------------------------------------------------------------------------------
_W: dict[str, Any] = {}


def _init_worker(sources: list[Builder], work: Path, options: BuildOptions, luts: dict | None) -> None:
    _close_spools()
    _W.update(sources=sources, work=work, options=options, luts=luts, spool=None, readers={})


def _close_spools() -> None:
    writer = _W.pop("spool", None)
    if writer is not None:
        os.close(writer[1])
    for f in _W.pop("readers", {}).values():
        f.close()


def _spool_write(stack: np.ndarray) -> tuple[str, int, str]:
    """Append staged layers to this process's spool file; return where they are."""
    if _W.get("spool") is None:
        name = f"stage-{os.getpid()}.bin"
        fd = os.open(_W["work"] / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _W["spool"] = (name, fd)
    name, fd = _W["spool"]
    offset = os.lseek(fd, 0, os.SEEK_END)
    # Unbuffered writes: a pool worker may be terminated without a chance to flush.
    view = memoryview(np.ascontiguousarray(stack)).cast("B")
    while view:
        view = view[os.write(fd, view):]
    return name, offset, stack.dtype.str


def _spool_read(where: tuple[str, int, str], shape: tuple[int, ...]) -> np.ndarray:
    name, offset, dtype = where
    readers = _W["readers"]
    if name not in readers:
        readers[name] = (_W["work"] / name).open("rb")
    f = readers[name]
    f.seek(offset)
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    data = f.read(size)
    if len(data) != size:
        raise OSError(f"staged layers truncated in {_W['work'] / name}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _tune_allocator() -> None:
    """Let this (worker) process keep the memory it frees instead of returning it after each image.

    Every image allocates and frees several megabytes (decoded pixels, label maps, index arrays).
    By default glibc hands such blocks back to the kernel and faults them in again for the next
    image, which measured at 10-20% of a one-worker build. Only pool workers call this: it changes
    the whole process's allocator, which is ours to change there and not in a caller's process.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value on 64-bit
    mallopt(m_trim_threshold, 256 << 20)


def _die_with_parent(parent: int) -> None:
    """Have Linux kill this worker if the build process dies (SIGKILL), so no worker is orphaned."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _init_pool_worker(*args: Any) -> None:
    # Ctrl-C and SIGTERM are the parent's to handle, also when they reach the whole process group
    # (a terminal, `timeout`, systemd): it stops the pool and removes the partial output. The pool
    # ends its workers with SIGKILL (_KillableWorker), which needs no handler in the worker, so a
    # worker never dies half-way through a queue operation because of a signal meant for the build.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    killable = type(multiprocessing.current_process()).__name__ == "_KillableWorker"
    signal.signal(signal.SIGTERM, signal.SIG_IGN if killable else signal.SIG_DFL)
    # Both were blocked since the fork (see _run): anything that arrived meanwhile is now dropped.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent(_W.get("parent", os.getppid()))
    _tune_allocator()
    # The objects inherited from the parent live as long as the worker: keep the cyclic
    # collector from rescanning them while each image's records come and go.
    gc.freeze()
    _init_worker(*args)
    # Workers must not fight over the two cores with BLAS or torch threads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _open_image(data: Any) -> Image.Image:
    if isinstance(data, Image.Image):
        return data
    if isinstance(data, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(data))
    if isinstance(data, bytes):
        return Image.open(io.BytesIO(data))
    return Image.open(data)


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode; alpha is dropped (not composited), 16-bit is scaled down."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def _nearest_index(src: int, dst: int) -> np.ndarray:
    # Pixel-centre sampling: the nearest source pixel of each destination pixel centre.
    return np.minimum(((np.arange(dst) + 0.5) * (src / dst)).astype(np.intp), src - 1)


def _resize_nearest(layer: np.ndarray, size: Size) -> np.ndarray:
    h, w = layer.shape
    if (h, w) == size:
        return layer
    # Two 1-D takes: several times faster than one np.ix_ fancy index.
    return layer.take(_nearest_index(h, size[0]), axis=0).take(_nearest_index(w, size[1]), axis=1)


def _stage(task: tuple[int, int, Any]) -> _Staged:
    # Builders and this pass share each layer's pixel counts (concepts.labelcount); they are
    # remembered per layer object, so only within one item.
    forget_counts()
    try:
        return _stage_item(task)
    finally:
        forget_counts()


def _stage_item(task: tuple[int, int, Any]) -> _Staged:
    index, source_index, item = task
    source: Builder = _W["sources"][source_index]
    options: BuildOptions = _W["options"]
    out = _Staged(task=index)
    try:
        record = source.load(item)
        out.key = record.key
        out.names = dict(record.names)
        out.skipped = dict(record.skipped)
        supply = source.supply
        pixel = {c: v for c, v in record.pixel.items() if v and (supply is None or c in supply)}
        image_level = {c: v for c, v in record.image_level.items() if v and (supply is None or c in supply)}
        try:
            im = _open_image(record.image)
            im.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise SourceItemError(f"cannot decode image: {e}", reason="unreadable image", path=str(record.image)[:200]) from None
        ref = next((np.shape(layers[0]) for layers in pixel.values()), None)
        transposed = False
        if ref is not None and (im.height, im.width) != ref and (im.width, im.height) == ref:
            transposed = True
            # Annotated on the EXIF-rotated frame while pixels are stored unrotated.
            im = ImageOps.exif_transpose(im)
            log.info("%s: applied EXIF orientation to match the annotation size", record.key)
        rgb_im = _to_rgb(im)
        h, w = rgb_im.height, rgb_im.width
        ih, iw = options.size or (h, w)
        if options.seg_size:
            sh, sw = options.seg_size
        elif options.size:
            sh, sw = max(ih // 2, 1), max(iw // 2, 1)
        else:
            sh, sw = ih, iw
        out.ih, out.iw, out.sh, out.sw = ih, iw, sh, sw
        if options.color and (supply is None or COLOR_CATEGORY in supply):
            pixel = {COLOR_CATEGORY: [color_ids(rgb_im)], **pixel}
            out.names.update(COLOR_LABEL_NAMES)
        jpeg = _W["work"] / f"{index}.jpg"
        if (ih, iw) == (h, w) and rgb_im is im and not transposed and isinstance(record.image, Path) and _is_jpeg(record.image):
            shutil.copyfile(record.image, jpeg)  # already what we would write: avoid a lossy re-encode
        else:
            small = rgb_im if (ih, iw) == (h, w) else rgb_im.resize((iw, ih), Image.BILINEAR, reducing_gap=3.0)
            small.save(jpeg, "JPEG", quality=options.jpeg_quality)
        staged_layers = []
        for category, layers in pixel.items():
            seen: dict[int, float] = {}
            for layer in layers:
                layer = np.asarray(layer)
                if layer.ndim != 2:
                    raise SourceItemError(f"{category} layer has shape {layer.shape}, expected 2-D", reason="bad annotation")
                if layer.dtype.kind not in "ui" or (layer.dtype.kind == "i" and layer.min(initial=0) < 0):
                    raise SourceItemError(f"{category} layer must hold non-negative integer ids", reason="bad annotation")
                ids, counts = label_counts(layer)
                area = float(layer.size)
                for i, c in zip(ids.tolist(), counts.tolist()):
                    seen[i] = seen.get(i, 0.0) + c / area
                small = _resize_nearest(layer, (sh, sw))
                # Unresized, `small` is `layer` and its counts are remembered: counting is free.
                ids, counts = label_counts(small)
                for i, c in zip(ids.tolist(), counts.tolist()):
                    out.present[(category, i)] = out.present.get((category, i), 0.0) + c / float(sh * sw)
                staged_layers.append(small)
                out.layers.append((category, 1))
            for i, cov in seen.items():
                if (category, i) not in out.names:
                    raise SourceItemError(f"{category} label id {i} has no name", reason="unknown label id")
                out.stats[(category, i)] = (1, cov)
        for category, ids in image_level.items():
            unique = list(dict.fromkeys(int(i) for i in ids if int(i) > 0))
            for i in unique:
                if (category, i) not in out.names:
                    raise SourceItemError(f"{category} label id {i} has no name", reason="unknown label id")
                out.stats[(category, i)] = (1, 1.0)
            if unique:
                out.image_level[category] = unique
        if staged_layers:
            top = max(int(layer.max(initial=0)) for layer in staged_layers)
            dtype = np.uint8 if top <= 0xFF else np.uint16 if top <= 0xFFFF else np.int64
            out.spool = _spool_write(np.stack([layer.astype(dtype, copy=False) for layer in staged_layers]))
        out.names = {k: v for k, v in out.names.items() if k in out.stats}
    except SourceItemError as e:
        out.error = (str(e.path or item), e.reason, e.message)
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and write_failed(e, _W["work"]):
            raise  # a full or read-only output location is the build's failure, not the item's
        # Corrupt source files surface as decoder errors; they skip the item like any bad input.
        out.error = (str(item), "unreadable", f"{type(e).__name__}: {e}")
    return out


def _is_jpeg(path: Path) -> bool:
    return path.suffix.lower() in (".jpg", ".jpeg")


def _encode(task: tuple[int, str, str, list[tuple[str, int]], tuple[str, int, str] | None, Size]) -> dict[str, list[str]]:
    """Pass 2: map staged source ids to unified numbers and write the label PNGs."""
    _, source_key, stem, layers, spool, (sh, sw) = task
    work: Path = _W["work"]
    luts: dict[tuple[str, str], np.ndarray] = _W["luts"]
    if not layers or spool is None:
        return {}
    stack = _spool_read(spool, (len(layers), sh, sw))
    cells: dict[str, list[np.ndarray]] = {}
    for (category, _), layer in zip(layers, stack):
        lut = luts.get((source_key if category != COLOR_CATEGORY else COLOR_SOURCE, category))
        if lut is None:
            continue
        # The table holds each number RG-encoded as a little-endian RGBX pixel; ids past its end
        # (labels never numbered) clip to its last entry, which is 0.
        mapped = lut.take(layer, mode="clip")
        if mapped.any():
            cells.setdefault(category, []).append(mapped)
    out: dict[str, list[str]] = {}
    folder = work.parent / fmt.IMAGES_DIR / source_key
    for category, maps in cells.items():
        names = []
        for n, mapped in enumerate(maps, start=1):
            name = fmt.segmentation_name(stem, category, n, len(maps))
            Image.frombytes("RGB", (sw, sh), mapped, "raw", "RGBX").save(folder / name, "PNG", **PNG_OPTIONS)
            names.append(f"{source_key}/{name}")
        out[category] = names
    return out


# -- the driver ---------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_stem(key: str) -> str:
    """ASCII file stem from a record key: folders joined by ``__``, unsafe characters to ``_``."""
    text = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode("ascii")
    text = text.replace("\\", "/").strip("/")
    stem, _ = os.path.splitext(text) if re.search(r"\.(jpe?g|png|bmp|tiff?|webp)$", text, re.I) else (text, "")
    parts = [_UNSAFE.sub("_", p).strip("._") for p in stem.split("/") if p not in ("", ".", "..")]
    return "__".join(p for p in parts if p) or "image"


def _unique_keys(sources: Sequence[Builder]) -> list[str]:
    seen: Counter = Counter()
    keys = []
    for source in sources:
        base = output_stem(source.key) or source.NAME
        seen[base] += 1
        keys.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return keys


if hasattr(multiprocessing.context, "ForkContext"):

    class _KillableWorker(multiprocessing.context.ForkProcess):
        """A pool worker that the pool ends with SIGKILL (``terminate``), as it ignores SIGTERM."""

        def terminate(self) -> None:
            self.kill()

    class _WorkerContext(multiprocessing.context.ForkContext):
        Process = _KillableWorker


def _executor(workers: int, sources: list[Builder], work: Path, options: BuildOptions, luts: dict | None) -> ProcessPoolExecutor:
    # A process pool that notices a dead worker (the out-of-memory killer, a crash) and fails, where
    # multiprocessing.Pool would replace it silently and wait forever for its lost task.
    # fork, as torch DataLoader does on Linux: workers inherit the builders without re-importing __main__.
    if "fork" in multiprocessing.get_all_start_methods() and hasattr(multiprocessing.context, "ForkContext"):
        ctx = _WorkerContext()
    else:
        ctx = multiprocessing.get_context("spawn")
    _W["parent"] = os.getpid()
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker, initargs=(sources, work, options, luts))


def _kill_workers(executor: ProcessPoolExecutor) -> None:
    """End every worker now (an interrupt or a failure): they hold nothing that needs a clean exit."""
    for proc in list((getattr(executor, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            proc.kill()


def _run(fn, tasks: list, workers: int, sources, work, options, luts, desc: str, unit: str) -> list:
    if len(tasks) <= 1 or (workers <= 1 and len(tasks) < POOL_MIN_ITEMS):
        _init_worker(sources, work, options, luts)
        return list(progress.progress(map(fn, tasks), desc=desc, total=len(tasks), unit=unit))
    workers = max(1, workers)
    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    executor = _executor(workers, sources, work, options, luts)
    try:
        # The workers are forked on the first submission: they start with SIGINT and SIGTERM
        # blocked, so a signal never finds a new worker still running the parent's handlers.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            results = executor.map(fn, tasks, chunksize=chunk)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        done = list(progress.progress(results, desc=desc, total=len(tasks), unit=unit))
    except BrokenProcessPool:
        _kill_workers(executor)
        executor.shutdown(wait=True, cancel_futures=True)
        raise WorkerDiedError(
            "a build worker process ended without finishing its work (killed or crashed); nothing was written",
            hint="the system may have run out of memory: try fewer --workers",
        ) from None
    except BaseException:
        _kill_workers(executor)
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
    return done


def build_dataset(sources: Sequence[Builder], out: str | Path, options: BuildOptions | None = None) -> BuildSummary:
    """Build one concept dataset in ``out`` from the records of ``sources``."""
    options = options or BuildOptions()
    started = time.perf_counter()
    out = Path(out).absolute()
    if not sources:
        raise UsageError("no sources given")
    if options.color:
        # A user category named like the computed colour one would erase it (format.py, "Names").
        for source in sources:
            for name, (path, where, error) in source.declared_categories().items():
                fmt.check_category_name(name, path=path, item=where, error=error, color_computed=True)
    inputs = [Path(s.root) for s in sources]
    inputs += [Path(s.options["concepts"]) for s in sources if isinstance(getattr(s, "options", None), dict) and s.options.get("concepts")]
    guard_target(out, kind="dataset", overwrite=options.overwrite, inputs=inputs)
    workers = options.workers or os.cpu_count() or 1
    keys = _unique_keys(sources)
    for source, key in zip(sources, keys):
        source.key = key
    sources = list(sources)

    with staged_output(out, kind="dataset", overwrite=options.overwrite, inputs=inputs) as tmp, _spools_closed():
        work = tmp / ".work"
        work.mkdir()
        tasks = []
        for si, source in enumerate(sources):
            for item in source.items():
                tasks.append((len(tasks), si, item))
        log.info("building from %d items in %d source(s) with %d worker(s)", len(tasks), len(sources), workers)
        staged: list[_Staged] = _run(_stage, tasks, workers, sources, work, options, None, "staging", "img")

        skipped: Counter = Counter()
        for source in sources:
            skipped.update(source.summary())  # images left out while listing (Cityscapes' test split)
        skipped_items = []
        annotations_skipped: Counter = Counter()
        vocab = Vocabulary(synonyms=options.synonyms, ascii_only=options.ascii_names)
        kept: list[_Staged] = []
        for st in staged:
            source = sources[tasks[st.task][1]]
            if st.error:
                path, reason, message = st.error
                if options.strict:
                    raise SourceItemError(message, reason=reason, path=path, hint="drop --strict to skip such items")
                log.warning("%s: %s (skipped)", path, message)
                skipped[reason] += 1
                skipped_items.append(st.error)
                continue
            annotations_skipped.update(st.skipped)
            if not st.layers and not st.image_level:
                skipped["no data"] += 1
                continue
            for (category, ident), (freq, cov) in st.stats.items():
                vocab.add(_triple(source.key, category, ident), st.names[(category, ident)], freq, cov)
            vocab.add_image([(_triple(source.key, c, i), cov) for (c, i), cov in st.present.items()],
                            [_triple(source.key, c, i) for c, ids in st.image_level.items() for i in ids])
            # The vocabulary holds what it needs; only the layers' whereabouts are kept.
            st.stats, st.names, st.present = {}, {}, {}
            kept.append(st)
        if not kept:
            raise _nothing_built(len(tasks), skipped, skipped_items)
        numbering = vocab.resolve(min_frequency=options.min_frequency, min_coverage=options.min_coverage)
        if not numbering.labels:
            missing = skipped.get(MISSING_IMAGE, 0)
            if missing and 2 * missing >= len(tasks):
                raise _nothing_built(len(tasks), skipped, skipped_items)
            raise UsageError("no label survived; nothing to write", hint="check the sources and the --min-frequency/--min-coverage filters")
        luts = _lookup_tables(numbering)

        stems: dict[int, str] = {}
        used: set[tuple[str, str]] = set()
        for st in kept:
            source_key = sources[tasks[st.task][1]].key
            stem = output_stem(st.key)
            if (source_key, stem.lower()) in used:
                stem = f"{stem}-{hashlib.md5(st.key.encode('utf-8')).hexdigest()[:8]}"
            used.add((source_key, stem.lower()))
            stems[st.task] = stem
        for source_key in dict.fromkeys(sources[tasks[st.task][1]].key for st in kept):
            (tmp / fmt.IMAGES_DIR / source_key).mkdir(parents=True, exist_ok=True)
        encode_tasks = [(st.task, sources[tasks[st.task][1]].key, stems[st.task], st.layers, st.spool, (st.sh, st.sw)) for st in kept]
        cells_list = _run(_encode, encode_tasks, workers, sources, work, options, _rg_tables(luts), "encoding", "img")
        _close_spools()

        rows = []
        per_source: Counter = Counter()
        for st, (_, source_key, stem, *_), cells in zip(kept, encode_tasks, cells_list):
            image = f"{source_key}/{stem}.jpg"
            (work / f"{st.task}.jpg").rename(tmp / fmt.IMAGES_DIR / image)
            text = {c: ";".join(paths) for c, paths in cells.items()}
            for category, ids in st.image_level.items():
                numbers = list(dict.fromkeys(n for n in (luts[(source_key, category)][i] for i in ids) if n))
                if numbers:
                    text[category] = ";".join(str(n) for n in numbers)
            rows.append(IndexRow(image, fmt.assign_split(image, options.splits), st.ih, st.iw, st.sh, st.sw, text))
            per_source[source_key] += 1
        rows.sort(key=lambda r: (fmt.split_hash(r.image), r.image))
        shutil.rmtree(work)
        categories = write_tables(tmp, numbering, rows)
        write_syns(tmp, numbering)
        write_readme(tmp, out.name, {s.key: per_source[s.key] for s in sources}, options.settings())
    summary = BuildSummary(
        output=out,
        images=dict(per_source),
        skipped=skipped,
        skipped_items=skipped_items,
        annotations_skipped=annotations_skipped,
        labels=len(numbering.labels),
        dropped_labels=numbering.dropped,
        categories=categories,
        seconds=time.perf_counter() - started,
    )
    log.info("wrote %d images, %d labels in %.1f s to %s", len(rows), summary.labels, summary.seconds, out)
    return summary


def _triple(source_key: str, category: str, ident: int) -> tuple[str, str, int]:
    """The source label of an id: colour ids belong to the one shared colour source."""
    return (COLOR_SOURCE if category == COLOR_CATEGORY else source_key, category, ident)


#: The reason builders give when an item's image file is not where its annotation says.
MISSING_IMAGE = "missing image"


def _nothing_built(items: int, skipped: Counter, skipped_items: list[tuple[str, str, str]]) -> ConceptsError:
    """The error of a build left with nothing to write, saying why: missing images first, then the other skips."""
    missing = skipped.get(MISSING_IMAGE, 0)
    if missing:
        # Builders name the path they looked for; its folders say where images were expected.
        folders = Counter(str(Path(path).parent) for path, reason, _ in skipped_items if reason == MISSING_IMAGE)
        where = shorten(f"{folder} ({n})" if len(folders) > 1 else folder for folder, n in folders.most_common())
        example = next(path for path, reason, _ in skipped_items if reason == MISSING_IMAGE)
        others = {r: n for r, n in skipped.items() if r != MISSING_IMAGE}
        rest = f"; {_reasons(others)}" if others else ""
        return SourceError(f"{missing} of {items} item(s) were skipped because their image is missing{rest}; "
                           f"images were looked for in {where} (e.g. {example}); nothing to write",
                           hint="put the images where the annotations name them, or build from the folder that holds them")
    if skipped:
        return UsageError(f"no label survived: all {items} item(s) were skipped ({_reasons(skipped)}); nothing to write",
                          hint="the warnings above name each skipped item")
    return UsageError("no label survived: the sources hold no item with labels; nothing to write",
                      hint="check the sources")


def _reasons(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@contextlib.contextmanager
def _spools_closed() -> Iterator[None]:
    """Close this process's spool files however the build ends (before its folder is removed)."""
    try:
        yield
    finally:
        _close_spools()


def _lookup_tables(numbering: Numbering) -> dict[tuple[str, str], np.ndarray]:
    """Per (source, category), an array mapping source id to unified number."""
    top: dict[tuple[str, str], int] = {}
    for (source, category, ident) in numbering.mapping:
        top[(source, category)] = max(top.get((source, category), 0), ident)
    luts = {key: np.zeros(n + 2, dtype=np.int32) for key, n in top.items()}
    for (source, category, ident), number in numbering.mapping.items():
        luts[(source, category)][ident] = number
    return luts


def _rg_tables(luts: dict[tuple[str, str], np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
    """The lookup tables with each number stored as its RG-encoded pixel (little-endian RGBX)."""
    out = {}
    for key, lut in luts.items():
        if lut.size and int(lut.max()) > fmt.MAX_RG:
            raise UsageError(f"{int(lut.max())} labels: the RG encoding holds at most {fmt.MAX_RG}")
        # R = number & 0xFF, G = number >> 8, B = 0: exactly the number's low 16 bits.
        out[key] = lut.astype("<u4")
    return out


__all__ = ["BuildOptions", "BuildSummary", "ConceptsError", "build_dataset", "output_stem"]
