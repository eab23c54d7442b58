"""``concepts dissect``: Network Dissection of a PyTorch model against a concept dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from concepts.cli import app
from concepts.errors import UsageError

# "\b" keeps click from rewrapping an example in the middle of the command.
EPILOG = """Examples:

\b
  concepts dissect broden1_224/ --model resnet18 --weights resnet18_places365.pth --layer layer4 -o out/

\b
  concepts dissect data/ --model mypkg.nets:build --layer features.28 --layer features.30 -o out/ --normalize netdissect

\b
  concepts dissect hf://me/my-concepts --model resnet50 --pretrained --layer layer3 --layer layer4 -o out/ --device cuda

\b
  concepts dissect data/ --model timm:vit_small_patch16_224 --pretrained --layer blocks.11 -o out/

\b
  concepts dissect data/ --model hf:facebook/dinov2-small --layer layer.11 -o out/

\b
  concepts dissect data/ --model mypkg.nets:build --model-arg width=2 --layer stage4 -o out/

Running the same command again resumes an interrupted run and skips layers already finished.

On several processes (one GPU each with --device cuda), the same files as one process:

\b
  torchrun --nproc-per-node 4 -m concepts dissect data/ --model resnet18 --pretrained --layer layer4 -o out/ --device cuda
"""


def _thresholds(values: list[str] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values or []:
        layer, sep, path = v.partition("=")
        # A file whose name holds '=' is still one file for every layer.
        if sep and layer and not Path(v).is_file():
            out[layer] = Path(path)
        else:
            out[""] = Path(v)
    return out


def _quantiles(value: str) -> list[float]:
    """``--quantile 0.005`` or ``0.0025,0.005,0.01``, refused in one line when a value is not a number."""
    out = []
    for part in value.split(","):
        try:
            out.append(float(part.strip()))
        except ValueError:
            raise UsageError(f"--quantile {value!r}: {part.strip()!r} is not a number (give Q or Q,Q,...)") from None
    return out


def _rank() -> int:
    """This process's rank under torchrun (0 when run alone)."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


