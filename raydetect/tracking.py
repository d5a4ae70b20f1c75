"""Experiment tracking: MLflow always (a local SQLite store by default), W&B when the environment asks for it.

The tracking URI is `settings.mlflow_uri()`: the config's `tracking.mlflow_uri`, else `$MLFLOW_TRACKING_URI`,
else `sqlite:///<workdir>/mlflow.db`. Runs are logged from the driver (after each Ray Train run), so the
workers never need to reach the tracking store. W&B turns on when `WANDB_API_KEY` or `WANDB_MODE` is set:
Tune sweeps get Ray's `WandbLoggerCallback`, plain training runs are logged with `wandb` directly.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from raydetect.config import Settings


def wandb_enabled() -> bool:
    return bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"))


def _require_wandb() -> Any:
    try:
        import wandb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "WANDB_API_KEY / WANDB_MODE is set but the `wandb` package is not installed: pip install wandb "
            "(or unset those variables to log to MLflow only)"
        ) from exc
    return wandb


def wandb_tune_callbacks(project: str) -> list[Any]:
    """Ray's W&B Tune callback when W&B is switched on by the environment, else nothing."""
    if not wandb_enabled():
        return []
    _require_wandb()
    from ray.air.integrations.wandb import WandbLoggerCallback

    return [WandbLoggerCallback(project=project, log_config=True)]


def _clean_params(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params are strings of at most 6000 characters."""
    return {str(k): str(v)[:6000] for k, v in params.items() if v is not None}


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


class Tracker:
    """A thin MLflow (+ optional W&B) logger: one `run()` context per training run, fold or trial."""

    def __init__(self, settings: Settings, experiment: str | None = None):
        self.uri = settings.mlflow_uri()
        self.storage = settings.storage  # model directories are read with the config's storage settings
        self.experiment = experiment or settings.tracking.experiment
        self._wandb_run: Any = None
        if wandb_enabled():
            _require_wandb()  # fail before a long run, not after it
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)

    def _mlflow(self) -> Any:
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment)
        return mlflow

    @contextmanager
    def run(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        nested: bool = False,
    ) -> Iterator[str]:
        """Start an MLflow run (nested under the active one when `nested`); yields its run id."""
        mlflow = self._mlflow()
        with mlflow.start_run(run_name=name, nested=nested, tags=dict(tags or {})) as active:
            if params:
                mlflow.log_params(_clean_params(params))
            wandb_run = None
            if wandb_enabled() and not nested:
                wandb = _require_wandb()
                wandb_run = wandb.init(project=self.experiment, name=name, config=dict(params or {}), reinit=True)
                self._wandb_run = wandb_run
            try:
                yield active.info.run_id
            finally:
                if wandb_run is not None:
                    wandb_run.finish()
                    self._wandb_run = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        clean = {f"{prefix}{k}": v for k, v in _finite(metrics).items()}
        if not clean:
            return
        self._mlflow().log_metrics(clean, step=step)
        if self._wandb_run is not None:
            self._wandb_run.log(clean, step=step)

    def log_history(self, history: list[Mapping[str, Any]], prefix: str = "", step_key: str = "epoch") -> None:
        """One MLflow step per epoch (or per reported result)."""
        for index, record in enumerate(history):
            step = int(record.get(step_key, index + 1))
            self.log_metrics({k: v for k, v in record.items() if k != step_key}, step=step, prefix=prefix)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._mlflow().log_params(_clean_params(params))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow().set_tags(dict(tags))

    def log_model_dir(self, uri: str, artifact_path: str = "model") -> None:
        """Copy a raydetect model directory (local or s3://) into the run's artifacts."""
        from raydetect import storage
        from raydetect.models.bundle import CARD_FILE, WEIGHTS_FILE

        mlflow = self._mlflow()
        if not storage.is_s3(uri):
            mlflow.log_artifacts(storage.strip_scheme(uri), artifact_path)
            return
        with tempfile.TemporaryDirectory() as tmp:
            for name in (CARD_FILE, WEIGHTS_FILE):
                (Path(tmp) / name).write_bytes(storage.read_bytes(storage.join(uri, name), self.storage))
            mlflow.log_artifacts(tmp, artifact_path)

    def log_file(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow().log_artifact(str(local_path), artifact_path)
