"""Options and config loading shared by every stage's CLI (no heavy imports: `--help` stays fast)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated

import typer

from raydetect.config import Settings, load_settings

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file over the embedded defaults.", exists=True)
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting: section.key=value (repeatable).")
]


def settings_from(config: Path | None, overrides: list[str] | None, **flags: object) -> Settings:
    """Defaults < YAML file < --set overrides < explicit flags (dotted names; None means 'not given')."""
    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_settings(config, [*(overrides or []), *extra])


# --- the `ray job submit` entry points (jobs/*.py, plain argparse) --------------------------------------------


def add_job_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every job shares: --config, --set (repeatable) and --ray-address."""
    parser.add_argument("--config", default=None, help="YAML config over the embedded defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--ray-address", default=None, help="default: the cluster the job runs on")
    return parser


def job_settings(args: argparse.Namespace) -> Settings:
    """Plain log lines for the job's driver log, and the settings of `add_job_arguments`' options."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return load_settings(args.config, args.overrides)
