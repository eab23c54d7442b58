"""``concepts agreement``: compare two annotations of the same images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from concepts import builders
from concepts.cli import app

EPILOG = """Example:

  concepts agreement annotator_a/ annotator_b/ --concepts concepts.yaml

  concepts agreement a.zip b.zip --format cvat --json > agreement.json
"""


@app.command(epilog=EPILOG)
def agreement(
    export_a: Annotated[Path, typer.Argument(help="First annotation export (folder or archive).")],
    export_b: Annotated[Path, typer.Argument(help="Second annotation export of the same images.")],
    format: Annotated[Optional[str], typer.Option("--format", help="Source format of both (default: detected).")] = None,
    concepts_file: Annotated[Optional[Path], typer.Option("--concepts", help="Concept mapping applied to both.")] = None,
    category: Annotated[Optional[list[str]], typer.Option("--category", help="Only these categories (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Report segmentation quality, naming disagreement and segment counts between two annotations."""
    import contextlib
    import tempfile

    from concepts.agreement import compare
    from concepts.cli.build import ARCHIVE_SUFFIXES

    with contextlib.ExitStack() as stack:
        opened = []
        for path in (export_a, export_b):
            if path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
                from concepts.archive import extract_archive

                path = extract_archive(path, Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="concepts-agree-"))))
            cls = builders.get(format) if format else builders.detect(path)
            opened.append(cls(path, {"concepts": concepts_file}))
        report = compare(opened[0], opened[1], categories=category)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(f"{'category':<12}{'concept':<24}{'IoU':>7}{'pixels A':>11}{'pixels B':>11}{'segs A':>8}{'segs B':>8}")
    for c in report.concepts:
        typer.echo(f"{c.category:<12}{c.name[:23]:<24}{c.iou:>7.3f}{c.pixels_a:>11}{c.pixels_b:>11}{c.segments_a:>8}{c.segments_b:>8}")
    for cat, a, b, n in report.confusions[:10]:
        typer.echo(f"named differently: {cat} '{a}' (A) vs '{b}' (B): {n} pixels")
    worst = sorted(report.images, key=lambda i: -i.difference)[:5]
    for image in worst:
        if image.difference:
            typer.echo(f"segment counts differ by {image.difference} in {image.key}")
    for key in report.only_a:
        typer.echo(f"only in A: {key}")
    for key in report.only_b:
        typer.echo(f"only in B: {key}")
    typer.echo(
        f"overall: {len(report.images)} images, pixel IoU {report.mean_iou:.3f}, naming agreement "
        f"{report.naming_agreement:.3f} ({report.name_disagreement} of {report.both_labelled} pixels named differently), "
        f"mean segment-count difference {report.mean_segment_difference:.2f} per image"
    )
