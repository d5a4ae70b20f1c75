"""`raydetect data …`: dataset verification, folds, and the offline benchmark."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Datasets: verify, folds, build the offline benchmark.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file over the embedded defaults.", exists=True)
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting: section.key=value (repeatable).")
]


def ensure_ray() -> None:
    """Join the cluster in $RAY_ADDRESS (or a running local one), else start a local Ray; no-op if up."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False)


@app.command("verify")
def verify_command(
    root: Annotated[str, typer.Argument(help="Dataset root: a local folder or s3://bucket/prefix.")],
    split: Annotated[
        str, typer.Option(help="auto | train | test | folder (auto: train.csv, else the folder).")
    ] = "auto",
    json_path: Annotated[str | None, typer.Option("--json", help="Write the full report as JSON here.")] = None,
    groups_out: Annotated[
        str | None, typer.Option("--groups-out", help="Write near-duplicate groups as CSV file_name,group.")
    ] = None,
    near_dup_distance: Annotated[int, typer.Option(help="dHash bits two near-duplicates may differ by.")] = 4,
    auc_threshold: Annotated[float, typer.Option(help="One-feature AUC above which a shortcut blocks.")] = 0.9,
    allow_bad_files: Annotated[bool, typer.Option(help="Unreadable files warn instead of blocking.")] = False,
    include_test: Annotated[bool, typer.Option(help="Also read test.csv (train/test duplicates).")] = True,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Check a dataset: unreadable/missing files, duplicates, near-duplicates, class balance, per-class
    formats/sizes/JPEG qualities, and a shortcut audit. Exit 0 when clean, 1 on blocking problems."""
    from raydetect.cli import settings_from
    from raydetect.data.manifest import ManifestError
    from raydetect.data.verify import VerifyOptions, summary_text, verify, write_groups, write_report

    settings = settings_from(config, overrides)
    options = VerifyOptions(
        near_dup_distance=near_dup_distance,
        auc_threshold=auc_threshold,
        allow_bad_files=allow_bad_files,
        include_test=include_test,
        seed=settings.seed,
    )
    ensure_ray()
    try:
        report = verify(root, split, settings, options)
    except ManifestError as exc:
        typer.echo(f"RESULT: FAIL — the manifest is not usable:\n  - {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(summary_text(report))
    if json_path:
        write_report(report, json_path, settings)
        typer.echo(f"Full report: {json_path}")
    if groups_out:
        write_groups(report, groups_out, settings)
        typer.echo(f"Near-duplicate groups: {groups_out}")
    raise typer.Exit(0 if report["ok"] else 1)


@app.command("folds")
def folds_command(
    root: Annotated[str, typer.Argument(help="Dataset root with train.csv (or real/ + ai/), local or s3://.")],
    k: Annotated[int, typer.Option("--k", help="Number of folds.")] = 5,
    seed: Annotated[int | None, typer.Option(help="Shuffle seed (default: the config's seed).")] = None,
    near_dups: Annotated[
        bool, typer.Option(help="Without a `group` column, group near-duplicates (reads every image once).")
    ] = True,
    near_dup_distance: Annotated[int, typer.Option(help="dHash bits two near-duplicates may differ by.")] = 4,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Stratified k-fold assignment that never splits a group; writes ROOT/folds.parquet."""
    from raydetect.cli import settings_from
    from raydetect.data.folds import assign_folds, fold_summary, write_folds
    from raydetect.data.manifest import ManifestError, read_manifest

    settings = settings_from(config, overrides)
    seed = settings.seed if seed is None else seed
    try:
        df = read_manifest(root, "train", settings)
    except ManifestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    source = "the `group` column"
    if "group" not in df.columns:
        if near_dups:
            from raydetect.data.verify import VerifyOptions, collect_facts, near_duplicate_groups

            ensure_ray()
            facts = collect_facts(df, settings, VerifyOptions(near_dup_distance=near_dup_distance))
            df["near_dup_group"] = near_duplicate_groups(facts["dhash"], near_dup_distance).to_numpy()
            n = int(df["near_dup_group"].notna().sum())
            source = f"near-duplicate clusters ({df['near_dup_group'].nunique()} clusters, {n} images)"
        else:
            source = "one group per image"
    try:
        folds = assign_folds(df, k=k, seed=seed)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    uri = write_folds(df.attrs["root"], folds, settings)
    typer.echo(f"{len(folds)} images, {k} folds, seed {seed}, grouped by {source}")
    typer.echo(fold_summary(folds).to_string(index=False))
    typer.echo(f"Wrote {uri}")
