"""`raydetect evaluate`: score-vs-label metrics and the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def evaluate(
    predictions: Annotated[str, typer.Argument(help="Predictions folder (a scoring run), local or s3://.")],
    data: Annotated[str, typer.Option("--data", help="Labelled dataset root (Kaggle layout).")],
    split: Annotated[str, typer.Option(help="Which labels: test (test_labels.csv) or train.")] = "test",
    output: Annotated[str, typer.Option("--output", "-o", help="HTML report path.")] = "report.html",
    threshold: Annotated[float | None, typer.Option(help="Decision threshold (default: the model's).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", exists=True)] = None,
) -> None:
    """Join predictions to labels and write a single-file HTML report (+ JSON summary beside it)."""
    from raydetect.config import load_settings
    from raydetect.data.manifest import read_manifest
    from raydetect.evaluate.report import write_report

    settings = load_settings(config)
    labelled = read_manifest(data, split=split, settings=settings)
    summary = write_report(predictions, labelled, output, threshold, context={"predictions": predictions, "data": data})
    overall = summary["overall"]
    typer.echo(
        f"accuracy {overall['accuracy']:.4f}  f1 {overall['f1']:.4f}  auc {overall['auc_roc']:.4f}  "
        f"(n={overall['n']}, unreadable={summary['errors']})"
    )
    typer.echo(f"report: {output}")
