"""`raydetect monitor drift` (exit 1 on drift) and `raydetect monitor check` (exit 1 on "retrain")."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from raydetect.cli_options import ConfigOption, SetOption, settings_from

app = typer.Typer(help="Drift between scoring runs (or a run and its training data), and the retraining trigger.",
                  no_args_is_help=True)


@app.command("drift")
def drift(
    reference: Annotated[
        str, typer.Option("--reference", "-r", help="The reference: a scoring run folder, or a dataset root / its "
                          "train.csv or test.csv (the training data).")],
    current: Annotated[str, typer.Option("--current", help="The scoring run (or dataset) to compare with it.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The model whose pooled features embed both samples "
                                 "(default: the current run's model, else the reference run's).")] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="HTML page (JSON beside it); default <workdir>/reports/drift.html."),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """PSI and KS on prob_ai and decision shares (two runs), input statistics and embeddings (any two sides);
    exit 0 = no drift, 1 = drift."""
    from raydetect.monitor.drift import drift_between, write_drift

    settings = settings_from(config, overrides)
    try:
        report = drift_between(reference, current, settings, model)
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    page = output or str(settings.workdir_path / "reports" / "drift.html")
    json_uri = write_drift(report, page, settings)
    for reason in report.reasons:
        typer.echo(f"drift: {reason}")
    typer.echo(f"{'DRIFT' if report.drift else 'no drift'}: {_headline(report.figures)}")
    typer.echo(f"report: {page}  ({json_uri})")
    raise typer.Exit(1 if report.drift else 0)


def _headline(figures: dict) -> str:
    sizes = f"(n {figures['n_reference']} vs {figures['n_current']})"
    embedded = figures["embeddings"]["model"]
    embeddings = f"embeddings by {embedded}" if embedded else f"no embeddings: {figures['embeddings']['missing']}"
    prob = figures["prob_ai"]
    if prob is None:
        return f"inputs only, a {figures['reference_kind']} against a {figures['current_kind']} {sizes}; {embeddings}"
    return f"prob_ai PSI {prob['psi']:.3f}, KS p {prob['ks_pvalue']:.3g} {sizes}; {embeddings}"


@app.command("check")
def check(
    data: Annotated[str, typer.Option("--data", help="The newest labelled data (dataset root).")],
    split: Annotated[str, typer.Option(help="Which labels: test (test_labels.csv) or train.")] = "test",
    predictions: Annotated[
        str | None, typer.Option("--predictions", help="A scoring run of it by production (default: score it now).")
    ] = None,
    reference: Annotated[
        str | None, typer.Option("--reference", help="A reference scoring run or dataset (the training data): "
                                 "drift from it means retrain.")
    ] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Also write the verdict JSON here.")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster (when scoring).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Re-evaluate production; print "retrain" (exit 1) on a metric drop, drift or an unseen generator."""
    try:
        verdict = run_check(data, split, predictions, reference, output, ray_address, settings_from(config, overrides))
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    for reason in verdict["reasons"]:
        typer.echo(f"reason: {reason}")
    typer.echo(json.dumps({k: verdict[k] for k in ("decision", "version", "metrics", "registered")}, default=float))
    typer.echo(verdict["decision"])
    raise typer.Exit(1 if verdict["decision"] == "retrain" else 0)


def run_check(data, split, predictions, reference, output, ray_address, settings) -> dict:
    """The check, connecting to Ray only when it has to score; the verdict is written to `output` too."""
    from raydetect import storage
    from raydetect.monitor.check import check as check_core

    if predictions is None:
        from raydetect.cluster import connect

        connect(ray_address)
    verdict = check_core(settings, data, split=split, predictions=predictions, reference=reference)
    if output:
        storage.write_text(output, json.dumps(verdict, indent=2, default=float), settings.storage)
    return verdict
