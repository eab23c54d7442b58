"""``concepts validate``: check a dataset against the format and report its weak spots."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from concepts.cli import app

EPILOG = """Examples:

\b
  concepts validate broden1_224/
  concepts validate out/example --min-images 5 --json > report.json
  concepts validate hf://OWNER/my-concepts

Exit status: 0 valid (warnings allowed), 1 invalid, 2 usage error.
"""


@app.command(epilog=EPILOG)
def validate(
    dataset: Annotated[str, typer.Argument(help="Broden folder, published Hugging Face folder or hf://OWNER/NAME.")],
    min_images: Annotated[int, typer.Option("--min-images", help="Warn about concepts in fewer images than this.")] = 10,
    min_area: Annotated[float, typer.Option("--min-area", help="Warn about concepts whose total area is below this many images' worth.")] = 0.01,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Decoding threads (default: twice the cores, at most 8).")] = None,
    max_per_rule: Annotated[int, typer.Option("--max-per-rule", help="Findings printed per rule (--json lists all).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors (exit 1).")] = False,
) -> None:
    """Check every file of a concept dataset; report every problem, then the concept set's weak spots."""
    from concepts.errors import UsageError
    from concepts.validate import format_report
    from concepts.validate import validate as run

    if max_per_rule < 0:
        raise UsageError(f"--max-per-rule {max_per_rule}: expected 0 or more findings per rule")

    report = run(dataset, min_images=min_images, min_area=min_area, workers=workers)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        format_report(report, max_per_rule=max_per_rule, echo=typer.echo)
    if not report.ok or (strict and report.warnings):
        raise typer.Exit(1)
