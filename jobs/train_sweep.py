"""`ray job submit` entry point for training and sweeps: the same code as `raydetect train` / `raydetect tune`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_sweep.py tune s3://bucket/kaggle --num-samples 16 --cv 5 --workers 2
    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_sweep.py train s3://bucket/kaggle --backbone efficientnet_lite0 --cv 5 -o s3://bucket/models/v1

Inside a job Ray sets RAY_ADDRESS, so the commands join the cluster instead of starting one. Put
`train.storage_path` on shared storage (s3://…) on multi-node clusters: checkpoints are written from the workers.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The uploaded working directory holds the package; make it importable when raydetect is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import typer  # noqa: E402

from raydetect.train.cli import register  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    app = typer.Typer(help="Training and hyperparameter sweeps on a Ray cluster.", no_args_is_help=True)
    register(app)
    app(args=argv, prog_name="train_sweep.py")


if __name__ == "__main__":
    main()
