"""Options and config loading shared by every stage's CLI (no heavy imports: `--help` stays fast)."""

from __future__ import annotations

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
