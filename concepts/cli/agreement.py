"""``concepts agreement``: compare two annotations of the same images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from concepts import builders
from concepts.cli import app

EPILOG = """Examples:

\b
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
    from concepts.errors import ConceptsError

    extracted: dict[Path, Path] = {}  # temporary folder -> the archive the user named
    with contextlib.ExitStack() as stack:
        opened = []
        for path in (export_a, export_b):
            if path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
                from concepts.archive import extract_archive

                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="concepts-agree-")))
                extracted[scratch] = path
                path = extract_archive(path, scratch)
            try:
                cls = builders.get(format) if format else builders.detect(path)
                opened.append(cls(path, {"concepts": concepts_file}))
            except ConceptsError as e:
                raise _renamed(e, extracted) from None
        try:
            report = compare(opened[0], opened[1], categories=category)
        except ConceptsError as e:
            raise _renamed(e, extracted) from None
        for u in report.unreadable_a + report.unreadable_b:
            u.where = _shown(u.where, extracted)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    from concepts.cli.tables import print_lines, print_table
    from concepts.listing import shorten

    print_table(["category", "concept", "IoU", "pixels A", "pixels B", "segs A", "segs B"],
                [(c.category, c.name, f"{c.iou:.3f}", c.pixels_a, c.pixels_b, c.segments_a, c.segments_b) for c in report.concepts],
                numeric=[False, False, True, True, True, True, True])
    lines = [f"named differently: {cat} '{a}' (A) vs '{b}' (B): {n} pixels" for cat, a, b, n in report.confusions[:10]]
    worst = sorted(report.images, key=lambda i: -i.difference)[:5]
    lines += [f"segment counts differ by {image.difference} in {image.key}" for image in worst if image.difference]
    # One line per side, however many images only one annotator labelled.
    for side, keys in (("A", report.only_a), ("B", report.only_b)):
        if keys:
            lines.append(f"only in {side}: {shorten(keys)}")
    for side, items in (("A", report.unreadable_a), ("B", report.unreadable_b)):
        lines += [f"unreadable in {side}, left out: {u}" for u in items[:10]]
        if len(items) > 10:
            lines.append(f"unreadable in {side}: ... and {len(items) - 10} more (--json lists all)")
    skipped = ""
    if report.unreadable_a or report.unreadable_b:
        skipped = f" ({len(report.unreadable_a)} unreadable item(s) in A and {len(report.unreadable_b)} in B left out)"
    lines.append(
        f"overall: {len(report.images)} images{skipped}, pixel IoU {report.mean_iou:.3f}, naming agreement "
        f"{report.naming_agreement:.3f} ({report.name_disagreement} of {report.both_labelled} pixels named differently), "
        f"mean segment-count difference {report.mean_segment_difference:.2f} per image"
    )
    print_lines(lines)


def _shown(where: str, extracted: dict[Path, Path]) -> str:
    """A path inside a temporary extraction folder as the user knows it: ARCHIVE/member (the folder is gone after)."""
    for scratch, archive in extracted.items():
        for base in (str(scratch), os.path.realpath(scratch)):
            if where == base or where.startswith(base + os.sep):
                return f"{archive}/{where[len(base) + 1:]}" if where != base else str(archive)
    return where


def _renamed(err: Exception, extracted: dict[Path, Path]) -> Exception:
    """The same error, its path (and any mention in its text) naming the archive instead of the temporary folder."""
    from concepts.errors import ConceptsError

    if not isinstance(err, ConceptsError) or not extracted:
        return err
    if err.path is not None:
        err.path = Path(_shown(str(err.path), extracted))
    for scratch, archive in extracted.items():
        for base in {str(scratch), os.path.realpath(scratch)}:
            err.message = err.message.replace(base, str(archive))
    err.args = (err.format(),)
    return err
