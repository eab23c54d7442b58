"""``concepts report``: HTML reports, figures and tables of dissection runs, and their comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from concepts.cli import app
from concepts.errors import UsageError

EPILOG = """Examples:

  concepts report dissection/ -o report/

  concepts report resnet18_imagenet/ resnet18_places/ -o compare/ --layer layer4
"""


def _mine(run, layers: list[str] | None) -> list[str] | None:
    return [lay for lay in layers if lay in run.layers] if layers else None


@app.command(epilog=EPILOG)
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by concepts dissect.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (one sub-folder per run when several are given).")] = Path("report"),
    layer: Annotated[Optional[list[str]], typer.Option("--layer", "-l", help="Only these layers (repeatable; each run keeps those it has; default: every layer).")] = None,
    dataset: Annotated[Optional[Path], typer.Option("--dataset", help="The run's concept dataset, if it has moved since the run.")] = None,
    images: Annotated[bool, typer.Option("--images/--no-images", help="Draw each unit's top images with its mask (reruns the model on those images).")] = True,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda, for redrawing the masks.")] = "cpu",
    top: Annotated[int, typer.Option("--top", help="Concepts shown in the detectors-per-concept charts.")] = 20,
) -> None:
    """Write one offline HTML report per run and layer, with PNG and SVG figures and CSV tables."""
    from concepts.dissect.plots import load_runs
    from concepts.dissect.report import render_index, write_comparison, write_report
    from concepts.dissect.results import atomic_write, safe_name

    if top < 1:
        raise UsageError("--top must be positive")
    loaded = load_runs(runs)
    if layer:
        # One --layer list may name layers of different architectures (layer4 and features.12).
        for r in loaded:
            if not any(lay in r.layers for lay in layer):
                raise UsageError(f"none of the layers {', '.join(layer)} has results in this run; it has {', '.join(r.layers)}", path=r.path)
    pages = []
    if len(loaded) == 1:
        written = write_report(loaded[0].path, out, layers=_mine(loaded[0], layer), dataset=dataset, images=images, device=device, top_concepts=top, run=loaded[0])
        pages = [p for p in written if p.suffix == ".html"]
    else:
        links = []
        for r in loaded:
            sub = safe_name(r.name.replace("/", "_"))
            written = write_report(r.path, out / sub, layers=_mine(r, layer), dataset=dataset, images=images, device=device, top_concepts=top, run=r)
            pages += [p for p in written if p.suffix == ".html" and p.name != "index.html"]
            links.append((r.name, f"{sub}/index.html"))
        write_comparison(loaded, out, layer)
        index = out / "index.html"
        figures = [("Detectors per category", "plots/compare_categories.png"), ("Detectors across layers", "plots/compare_layers.png")]
        atomic_write(index, render_index("Dissection reports: " + ", ".join(r.name for r in loaded), links, figures))
        pages.append(index)
    for page in pages:
        typer.echo(str(page))