@app.command(epilog=EPILOG)
def dissect(
    dataset: Annotated[str, typer.Argument(help="Concept dataset: a Broden folder, a published Hugging Face dataset folder, or hf://OWNER/NAME.")],
    layer: Annotated[list[str], typer.Option("--layer", "-l", help="Layer to dissect (repeatable): a module name (layer4, features.28), NAME:K for the K-th call (1-based) of a module run more than once per pass (layer4.1.relu:2), or a functional node (layer4.1.add).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="torchvision name (resnet18, vit_b_16, ...), timm:NAME, hf:OWNER/NAME or hf:FOLDER (hf-backbone: for AutoBackbone), or package.module:factory.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("dissection"),
    weights: Annotated[Optional[Path], typer.Option("--weights", "-w", help="Checkpoint: state dict (DataParallel and {'state_dict': ...} accepted), safetensors or TorchScript.")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained", help="Use the published weights (torchvision, timm, Hugging Face; downloads them if not cached), or pass pretrained=True to a factory.")] = False,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow a whole pickled model (runs code from the file: trusted files only).")] = False,
    categories: Annotated[Optional[list[str]], typer.Option("--categories", "-c", help="Only these categories (repeatable or comma-separated).")] = None,
    quantile: Annotated[str, typer.Option("--quantile", metavar="Q[,Q...]", help="Fraction of activations above each unit's threshold; several (0.0025,0.005,0.01): the first makes the main results, each other one adds a tally and the sweep's curve (no forward pass).")] = "0.005",
    iou_threshold: Annotated[float, typer.Option("--iou-threshold", help="IoU above which a unit detects its label.")] = 0.04,
    union: Annotated[Literal["ndlite", "netdissect", "global"], typer.Option("--union", help="Which activations count for a category: ndlite (reference), netdissect (2017), global.")] = "ndlite",
    normalize: Annotated[str, typer.Option("--normalize", metavar="[imagenet|netdissect|none|auto|M,M,M/S,S,S]", help="Input normalisation: auto (the model's own mean/std, else imagenet), imagenet, netdissect (reference), none, or custom means/stds m1,m2,m3/s1,s2,s3.")] = "auto",
    thresholds: Annotated[Optional[list[str]], typer.Option("--thresholds", help="Per-unit thresholds .npy (FILE for every layer, or LAYER=FILE).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")] = 32,
    workers: Annotated[Optional[int], typer.Option("--workers", help="DataLoader processes decoding images and labels (default: cores - 1, at most 8).")] = None,
    device: Annotated[str, typer.Option("--device", metavar="[cpu|cuda|cuda:N]", help="Where the model runs: cpu, cuda or cuda:N.")] = "cpu",
    split: Annotated[Optional[str], typer.Option("--split", help="Only images of this split.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N images.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Top activating images kept per unit.")] = 10,
    cache_gb: Annotated[float, typer.Option("--cache-gb", help="Disk budget for cached features; above it they are recomputed.")] = 8.0,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when finished results match.")] = False,
    layout: Annotated[Optional[str], typer.Option("--layout", metavar="[nchw|nhwc|tokens[:P[:HxW]]]", help="How the layer's output holds units when the model does not say: nchw, nhwc, tokens:P (P prefix tokens dropped, patch grid from the input size) or tokens:P:HxW; refused if it contradicts the model.")] = None,
    layer_output: Annotated[Optional[str], typer.Option("--layer-output", metavar="INDEX|KEY", help="Which element of a tuple, dict or ModelOutput output: an index or key (default: a tuple's first element, a dict's last_hidden_state or its only tensor).")] = None,
    model_arg: Annotated[Optional[list[str]], typer.Option("--model-arg", metavar="KEY=VALUE", help="Argument for a package.module:factory or timm model (repeatable; typed from the factory's signature).")] = None,
    significance: Annotated[bool, typer.Option("--significance/--no-significance", help="Permutation null (p-value, z), bootstrap IoU interval and Benjamini-Hochberg per unit: columns p-value, z, iou-low, iou-high, significant.")] = True,
    alpha: Annotated[float, typer.Option("--alpha", help="False discovery rate (Benjamini-Hochberg over a layer's units) for a significant detector.")] = 0.05,
    null_shifts: Annotated[int, typer.Option("--null-shifts", help="K: label derangements of the permutation null.")] = 8,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="B: bootstrap resamples of the images for the IoU interval.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the null's pairings, the bootstrap and the random baseline.")] = 0,
    baseline: Annotated[Optional[Literal["random"]], typer.Option("--baseline", help="random: also dissect the same architecture with seeded random weights (tally_LAYER.baseline.csv, 'baseline' in summary.json).")] = None,
    report: Annotated[bool, typer.Option("--report", help="Also write the HTML report and plots into OUT/report/.")] = False,
) -> None:
    """Label every unit of the given layers with the concept its activations segment best."""
    from concepts.dissect.models import parse_device, parse_model_args, parse_normalize
    from concepts.dissect.run import DissectConfig
    from concepts.dissect.run import dissect as run

    if not layer:
        raise UsageError("give at least one --layer")
    # Open values (cuda:N, custom means) are checked here, before any dataset or model is read.
    parse_device(device)
    parse_normalize(normalize)
    from concepts.dissect.layouts import parse_layout

    parse_layout(layout)
    model_args = parse_model_args(model_arg)
    cats = [c.strip() for v in categories or [] for c in v.split(",") if c.strip()] or None
    quantiles = _quantiles(quantile)
    cfg = DissectConfig(
        dataset=dataset, layers=list(layer), out=out, model=model, weights=weights, pretrained=pretrained,
        trust_pickle=trust_pickle, categories=cats, quantile=quantiles, iou_threshold=iou_threshold, union=union,
        normalize=normalize, thresholds=_thresholds(thresholds), batch_size=batch_size, workers=workers,
        device=device, split=split, limit=limit, top_k=top_k, cache_budget_gb=cache_gb, force=force,
        layout=layout, layer_output=layer_output, model_args=model_args, significance=significance, alpha=alpha,
        null_shifts=null_shifts, bootstrap=bootstrap, seed=seed, baseline=baseline,
    )
    if _rank():
        from concepts import progress

        progress.set_enabled(False)  # one set of progress bars, rank 0's
    record = run(cfg)
    if _rank():
        return  # under torchrun rank 0 alone reports (and writes the report)
    from concepts.cli.tables import print_table

    rows = []
    for name, summary in record["summary"].items():
        if summary is None:
            continue
        per_cat = ", ".join(f"{c} {v['detectors']}/{v['unique_concepts']}" for c, v in sorted(summary["categories"].items()))
        extra = (summary.get("significant_detectors", "-"),) if significance else ()
        extra += (summary.get("baseline", {}).get("detectors", "-"),) if baseline else ()
        rows.append((name, summary["units"], summary["detectors"], *extra, summary["unique_concepts"], per_cat))
    if rows:
        heads = ["layer", "units", "detectors"] + (["significant"] if significance else []) + (["random baseline"] if baseline else [])
        print_table([*heads, "unique concepts", "detectors/concepts per category"], rows,
                    numeric=[False] + [True] * (len(heads) - 1) + [True, False])
    typer.echo(f"results in {out}")
    if report:
        from concepts.dissect.plots import load_run
        from concepts.dissect.report import render_reports

        # The model and the trust in its weights are what the user typed on this very command line.
        inputs = [Path(p) for p in (dataset, weights) if p is not None and not str(p).startswith("hf://")]
        pages = render_reports([load_run(out)], Path(out) / "report", overwrite=True, inputs=inputs, device=device, trust_model_code=True, trust_pickle=trust_pickle)
        typer.echo(f"report in {Path(out) / 'report'} ({len(pages)} page(s))")
