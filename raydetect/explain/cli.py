"""`raydetect explain IMAGE... --model M [--method gradcam|lime|shap] [--out DIR]`: no Ray, one process."""

from __future__ import annotations

from typing import Annotated

import typer

from raydetect.cli_options import ConfigOption, SetOption, settings_from


def explain(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE", help="Image files, local or s3://.")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model directory (local or s3://) or registry reference (production, "
                     "models:/raydetect/3). Default: $RAYDETECT_MODEL_URI, then the registry's production alias."),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="gradcam (one backward pass per view) | lime | shap (explain.n_samples forward passes "
                     "per view, on superpixels). Default: explain.method."),
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Where the overlays go (default: <workdir>/explanations).")
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Explain each image's decision: an overlay PNG of the evidence at the image's own size in DIR, and one
    line per image naming where the evidence sits and which frequency band of the image carries it."""
    from raydetect.explain.core import METHODS

    if method is not None and method not in METHODS:
        typer.secho(f"error: --method must be one of {', '.join(METHODS)} (got {method!r})", fg="red", err=True)
        raise typer.Exit(2)
    settings = settings_from(config, overrides, **{"explain.method": method})
    from raydetect.explain.files import write_explanations
    from raydetect.models.bundle import load_detector
    from raydetect.registry import resolve_model

    uri = resolve_model(model, settings).uri
    detector = load_detector(uri, device=settings.device, precision=settings.precision)
    target = out or str(settings.workdir_path / "explanations")
    results = write_explanations(detector, images, target, settings, log=typer.echo)
    failed = sum(r.error is not None for r in results)
    typer.echo(f"{len(results) - failed} overlays ({settings.explain.method}) in {target}"
               + (f"; {failed} images could not be read" if failed else ""))  # fmt: skip
    if failed:
        raise typer.Exit(1)
