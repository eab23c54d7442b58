"""Speed and memory of ``concepts report`` on the example dissection, next to ``concepts validate``.

Builds the 12-image example (``examples/``) at ``--size`` pixels, dissects a randomly initialised
torchvision ``--model`` at ``--layer`` (no download), then times whole processes, each the best
of ``--repeat`` runs, with its peak resident memory (the child's ``ru_maxrss``):

* the baseline: ``concepts validate`` of the same dataset (reads every table, image and label PNG);
* ``concepts report RUN`` (the folder form) and ``concepts report RUN --single-file``, both drawn
  from the top-k maps the run stored (no model);
* with ``--old``, ``concepts report RUN --recompute``: the model rebuilt and rerun on every top-k
  image, which is what every report did before the maps were stored.

It prints each time as a ratio to the baseline measured in the same run (other load on the
machine moves both), the output sizes, and whether the report process imported torch. Run:
``python benchmarks/report_speed.py`` (``--old`` adds the model path, ``--keep DIR`` keeps the files).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], repeat: int, before: list[Path] = ()) -> tuple[float, float]:
    """Best wall time (s) and the largest peak resident memory (MB) of ``cmd`` over ``repeat`` runs."""
    best, peak = float("inf"), 0.0
    for _ in range(repeat):
        for path in before:
            shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
        best, peak = min(best, wall), max(peak, usage.ru_maxrss / 1024)
    return best, peak


def size_of(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder)."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    """Build, dissect, time and print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--old", action="store_true", help="also time --recompute (the model path)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    concepts = [sys.executable, "-m", "concepts"]
    work = args.keep or Path(tempfile.mkdtemp(prefix="report_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ds, run = work / "example", work / "run"
        if not (ds / "index.csv").is_file():
            subprocess.run(concepts + ["build", "--from", str(ROOT / "examples/cvat_export"), "--from", str(ROOT / "examples/labelme_export"),
                                       "--concepts", str(ROOT / "examples/concepts.yaml"), "-o", str(ds), "--size", str(args.size), "--overwrite", "-q"], check=True)
        if not (run / "run.json").is_file():
            t = time.perf_counter()
            subprocess.run(concepts + ["dissect", str(ds), "-m", args.model, "-l", args.layer, "-o", str(run), "--workers", "0", "-q"], check=True)
            print(f"dissection ({args.model} {args.layer}, random weights): {time.perf_counter() - t:.2f} s (one process, for scale)")
        folder, single, old = work / "report", work / "single", work / "old"
        rows = [("concepts validate (baseline)", timed(concepts + ["validate", str(ds)], args.repeat), None)]
        rows.append(("concepts report", timed(concepts + ["report", str(run), "-o", str(folder)], args.repeat, [folder]), folder))
        rows.append(("concepts report --single-file", timed(concepts + ["report", str(run), "-o", str(single), "--single-file"], args.repeat, [single]), single))
        if args.old:
            rows.append(("concepts report --recompute (model)", timed(concepts + ["report", str(run), "-o", str(old), "--recompute"], 1, [old]), old))
        base = rows[0][1][0]
        print(f"{'command':38s} {'best s':>7s} {'x validate':>10s} {'peak MB':>8s} {'output':>9s}")
        for name, (wall, mem), out in rows:
            shown = f"{size_of(out) / 1e6:.2f} MB" if out is not None else ""
            print(f"{name:38s} {wall:7.2f} {wall / base:10.2f} {mem:8.0f} {shown:>9s}")
        probe = "import sys, concepts.cli.report, concepts.dissect.report; print('torch' in sys.modules)"
        imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
        print(f"report process imports torch: {imported}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
