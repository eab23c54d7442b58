"""``concepts publish`` and ``concepts pull``: Broden folder <-> Hugging Face dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from concepts.cli import app

PUBLISH_EPILOG = """Examples:

  concepts publish out/mine -o out/mine-hf

  concepts publish broden1_224 -o broden1_224-hf --license mit --push me/broden1_224 --private
"""

PULL_EPILOG = """Examples:

  concepts pull hf://me/broden1_224 -o broden1_224

  concepts pull out/mine-hf -o out/mine-again
"""


@app.command(epilog=PUBLISH_EPILOG)
def publish(
    dataset: Annotated[Path, typer.Argument(help="The Broden-format dataset folder (or, with --push alone, a published folder).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder to write the Hugging Face dataset to.")] = None,
    push: Annotated[Optional[str], typer.Option("--push", help="Also upload to this Hub dataset repo (OWNER/NAME); needs HF_TOKEN or `hf auth login`.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the Hub repo private.")] = False,
    shard_size: Annotated[str, typer.Option(help="Largest Parquet shard, e.g. 500MB, 64MiB.")] = "500MB",
    license_: Annotated[str, typer.Option("--license", help="License id for the card (e.g. mit, cc-by-4.0); default other: the sources' own terms, listed in LICENSE.md.")] = "other",
    name: Annotated[Optional[str], typer.Option(help="Pretty name for the card (default: the output folder name).")] = None,
    preview: Annotated[str, typer.Option("--preview", help="Pixel-level category drawn in the viewer's `preview` column: auto (the one with most labels), a category name, or none.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous output of the same kind that concepts wrote (never any other folder or file).")] = False,
) -> None:
    """Publish a concept dataset as a Hugging Face dataset (Parquet shards, tables, card)."""
    from concepts.errors import UsageError
    from concepts.hub import is_hf_folder, parse_hf_spec
    from concepts.publish import PublishOptions, parse_shard_size
    from concepts.publish import publish as run
    from concepts.publish import push as upload

    if push:
        parse_hf_spec(push)
    if output is None:
        if not (push and is_hf_folder(dataset)):
            raise UsageError("missing --output", hint="give -o HF_DIR, or a published folder with --push REPO_ID to upload it")
        typer.echo(f"pushed to {upload(dataset, push, private=private)}")
        return
    options = PublishOptions(shard_size=parse_shard_size(shard_size), license=license_, repo_id=push, push=bool(push),
                             private=private, overwrite=overwrite, pretty_name=name, preview=preview)
    summary = run(dataset, output, options)
    per_split = ", ".join(f"{k}: {v} in {summary.shards[k]} shard(s)" for k, v in summary.rows.items())
    typer.echo(f"wrote {sum(summary.rows.values())} images ({per_split}), {_size(summary.bytes)} to {summary.output}")
    if summary.url:
        typer.echo(f"pushed to {summary.url}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


@app.command(epilog=PULL_EPILOG)
def pull(
    source: Annotated[str, typer.Argument(help="hf://OWNER/NAME[@REVISION] or a published dataset folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the Broden-format dataset to.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous output of the same kind that concepts wrote (never any other folder or file).")] = False,
) -> None:
    """Restore the Broden-format folder of a published dataset, byte for byte."""
    from concepts.hub import pull as run

    out = run(source, output, overwrite=overwrite)
    typer.echo(f"wrote {out}")
