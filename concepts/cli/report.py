"""``concepts report``: HTML reports, figures and tables of dissection runs, and their comparison."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from concepts.cli import app
from concepts.errors import UsageError

EPILOG = """Examples:

\b
  concepts report dissection/ -o report/
  concepts report dissection/ -o mail/ --single-file
  concepts report resnet18_imagenet/ resnet18_places/ -o compare/
  concepts report old_run/ -o report/ --recompute --trust-model-code
"""


@app.command(epilog=EPILOG)
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by concepts dissect.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (one sub-folder per run when several are given).")] = Path("report"),
    layer: Annotated[Optional[list[str]], typer.Option("--layer", "-l", help="Only these layers (repeatable; each run keeps those it has; default: every layer).")] = None,
    dataset: Annotated[Optional[Path], typer.Option("--dataset", help="The run's concept dataset, if it has moved since the run.")] = None,
    images: Annotated[bool, typer.Option("--images/--no-images", help="Draw each unit's top images with its mask (from the maps the run stored; needs the dataset).")] = True,
    single_file: Annotated[bool, typer.Option("--single-file", help="Write one HTML file per run with every image and figure embedded (to mail or archive).")] = False,
    recompute: Annotated[bool, typer.Option("--recompute", help="For a run made before top-k maps were stored: rebuild its model and rerun it on the top images.")] = False,
    device: Annotated[str, typer.Option("--device", metavar="[cpu|cuda|cuda:N]", help="Where --recompute runs the model: cpu, cuda or cuda:N.")] = "cpu",
    top: Annotated[int, typer.Option("--top", help="Concepts shown in the detectors-per-concept charts.")] = 20,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier report at OUT (never any other folder).")] = False,
    trust_model_code: Annotated[bool, typer.Option("--trust-model-code", help="With --recompute: import the package.module:factory that run.json names (runs its code: trusted runs only).")] = False,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="With --recompute: allow the run's weights to be a whole pickled model (runs code from the file: trusted files only).")] = False,
) -> None:
    """Write offline HTML reports of runs, with PNG and SVG figures and their numbers as CSV.

    Unit images come from the maps the run stored and the dataset; no model is built. A run
    folder is data: its run.json never gives consent to run code. With --recompute, a run whose
    model is a package.module:factory needs --trust-model-code, and a pickled model
    --trust-pickle, on this command line.
    """
    from concepts.dissect.plots import load_runs
    from concepts.dissect.report import render_reports
    from concepts.listing import shorten

    if top < 1:
        raise UsageError("--top must be positive")
    if device != "cpu" or (images and recompute):
        from concepts.dissect.models import parse_device

        parse_device(device)  # before any run is read (the default needs no check, nor torch)
    loaded = load_runs(runs)
    if layer:
        # One --layer list may name layers of different architectures (layer4 and features.12).
        for r in loaded:
            if not any(lay in r.layers for lay in layer):
                raise UsageError(f"none of the layers {shorten(layer)} has results in this run; it has {shorten(r.layers)}", path=r.path)
    target = Path(os.path.abspath(out))
    # A run's own report/ sub-folder (where dissect --report writes) is allowed; anything else in a run is an input.
    inputs = [r.path for r in loaded if target != Path(os.path.abspath(r.path)) / "report"]
    if dataset is not None:
        inputs.append(dataset)
    elif images:
        recorded = [r.record.get("args", {}).get("dataset") for r in loaded]
        inputs += [Path(d) for d in recorded if d and not d.startswith("hf://") and Path(d).is_dir()]
    pages = render_reports(
        loaded, out, overwrite=overwrite, inputs=inputs, layers=layer, dataset=dataset, images=images, device=device,
        top_concepts=top, trust_model_code=trust_model_code, trust_pickle=trust_pickle, recompute=recompute, single_file=single_file,
    )
    for page in pages:
        typer.echo(str(page))
