"""``concepts build``: join one or more sources into one concept dataset."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from concepts import builders
from concepts.broden.format import parse_splits
from concepts.cli import app
from concepts.cli.options import parse_size
from concepts.errors import UsageError

RECIPES = {
    # FORMATS.md A.12: the published Broden build.
    "broden": {"min_frequency": 10, "min_coverage": 0.5, "splits": "train=0.7,val=0.3", "supply": "material,color"},
}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

# "\b" keeps click from rewrapping an example in the middle of the command.
EPILOG = """Examples:

\b
  concepts build --from examples/cvat_export -o out/example

\b
  concepts build --from cvat=export.zip --from labelme=more/ --concepts concepts.yaml -o out/mine --size 224

\b
  concepts build --recipe broden --from ade20k=ADE20K_2016_07_26 --from pascal=pascal --from opensurfaces=os --from dtd=dtd --size 224 -o broden1_224
"""


def _parse_from(spec: str) -> tuple[str | None, Path]:
    name, sep, path = spec.partition("=")
    if sep and name in builders.names():
        return name, Path(path)
    if sep and name and "/" not in name and not Path(spec).exists():
        builders.get(name)  # raises the 'unknown format' error listing the known ones
    return None, Path(spec)


@app.command(epilog=EPILOG)
def build(
    sources: Annotated[list[str], typer.Option("--from", help="A source: PATH (format detected) or FORMAT=PATH; repeatable.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder to write the dataset to (required unless --print-concepts).")] = None,
    recipe: Annotated[Optional[Literal["broden"]], typer.Option(help="Preset: 'broden' (min frequency 10, min coverage 0.5, train 0.7/val 0.3, OpenSurfaces supplies material and colour).")] = None,
    size: Annotated[Optional[str], typer.Option(help="Resize images to N or HxW (aspect ignored, as Broden); default: keep sizes.")] = None,
    seg_size: Annotated[Optional[str], typer.Option(help="Segmentation size N or HxW; default: half of --size, else the image size.")] = None,
    min_frequency: Annotated[Optional[int], typer.Option(help="Drop labels seen in fewer images (Broden: 10).")] = None,
    min_coverage: Annotated[Optional[float], typer.Option(help="Drop labels covering fewer whole images in total (Broden: 0.5).")] = None,
    color: Annotated[bool, typer.Option("--color/--no-color", help="Add the pixel colour category.")] = True,
    split: Annotated[Optional[str], typer.Option(help="Cumulative splits by MD5 hash, e.g. train=0.7,val=0.3.")] = None,
    synonyms: Annotated[bool, typer.Option("--synonyms/--no-synonyms", help="Apply Broden's synonym rewriter to names.")] = True,
    ascii_names: Annotated[bool, typer.Option("--ascii-names", help="Transliterate label names to ASCII.")] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Worker processes (default: all cores).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first unreadable item instead of skipping it.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous output of the same kind that concepts wrote (never any other folder or file).")] = False,
    jpeg_quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of the written images.")] = 90,
    concepts_file: Annotated[Optional[Path], typer.Option("--concepts", help="Concept mapping (YAML or TOML) for custom exports.")] = None,
    print_concepts: Annotated[bool, typer.Option("--print-concepts", help="Print a starter concept mapping of what the sources contain, then stop.")] = False,
    pascal_context_classes: Annotated[Optional[int], typer.Option(help="Pascal-Context: 59 selects the common classes (default: all 459).")] = None,
    supply: Annotated[Optional[str], typer.Option(help="OpenSurfaces: categories it contributes, e.g. material,color.")] = None,
) -> None:
    """Build a Broden-format concept dataset from one or more sources."""
    from concepts.unify import BuildOptions, build_dataset

    if output is None and not print_concepts:
        raise UsageError("give the output folder with -o/--output")
    preset = RECIPES.get(recipe or "", {})  # typer has refused names outside RECIPES
    options = {
        "pascal_context_classes": pascal_context_classes,
        "supply": supply if supply is not None else preset.get("supply"),
        "concepts": concepts_file,
    }
    try:
        splits = parse_splits(split or preset.get("splits", "train=0.7,val=0.3"))
    except ValueError as e:
        raise UsageError(f"--split: {e}") from None
    build_options = BuildOptions(
        size=parse_size(size, "--size"),
        seg_size=parse_size(seg_size, "--seg-size"),
        min_frequency=min_frequency if min_frequency is not None else preset.get("min_frequency", 0),
        min_coverage=min_coverage if min_coverage is not None else preset.get("min_coverage", 0.0),
        color=color,
        splits=splits,
        synonyms=synonyms,
        ascii_names=ascii_names,
        workers=workers,
        strict=strict,
        overwrite=overwrite,
        jpeg_quality=jpeg_quality,
    )
    if output is not None and not print_concepts:
        from concepts.staging import guard_target

        # Before any archive is extracted: the target must not be, hold or lie in an input.
        inputs = [_parse_from(spec)[1] for spec in sources] + ([concepts_file] if concepts_file else [])
        guard_target(output, kind="dataset", overwrite=overwrite, inputs=inputs)
    with contextlib.ExitStack() as stack:
        opened = []
        for spec in sources:
            name, path = _parse_from(spec)
            if path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
                from concepts.archive import extract_archive

                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="concepts-src-")))
                path = extract_archive(path, scratch)
            cls = builders.get(name) if name else builders.detect(path)
            opened.append(cls(path, {**options, "key": None}))
        if print_concepts:
            from concepts.mapping import starter_mapping

            typer.echo(starter_mapping(opened), nl=False)
            return
        summary = build_dataset(opened, output, build_options)
    per_source = ", ".join(f"{k}: {v}" for k, v in summary.images.items())
    typer.echo(f"wrote {sum(summary.images.values())} images ({per_source}), {summary.labels} labels in "
               f"{len(summary.categories)} categories ({', '.join(summary.categories)}) to {summary.output} "
               f"in {summary.seconds:.1f} s")
    if summary.dropped_labels:
        typer.echo(f"dropped {summary.dropped_labels} label(s) below the frequency/coverage filters")
    for reason, count in sorted(summary.skipped.items()):
        typer.echo(f"skipped {count} image(s): {reason}")
    for reason, count in sorted(summary.annotations_skipped.items()):
        typer.echo(f"skipped {count} annotation(s): {reason}")
