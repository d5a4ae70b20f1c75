"""`raydetect dire …`: fit DIRE's diffusion UNet, make maps on Ray, fit the statistics classifier into a
model directory that `raydetect score`, Serve and `evaluate` load like any other."""

from __future__ import annotations

from typing import Annotated

import typer

from raydetect.cli_options import ConfigOption, SetOption, settings_from
from raydetect.cluster import connect

app = typer.Typer(help="DIRE: diffusion reconstruction error as a detector.", no_args_is_help=True)


@app.command("fit-diffusion")
def fit_diffusion_command(
    root: Annotated[str, typer.Argument(help="Dataset root with train.csv (local or s3://).")],
    out: Annotated[
        str | None, typer.Option(help="Output folder (default: dire.diffusion or <workdir>/dire/diffusion).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Train DIRE's small UNet on the real images of the training folds only (never test, never AI, never
    the held-out fold dire.fit.holdout_fold)."""
    from raydetect.dire.fit import default_diffusion_dir, fit_diffusion

    settings = settings_from(config, overrides)
    fit_diffusion(root, out or default_diffusion_dir(settings), settings, progress=progress, log=typer.echo)


@app.command("maps")
def maps_command(
    root: Annotated[str, typer.Argument(help="Dataset root (Kaggle layout or a folder), local or s3://.")],
    out: Annotated[str, typer.Argument(help="Where the maps and their statistics go (resumable).")],
    split: Annotated[str, typer.Option(help="train | test | auto | folder.")] = "train",
    diffusion: Annotated[
        str | None, typer.Option(help="UNet folder or diffusers id (default: dire.diffusion).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N images of the manifest.")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """DIRE maps (lossless, one format for both classes) and error statistics as a Ray Data job."""
    from raydetect.dire.maps import dire_maps

    settings = settings_from(config, overrides)
    connect()
    dire_maps(root, out, settings, split=split, diffusion=diffusion, limit=limit, log=typer.echo)


@app.command("fit-classifier")
def fit_classifier_command(
    maps: Annotated[str, typer.Argument(help="A `dire maps` output folder (train split).")],
    model_out: Annotated[str, typer.Option("--out", help="The DIRE model directory to write.")],
    name: Annotated[str, typer.Option(help="Model name in the card.")] = "dire",
    version: Annotated[str | None, typer.Option(help="Model version (default: a timestamp).")] = None,
    leave_out: Annotated[str | None, typer.Option(help="Also report leave-this-generator-out CV (e.g. ddpm).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Grouped 5-fold CV of the statistics classifier (logistic regression), then fit it on every fold and
    write a DIRE model directory."""
    from raydetect.dire.stats import fit_classifier

    settings = settings_from(config, overrides)
    uri, _ = fit_classifier(maps, model_out, settings, name=name, version=version, leave_out=leave_out, log=typer.echo)
    typer.echo(f"model: {uri}")
