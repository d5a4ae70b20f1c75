"""The `raydetect` command: one subcommand per stage. Heavy imports happen inside the commands."""

from __future__ import annotations

from typing import Annotated

import typer

from raydetect.cli_options import ConfigOption, SetOption, settings_from

app = typer.Typer(
    name="raydetect",
    help="Tell AI-generated images from real photographs at scale, on Ray.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)




@app.command()
def version() -> None:
    """Print the versions of raydetect and its engines, and whether CUDA is available."""
    from importlib.metadata import version as dist_version

    import torch

    import raydetect

    rows = {
        "raydetect": raydetect.__version__,
        "ray": dist_version("ray"),
        "torch": torch.__version__,
        "torchvision": dist_version("torchvision"),
        "diffusers": dist_version("diffusers"),
        "cuda available": str(torch.cuda.is_available()),
    }
    for name, value in rows.items():
        typer.echo(f"{name:<15}{value}")


@app.command("config")
def show_config(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Print the effective configuration as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(settings_from(config, overrides).model_dump(), sort_keys=False))


# --- stages -------------------------------------------------------------------------------------------
# Each stage lives in its own module and registers here (one line each).
from raydetect.data import cli as data_cli  # noqa: E402

app.add_typer(data_cli.app, name="data")
from raydetect.dire import cli as dire_cli  # noqa: E402

app.add_typer(dire_cli.app, name="dire")
from raydetect.evaluate import cli as evaluate_cli  # noqa: E402

app.command("evaluate")(evaluate_cli.evaluate)
from raydetect.explain import cli as explain_cli  # noqa: E402

app.command("explain")(explain_cli.explain)
from raydetect import registry_cli  # noqa: E402

app.add_typer(registry_cli.app, name="model")
from raydetect.monitor import cli as monitor_cli  # noqa: E402

app.add_typer(monitor_cli.app, name="monitor")
from raydetect.score import cli as score_cli  # noqa: E402

app.command("score")(score_cli.score)
from raydetect.serve import cli as serve_cli  # noqa: E402

app.command("serve")(serve_cli.serve)
from raydetect.train.cli import register as register_train  # noqa: E402

register_train(app)  # `train` and `tune`


@app.command()
def demo(
    workdir: Annotated[str | None, typer.Option(help="Where every output goes (default: config workdir).")] = None,
    n_pairs: Annotated[int | None, typer.Option(help="Benchmark size in real/AI pairs.")] = None,
    serve_check: Annotated[bool, typer.Option(help="End with one call to a Serve deployment.")] = True,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Run every stage end to end: benchmark, verify, train, score, report, Serve smoke call."""
    from raydetect.demo import run_demo

    run_demo(settings_from(config, overrides, workdir=workdir), n_pairs=n_pairs, serve_check=serve_check)


if __name__ == "__main__":
    app()
