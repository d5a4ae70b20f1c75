"""The model registry on MLflow's (in the tracking store, `settings.mlflow_uri()`), and model resolution.

A registered version points at a raydetect model directory (`models/bundle.py`: local or s3://; the
directory stays the format) and carries tags: the card's metrics (`metric.*`), threshold and review band,
the training data's fingerprint and generators, the code version, and, once an evaluation report is
attached, its metrics (`eval.*`), fairness gap and robustness drop. The alias `registry.alias`
(`production`) marks the version that serves; promotion passes the gates of `raydetect/gates.py`.
History: the registered model's tags `alias_history` (the holders, oldest first: what a rollback pops) and
`alias_log` (every change, append-only), and each version's `promoted_at` / `demoted_at` / `archived_at` /
`force_reason` tags.

`resolve_model_uri` is the one function that turns a model reference into a directory, for score, Serve
and evaluate: a directory, `models:/NAME@ALIAS`, `models:/NAME/VERSION`, or a bare alias (`production`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess  # nosec B404 # only git, with fixed arguments (code_version)
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raydetect import storage
from raydetect.config import Settings, load_settings
from raydetect.gates import Figures, Gate, check_gates, fairness_gap, robustness_drop

MODEL_URI_ENV = "RAYDETECT_MODEL_URI"
HISTORY_TAG = "alias_history"  # the serving alias's holders, oldest first (a rollback pops the last)
LOG_TAG = "alias_log"  # every change of the serving alias, append-only (oldest dropped past the tag limit)
LOG_LIMIT = 90_000  # characters; MLflow's registry tag values hold 100,000
EVAL_METRICS = ("accuracy", "precision", "recall", "f1", "auc_roc", "average_precision", "n")


class RegistryError(ValueError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to, ...)."""


@dataclass(frozen=True)
class ResolvedModel:
    uri: str  # the model directory
    version: str | None = None  # the registry version, when it came from the registry
    ref: str | None = None  # what was asked for


@dataclass(frozen=True)
class Promotion:
    version: str
    passed: bool
    forced: bool
    gates: list[Gate]
    previous: str | None

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]


# --- the store ------------------------------------------------------------------------------------------


def client(settings: Settings) -> Any:
    from mlflow import MlflowClient

    uri = settings.mlflow_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def store_exists(settings: Settings) -> bool:
    """False only for a SQLite store whose file is not there yet (so looking never creates one)."""
    uri = settings.mlflow_uri()
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///") :]).exists()


