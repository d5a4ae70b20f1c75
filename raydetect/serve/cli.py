"""`raydetect serve`: run the online detector locally (Ray Serve) and print its URL."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from raydetect.cli_options import ConfigOption, SetOption

# Defined here, not imported from raydetect.cli, so `python -m raydetect.cli` has no import cycle.


def serve(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model directory (local or s3://) or registry reference (production, "
                     "models:/raydetect@production, models:/raydetect/3). Default: $RAYDETECT_MODEL_URI, "
                     "serve.model_uri, the registry's production alias, then <workdir>/models/production."),
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default serve.port, 8000).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1; 0.0.0.0 = all).")] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="File holding the API key (or set $RAYDETECT_API_KEY). Without either: no auth."),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Serve a model over HTTP on this machine: web page at /, API at /v1, docs at /docs. Ctrl-C or SIGTERM
    drains it (requests in flight are answered, new ones refused) and stops."""
    from raydetect.config import load_settings
    from raydetect.serve.local import drain_local, start_local, stop_local

    key_file = str(api_key_file.expanduser().resolve()) if api_key_file else None
    flags = {"serve.port": port, "serve.host": host, "serve.api_key_file": key_file}
    settings = load_settings(config, [*(overrides or []), *(f"{k}={v}" for k, v in flags.items() if v is not None)])
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, docker stop, Kubernetes: the same as Ctrl-C, from the start
    try:
        url = start_local(settings, model)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        stop_local()
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # stopped while starting: nothing was served, nothing to drain
        typer.echo("stopped before serving; shutting down …")
        stop_local()
        return
    typer.echo(f"Serving at {url}  (API docs: {url}docs, health: {url}healthz). Press Ctrl-C to stop.")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        typer.echo("stopping: refusing new requests, answering those in flight …")
        left = drain_local(settings.serve.drain_timeout_s)
        if left:
            typer.echo(f"warning: {left} requests were still in flight after {settings.serve.drain_timeout_s:g} s")
    finally:
        stop_local()


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
