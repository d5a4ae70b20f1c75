"""`raydetect data …`: dataset verification, folds, and the offline benchmark."""

from __future__ import annotations

import typer

app = typer.Typer(help="Datasets: verify, folds, build the offline benchmark.", no_args_is_help=True)
