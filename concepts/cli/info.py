"""``concepts info``: a summary table of a dataset."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from concepts.cli import app

EPILOG = """Examples:

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
    from concepts.info import format_summary, summarize

    summary = summarize(open_any(dataset), top=max(0, top), name=dataset)
    typer.echo(json.dumps(summary.to_dict(), indent=2) if as_json else format_summary(summary))
