"""`raydetect score INPUT --model M --output OUT [--run-id R] [--batch-size B] [--actors MIN:MAX]`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from raydetect.cli_options import ConfigOption, SetOption, settings_from


def score(
    input_uri: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="Dataset root (Kaggle layout), folder of images, manifest file (.csv/.parquet/.txt) or s3:// prefix.",
        ),
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Where runs go (local or s3://): OUT/run=<id>/.")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model directory (local or s3://) or registry reference (production, models:/raydetect@production, "
            "models:/raydetect/3); 'a,b' averages an ensemble. Default: $RAYDETECT_MODEL_URI, the registry's "
            "production alias, then <workdir>/models/production.",
        ),
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Ensemble weights, one per model: '2,1' (default equal).")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Re-use to resume an interrupted run (default: UTC time).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per model call.")] = None,
    actors: Annotated[str | None, typer.Option("--actors", help="Model actor pool size, MIN:MAX (or N).")] = None,
    split: Annotated[
        str, typer.Option("--split", help="For dataset roots: auto | train | test | folder | all.")
    ] = "auto",
    summary: Annotated[
        str | None, typer.Option("--summary", help="Also write the run summary JSON here (local or s3://).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster to use (default: $RAY_ADDRESS or local).")
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Score images in bulk on Ray Data into Parquet predictions (path, sha256, prob_ai, decision, …)."""

    settings = settings_from(config, overrides, **{"score.batch_size": batch_size})
    try:
        out = run_and_summarize(
            input_uri, model, output, run_id, weights=weights, actors=actors, split=split, settings=settings,
            summary_uri=summary, ray_address=ray_address,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(out, indent=2))
    typer.echo(f"predictions: {out['output']}  (_SUCCESS written last; summary: {out['summary_uri']})")


def run_and_summarize(
    input_uri: str,
    model: str | None,
    output: str,
    run_id: str | None = None,
    *,
    weights: str | None = None,
    actors: str | None = None,
    split: str = "auto",
    settings: Any = None,
    summary_uri: str | None = None,
    ray_address: str | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Init Ray, score, and return the run summary (also at OUT/run=<id>/_SUMMARY.json, and `summary_uri`)."""
    from raydetect import storage
    from raydetect.cluster import connect
    from raydetect.score import results
    from raydetect.score.pipeline import score_run, summarize

    connect(ray_address)
    manifest = score_run(
        input_uri, model, output, run_id, weights=weights, batch_size=batch_size, actors=actors, split=split,
        settings=settings,
    )  # fmt: skip
    out = summarize(manifest)
    out["summary_uri"] = storage.join(manifest["output"], results.SUMMARY)
    if summary_uri:
        sset = settings.storage if settings is not None else None
        parent = storage.normalize(summary_uri).rsplit("/", 1)[0]
        storage.makedirs(parent, sset)
        storage.write_text(summary_uri, json.dumps(out, indent=2), sset)
        out["summary_uri"] = storage.normalize(summary_uri)
    return out