def _ensure_model(mlflow_client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(name, description="raydetect detectors (model directories)")


def _version(settings: Settings, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version(settings.registry.model_name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"no version {version} of {settings.registry.model_name!r} in the registry") from exc


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(_version(settings, version).tags)


def alias_holder(settings: Settings, alias: str | None = None) -> str | None:
    """The version holding `alias` (default: registry.alias), or None."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client(settings).get_registered_model(settings.registry.model_name).aliases
    except MlflowException:
        return None
    held = aliases.get(alias or settings.registry.alias)
    return None if held is None else str(held)


# --- what a version records -----------------------------------------------------------------------------


def code_version() -> str:
    """The git commit of the source tree (`+dirty` when it has changes), else the package version."""
    import raydetect

    here = Path(raydetect.__file__).resolve().parent
    git = shutil.which("git")
    if git is None:
        return f"raydetect {raydetect.__version__}"
    run = {"cwd": here, "capture_output": True, "text": True, "timeout": 10}
    try:
        sha = subprocess.run([git, "rev-parse", "HEAD"], **run)  # nosec B603 # fixed arguments, no shell
        dirty = subprocess.run([git, "status", "--porcelain"], **run)  # nosec B603 # fixed arguments, no shell
    except (OSError, subprocess.SubprocessError):
        return f"raydetect {raydetect.__version__}"
    if sha.returncode != 0:
        return f"raydetect {raydetect.__version__}"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def data_fingerprint(frame: Any) -> str:
    """A short hash of a labelled manifest's (path, label) rows, order-free."""
    rows = sorted(f"{p}\t{lab}" for p, lab in zip(frame["path"].astype(str), frame["label"], strict=True))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def training_tags(frame: Any) -> dict[str, str]:
    """The tags of a training set: fingerprint, size and the `generator` values it holds."""
    tags = {"data_fingerprint": data_fingerprint(frame), "train.n": str(len(frame))}
    if "generator" in frame:
        tags["train.generators"] = json.dumps(sorted(frame["generator"].dropna().astype(str).unique().tolist()))
    return tags


def card_tags(model_uri: str, settings: Settings) -> dict[str, str]:
    from raydetect.models.bundle import load_card

    card = load_card(model_uri, settings.storage)
    tags = {
        "card_version": str(card.version),
        "backbone": card.backbone,
        "input_filter": card.input_filter,
        "threshold": str(card.threshold),
        "review_band": json.dumps(list(card.review_band)),
        "model_uri": storage.normalize(model_uri),
    }
    tags.update({f"metric.{k}": str(v) for k, v in card.metrics.items()})
    return tags


def evaluation_tags(summary: dict[str, Any], data: str | None = None, report: str | None = None) -> dict[str, str]:
    """The tags of an evaluation report's JSON summary (`raydetect evaluate`)."""
    overall = summary.get("overall", {})
    tags = {f"eval.{k}": str(overall[k]) for k in EVAL_METRICS if k in overall}
    data = data or summary.get("context", {}).get("data")
    extra = {"eval.data": data, "eval.report": report, "eval.fairness_gap": fairness_gap(summary),
             "eval.robustness_drop": robustness_drop(summary)}
    tags.update({k: str(v) for k, v in extra.items() if v is not None})
    return tags


def figures(tags: dict[str, str]) -> Figures:
    """A version's gate figures from its tags: its evaluation when one is attached, else its card's."""

    def number(key: str) -> float | None:
        return float(tags[key]) if key in tags else None

    if any(k.startswith("eval.") for k in tags):
        metrics = {k[5:]: float(v) for k, v in tags.items() if k[5:] in EVAL_METRICS and k.startswith("eval.")}
        return Figures(metrics, tags.get("eval.data"), "evaluation", number("eval.fairness_gap"),
                       number("eval.robustness_drop"))
    metrics = {k[7:]: float(v) for k, v in tags.items() if k.startswith("metric.")}
    if "auc" in metrics:  # training's validation metrics say `auc` for what evaluation calls `auc_roc`
        metrics.setdefault("auc_roc", metrics["auc"])
    return Figures(metrics, tags.get("data_fingerprint"), "card")


# --- operations -----------------------------------------------------------------------------------------


def _matching_version(mlflow_client: Any, name: str, source: str, card_version: str) -> str | None:
    for mv in mlflow_client.search_model_versions(f"name='{name}'"):
        if mv.source == source and mv.tags.get("card_version") == card_version and "archived_at" not in mv.tags:
            return str(mv.version)
    return None


def register(
    settings: Settings,
    model_uri: str,
    *,
    run_id: str | None = None,
    training: Any = None,
    evaluation: dict[str, Any] | None = None,
) -> str:
    """Register a model directory (once: the same directory and card version give the same version) with
    its card's figures, the training set's tags (`training`: its labelled manifest) and an evaluation
    summary; returns the version."""
    source = storage.normalize(model_uri)
    tags = {**card_tags(source, settings), "code_version": code_version(), "registered_at": _now()}
    if training is not None:
        tags.update(training_tags(training))
    if evaluation is not None:
        tags.update(evaluation_tags(evaluation))
    mlflow_client, name = client(settings), settings.registry.model_name
    _ensure_model(mlflow_client, name)
    version = _matching_version(mlflow_client, name, source, tags["card_version"])
    if version is None:
        version = str(mlflow_client.create_model_version(name, source, run_id=run_id, tags=tags).version)
    else:
        _set_tags(settings, version, {k: v for k, v in tags.items() if k != "registered_at"})
    return version


def auto_register(settings: Settings, model_uri: str | None, run_id: str | None, training: Any) -> str | None:
    """What training calls where it saved a model: register it when `registry.auto_register` is on."""
    if not settings.registry.auto_register or model_uri is None:
        return None
    return register(settings, model_uri, run_id=run_id, training=training)


def attach_evaluation(settings: Settings, version: str, summary: dict[str, Any], data: str | None = None,
                      report: str | None = None) -> None:
    """Record an evaluation report's figures on a version (they then count for its gates)."""
    _version(settings, version)
    _set_tags(settings, version, evaluation_tags(summary, data, report))


def _set_tags(settings: Settings, version: str, tags: dict[str, str]) -> None:
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(settings.registry.model_name, str(version), key, value)


def _history(settings: Settings) -> list[str]:
    model = client(settings).get_registered_model(settings.registry.model_name)
    return json.loads(model.tags.get(HISTORY_TAG, "[]"))


def alias_log(settings: Settings) -> list[dict[str, str]]:
    """Every change of the serving alias: {at, action (promote / force / rollback), version, from}."""
    model = client(settings).get_registered_model(settings.registry.model_name)
    return json.loads(model.tags.get(LOG_TAG, "[]"))


def _set_holder(settings: Settings, version: str, history: list[str], action: str, previous: str | None) -> None:
    mlflow_client, name = client(settings), settings.registry.model_name
    mlflow_client.set_registered_model_alias(name, settings.registry.alias, str(version))
    mlflow_client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    log = [*alias_log(settings), {"at": _now(), "action": action, "version": str(version), "from": previous or ""}]
    while len(json.dumps(log)) > LOG_LIMIT:
        log.pop(0)
    mlflow_client.set_registered_model_tag(name, LOG_TAG, json.dumps(log))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def promote(settings: Settings, version: str, *, force: bool = False, reason: str | None = None) -> Promotion:
    """Give the alias to `version` when it clears every gate (or `force`, with a reason, recorded)."""
    if force and not reason:
        raise RegistryError("--force needs --reason: it is recorded on the version")
    candidate = _version(settings, version)
    if "archived_at" in candidate.tags:
        raise RegistryError(f"version {version} is archived")
    previous = alias_holder(settings)
    holder = _version(settings, previous) if previous not in (None, str(version)) else None
    gates = check_gates(figures(candidate.tags), holder and figures(holder.tags), settings.registry.gates)
    outcome = Promotion(str(version), all(g.passed for g in gates), force, gates, previous)
    record = {"gates": json.dumps([g.line() for g in gates])}
    if not (outcome.passed or force):
        _set_tags(settings, version, {**record, "refused_at": _now()})
        return outcome
    if force:
        record.update(forced="true", force_reason=reason or "")
    _set_tags(settings, version, {**record, "promoted_at": _now(), "promoted_from": previous or ""})
    if previous != str(version):
        action = "force" if force and not outcome.passed else "promote"
        _set_holder(settings, version, [*_history(settings), str(version)], action, previous)
        if previous is not None:
            _set_tags(settings, previous, {"demoted_at": _now()})
    return outcome


def rollback(settings: Settings) -> tuple[str, str]:
    """Give the alias back to the previous (non-archived) holder; returns (from, to)."""
    current = alias_holder(settings)
    if current is None:
        raise RegistryError(f"no version holds {settings.registry.alias!r}: nothing to roll back")
    history = _history(settings)
    while history and history[-1] == current:
        history.pop()
    while history and "archived_at" in _version(settings, history[-1]).tags:
        history.pop()
    if not history:
        raise RegistryError(f"version {current} is the first holder of {settings.registry.alias!r}: no previous")
    target = history[-1]
    _set_holder(settings, target, history, "rollback", current)
    _set_tags(settings, current, {"demoted_at": _now(), "rolled_back_at": _now()})
    _set_tags(settings, target, {"restored_at": _now()})
    return current, target


def archive(settings: Settings, version: str) -> None:
    """Decommission a version: its aliases are removed, its directory and tags kept. The version holding
    the serving alias is refused (roll back or promote another first)."""
    mv = _version(settings, version)
    if alias_holder(settings) == str(version):
        raise RegistryError(f"version {version} holds {settings.registry.alias!r}: roll back or promote first")
    for alias in mv.aliases or []:
        client(settings).delete_registered_model_alias(settings.registry.model_name, alias)
    _set_tags(settings, version, {"archived_at": _now()})


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """One row per version, newest first: figures, aliases, status."""
    from mlflow.exceptions import MlflowException

    mlflow_client, name = client(settings), settings.registry.model_name
    try:
        aliases = mlflow_client.get_registered_model(name).aliases
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, held in aliases.items():
        by_version.setdefault(str(held), []).append(alias)
    rows = []
    for mv in mlflow_client.search_model_versions(f"name='{name}'"):
        fig = figures(mv.tags)
        status = "archived" if "archived_at" in mv.tags else ("serving" if by_version.get(str(mv.version)) else "")
        rows.append({"version": str(mv.version), "card_version": mv.tags.get("card_version", ""),
                     "f1": fig.metrics.get("f1"), "auc_roc": fig.metrics.get("auc_roc"), "figures": fig.source,
                     "aliases": ",".join(sorted(by_version.get(str(mv.version), []))), "status": status,
                     "source": mv.source})  # fmt: skip
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


# --- resolution -----------------------------------------------------------------------------------------


def _registry_source(settings: Settings, name: str, version: str | None, alias: str | None) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        mv = mlflow_client.get_model_version_by_alias(name, alias) if alias else mlflow_client.get_model_version(
            name, version)
    except MlflowException as exc:
        raise ValueError(f"model models:/{name}{'@' + alias if alias else '/' + str(version)}: not in the "
                         f"registry at {settings.mlflow_uri()}") from exc
    return ResolvedModel(storage.normalize(mv.source), str(mv.version))


def parse_registry_ref(ref: str, settings: Settings) -> tuple[str, str | None, str | None] | None:
    """`models:/N@A` -> (N, None, A); `models:/N/V` -> (N, V, None); anything else -> None."""
    if not ref.startswith("models:/"):
        return None
    body = ref[len("models:/") :].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name or settings.registry.model_name, None, alias
    name, _, version = body.rpartition("/")
    if not name or not version:
        raise ValueError(f"model {ref!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, version, None


def _default_ref(settings: Settings, serve: bool) -> str:
    """No model named: $RAYDETECT_MODEL_URI, then serve.model_uri (Serve), then the serving alias."""
    return os.environ.get(MODEL_URI_ENV) or (settings.serve.model_uri if serve else None) or settings.registry.alias


def _has_card(uri: str, settings: Settings) -> bool:
    return storage.exists(storage.join(uri, "model.json"), settings.storage)


def resolve_model(
    ref: str | None = None, settings: Settings | None = None, *, must_exist: bool = True, serve: bool = False
) -> ResolvedModel:
    """A model reference -> its directory (and registry version). `ref`: a directory (local or s3://),
    `models:/NAME@ALIAS`, `models:/NAME/VERSION`, or a bare alias (`production`); None: $RAYDETECT_MODEL_URI,
    then `serve.model_uri` (for Serve), then the serving alias. An alias the registry does not hold falls
    back to `<workdir>/models/<alias>` (today's convention). `must_exist=False` (Serve's builder) returns
    a directory without looking for its model.json (the replica's load then says what is wrong)."""
    settings = settings or load_settings()
    ref = (ref or _default_ref(settings, serve)).strip()
    parsed = parse_registry_ref(ref, settings)
    if parsed is not None:
        return replace(_registry_source(settings, *parsed), ref=ref)
    if storage.is_s3(ref) or "/" in ref or ref.startswith(".") or _has_card(ref, settings):
        uri = storage.normalize(ref)
        if must_exist and not _has_card(uri, settings):
            raise ValueError(f"model {ref!r}: no model.json there (give a model directory, local or s3://, or a "
                             f"registry reference such as models:/{settings.registry.model_name}@production)")
        return ResolvedModel(uri, None, ref)
    return _resolve_alias(ref, settings, must_exist)


def _resolve_alias(alias: str, settings: Settings, must_exist: bool) -> ResolvedModel:
    if store_exists(settings) and alias_holder(settings, alias) is not None:
        return replace(_registry_source(settings, settings.registry.model_name, None, alias), ref=alias)
    fallback = storage.normalize(str(settings.workdir_path / "models" / alias))
    if must_exist and not _has_card(fallback, settings):
        raise ValueError(f"model {alias!r}: no registry alias {alias!r} at {settings.mlflow_uri()} and no "
                         f"model.json in {fallback}")
    return ResolvedModel(fallback, None, alias)


def resolve_model_uri(ref: str | None = None, settings: Settings | None = None, *, must_exist: bool = True,
                      serve: bool = False) -> str:
    """The model directory of `ref` (see `resolve_model`)."""
    return resolve_model(ref, settings, must_exist=must_exist, serve=serve).uri
