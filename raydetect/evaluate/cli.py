"""`raydetect evaluate`: score-vs-label metrics and the HTML report, from a scoring run or a model."""

from __future__ import annotations

from typing import Annotated

import typer

from raydetect.cli_options import ConfigOption, SetOption, settings_from


def evaluate(
    predictions: Annotated[
        str | None,
        typer.Argument(help="Predictions folder (a scoring run), local or s3://; omit it with --model."),
    ] = None,
    data: Annotated[str, typer.Option("--data", help="Labelled dataset root (Kaggle layout).")] = ...,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Score --data's split with this model first (the batch pipeline): "
                     "a directory or a registry reference (production, models:/raydetect/3)."),
    ] = None,
    split: Annotated[str, typer.Option(help="Which labels: test (test_labels.csv) or train.")] = "test",
    output: Annotated[str, typer.Option("--output", "-o", help="HTML report path.")] = "report.html",
    threshold: Annotated[float | None, typer.Option(help="Decision threshold (default: the model's).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Join predictions to labels and write a single-file HTML report (+ JSON summary beside it).

    With --model, the split is scored first by the same Ray Data pipeline as `raydetect score` (into
    <workdir>/predictions/run=evaluate-<model version>, resumable), so evaluation sees exactly the P(AI)
    that scoring and Serve give, and the report gains the robustness sweep (evaluate.robustness_sample
    images re-scored after each of evaluate.perturbations) and the adversarial table (FGSM and PGD on
    evaluate.adversarial_sample images)."""
    from raydetect.data.manifest import read_manifest
    from raydetect.evaluate.report import write_report

    settings = settings_from(config, overrides)
    if predictions is None and model is None:
        typer.secho("error: give a PREDICTIONS folder or --model", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    if model is not None:
        predictions = score_for_evaluation(data, model, split, settings)
    labelled = read_manifest(data, split=split, settings=settings)
    context = {"predictions": predictions, "data": data, **({"model": model} if model else {})}
    checks = {}
    if model is not None:  # perturbed and attacked copies are re-scored, so they need the model itself
        from raydetect.evaluate.robustness import model_checks
        from raydetect.score.pipeline import parse_models

        spec = parse_models(model, settings=settings)  # the same resolution as the scoring run above
        checks = {"card": spec.card, **model_checks(spec.uris, labelled, settings)}
    summary = write_report(predictions, labelled, output, threshold, context=context, settings=settings.evaluate,
                           **checks)  # fmt: skip
    overall, cal = summary["overall"], summary["calibration"]
    typer.echo(
        f"accuracy {overall['accuracy']:.4f}  f1 {overall['f1']:.4f}  auc {overall['auc_roc']:.4f}  "
        f"(n={overall['n']}, unreadable={summary['errors']})"
    )
    before = f"{cal['ece_before']:.4f} -> " if "ece_before" in cal else ""
    typer.echo(f"ECE {before}{cal['ece']:.4f}  review share {summary['decision']['review_share']:.3f}")
    typer.echo(f"report: {output}")


def score_for_evaluation(data: str, model: str, split: str, settings) -> str:
    """Score `split` of `data` with `model` through the batch pipeline; returns the run folder."""
    from raydetect.score.cli import run_and_summarize
    from raydetect.score.pipeline import parse_models

    spec = parse_models(model, settings=settings)
    run_id = "evaluate-" + "".join(c if c.isalnum() or c in "-." else "_" for c in str(spec.card.version))
    out = run_and_summarize(
        data, model, str(settings.workdir_path / "predictions"), run_id, split=split, settings=settings
    )
    return out["output"]
