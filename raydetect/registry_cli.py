"""`raydetect model register | list | promote | rollback | archive | deploy`: the registry (raydetect/registry.py)
and pointing a running Serve application at the version it serves (raydetect/serve/redeploy.py)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from raydetect.cli_options import ConfigOption, SetOption, settings_from

app = typer.Typer(help="The model registry: register, list, promote through the gates, roll back, archive.",
                  no_args_is_help=True)
EvaluationOption = Annotated[
    str | None, typer.Option("--evaluation", help="`raydetect evaluate`'s JSON summary: its figures are recorded.")
]
EvalDataOption = Annotated[
    str | None, typer.Option("--eval-data", help="What the evaluation ran on (default: the report's context).")
]


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _read_json(uri: str, settings) -> dict[str, Any]:
    from raydetect import storage

    return json.loads(storage.read_text(uri, settings.storage))


@app.command("register")
def register_cmd(
    model_dir: Annotated[str, typer.Argument(metavar="DIR", help="A model directory (local or s3://).")],
    data: Annotated[str | None, typer.Option("--data", help="Its training data root: fingerprint, generators.")] = None,
    evaluation: EvaluationOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Register a model directory as a new version (with its card's metrics, threshold, data and code)."""
    from raydetect import registry

    settings = settings_from(config, overrides)
    training = None
    if data is not None:
        from raydetect.data.manifest import read_manifest

        training = read_manifest(data, split="train", settings=settings)
    try:
        version = registry.register(settings, model_dir, training=training,
                                    evaluation=_read_json(evaluation, settings) if evaluation else None)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"registered {settings.registry.model_name} version {version}: {model_dir}")


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ["version", "card_version", "f1", "auc_roc", "figures", "aliases", "status"]

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "-")

    cells = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


@app.command("list")
def list_cmd(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """The registered versions, newest first: metrics, which holds the serving alias, archived ones."""
    from raydetect import registry

    settings = settings_from(config, overrides)
    rows = registry.list_versions(settings)
    if not rows:
        typer.echo(f"no versions of {settings.registry.model_name!r} at {settings.mlflow_uri()}")
        return
    typer.echo(format_table(rows))


@app.command("promote")
def promote_cmd(
    version: Annotated[str, typer.Argument(help="The registry version to serve.")],
    evaluation: EvaluationOption = None,
    eval_data: EvalDataOption = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even when gates fail (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded on the version).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Give the serving alias to VERSION when it clears every gate; exit 1 naming each failed gate."""
    from raydetect import registry

    settings = settings_from(config, overrides)
    try:
        if evaluation:
            registry.attach_evaluation(settings, version, _read_json(evaluation, settings), eval_data, evaluation)
        outcome = registry.promote(settings, version, force=force, reason=reason)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    for gate in outcome.gates:
        typer.echo(gate.line())
    alias = settings.registry.alias
    if not outcome.passed and not outcome.forced:
        names = ", ".join(g.name for g in outcome.failed)
        typer.secho(f"refused: version {version} failed {names}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    how = f"forced past {', '.join(g.name for g in outcome.failed)}" if outcome.failed else "all gates passed"
    typer.echo(f"version {version} now holds {alias!r} ({how}; previous: {outcome.previous or 'none'})")


@app.command("rollback")
def rollback_cmd(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Give the serving alias back to its previous holder (history kept)."""
    from raydetect import registry

    settings = settings_from(config, overrides)
    try:
        current, target = registry.rollback(settings)
    except ValueError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{settings.registry.alias!r}: version {current} -> {target}")


@app.command("archive")
def archive_cmd(
    version: Annotated[str, typer.Argument(help="The registry version to decommission.")],
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Decommission VERSION: its aliases removed, its model directory and history kept."""
    from raydetect import registry

    settings = settings_from(config, overrides)
    try:
        registry.archive(settings, version)
    except ValueError as exc:
        raise _fail(exc) from exc
    typer.echo(f"archived version {version} (artifacts kept)")


@app.command("deploy")
def deploy_cmd(
    address: Annotated[
        str, typer.Option("--address", "-a", envvar="RAY_DASHBOARD_ADDRESS", help="The cluster's dashboard.")
    ] = "http://127.0.0.1:8265",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="A model reference (default: the one the application "
                                 "records, else the serving alias).")
    ] = None,
    app_name: Annotated[str, typer.Option("--app", help="The Serve application.")] = "raydetect",
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Point the running Serve application at the version the alias holds now (after a promote or
    rollback): its replicas reload the model in place, without a restart."""
    from raydetect.serve.redeploy import redeploy

    settings = settings_from(config, overrides)
    try:
        resolved, changed = redeploy(settings, address, model, app_name)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise _fail(exc) from exc
    version = f" (registry version {resolved.version})" if resolved.version else ""
    if changed:
        typer.echo(f"{app_name}: now serving {resolved.uri}{version}; replicas reload it in place")
    else:
        typer.echo(f"{app_name}: already serving {resolved.uri}{version}; nothing deployed")
