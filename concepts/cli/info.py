"""``concepts info``: a summary table of a dataset."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from concepts.cli import app

if TYPE_CHECKING:
    from concepts.info import DatasetSummary

EPILOG = """Examples:

\b
  concepts info broden1_224/
  concepts info hf://OWNER/my-concepts --top 20 --json
"""


@app.command(epilog=EPILOG)
def info(
    dataset: Annotated[str, typer.Argument(help="Broden folder, published Hugging Face folder or hf://OWNER/NAME.")],
    top: Annotated[int, typer.Option("--top", help="How many most and least frequent concepts to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Print images per split, labels per category and the most and least frequent concepts."""
    from concepts.hub import open_any
    from concepts.info import summarize

    summary = summarize(open_any(dataset), top=max(0, top), name=dataset)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        print_summary(summary)


def print_summary(summary: DatasetSummary) -> None:
    """The summary as a header and rich tables (categories, most and least frequent concepts)."""
    from concepts.cli.tables import print_lines, print_table

    print_lines(summary.header_lines())
    print_table(["category", "labels", "images", "frequency", "kind"],
                [(c.name, c.labels, c.images, c.frequency, c.kind) for c in summary.categories],
                numeric=[False, True, True, True, False])
    for which, rows in (("most", summary.most_frequent), ("least", summary.least_frequent)):
        if rows:
            print_table(["number", "name", "category", "images", "coverage"],
                        [(r["number"], r["name"], r["category"], r["frequency"], f"{r['coverage']:.3f}") for r in rows],
                        title=summary.table_title(which), numeric=[True, False, False, True, True])
