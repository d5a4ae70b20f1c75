"""`raydetect data …`: dataset verification, folds, and the offline benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raydetect.cli_options import ConfigOption, SetOption, settings_from
from raydetect.cluster import connect

app = typer.Typer(help="Datasets: verify, folds, build the offline benchmark.", no_args_is_help=True)



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
    auc_threshold: Annotated[float, typer.Option(help="One-feature AUC above which a container fact blocks.")] = 0.9,
    content_auc_limit: Annotated[
        float | None,
        typer.Option(help="One-feature AUC above which a content feature (file size, sharpness) blocks; "
                          "default: reported only."),
    ] = None,
    allow_bad_files: Annotated[bool, typer.Option(help="Unreadable files warn instead of blocking.")] = False,
    include_test: Annotated[bool, typer.Option(help="Also read test.csv (train/test duplicates).")] = True,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Check a dataset: unreadable/missing files, duplicates, near-duplicates, class balance, per-class
    formats/sizes/JPEG qualities, and a shortcut audit. Exit 0 when clean, 1 on blocking problems."""
    from raydetect.data.manifest import ManifestError
    from raydetect.data.verify import VerifyOptions, summary_text, verify, write_groups, write_report

    settings = settings_from(config, overrides)
    options = VerifyOptions(
        near_dup_distance=near_dup_distance,
        auc_threshold=auc_threshold,
        content_auc_limit=content_auc_limit,
        allow_bad_files=allow_bad_files,
        include_test=include_test,
        seed=settings.seed,
    )
    connect()
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

            connect()
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


# --- the offline benchmark (issue 4) -------------------------------------------------------------------


def _int_list(text: str | None) -> list[int] | None:
    """`224,384` -> [224, 384]; None stays None (the config's value)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from exc


@app.command("build-benchmark")
def build_benchmark_command(
    out: Annotated[str, typer.Argument(help="Output root: a local folder or s3://bucket/prefix.")],
    n_pairs: Annotated[int | None, typer.Option(help="Real/AI pairs (default: benchmark.n_pairs).")] = None,
    generators: Annotated[
        str | None, typer.Option(help="Comma-separated: esrgan,esrgan-anime,waifu2x,ddpm (default: config).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the config's seed).")] = None,
    sizes: Annotated[
        str | None, typer.Option(help="Comma-separated image sides drawn per pair, e.g. 224,384,512 (default: config).")
    ] = None,
    test_sizes: Annotated[
        str | None, typer.Option(help="The test split's sides (default: --sizes if given, else benchmark.test_sizes).")
    ] = None,
    hardneg_share: Annotated[
        float | None, typer.Option(help="Share of real images resized/blurred to their AI pair's sharpness.")
    ] = None,
    encoding: Annotated[str | None, typer.Option(help="png | jpeg, the same for both classes.")] = None,
    diffusion_model: Annotated[
        str | None, typer.Option(help="A diffusers model id or folder for `ddpm` (default: fit our own, cached).")
    ] = None,
    sources: Annotated[
        str | None,
        typer.Option(help="Comma-separated photo sources, e.g. skimage,mate-backgrounds (an unknown name "
                          "is rejected with the list of known ones); default: every installed one."),
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Run in this process instead of on Ray.")] = False,
    force: Annotated[
        bool, typer.Option(help="Rebuild even if OUT holds this build; write into a non-empty OUT.")
    ] = False,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Build the offline benchmark (Kaggle layout): real photo crops and their AI counterparts from several
    generators, hard negatives, label-independent processing, one encoding, sizes drawn per pair (the same
    for a real image and its AI counterpart). Skipped when OUT already holds it."""
    from raydetect.data.benchmark import BenchmarkError, build_from_settings
    from raydetect.data.benchmark.degrade import check_encoding

    settings = settings_from(
        config,
        overrides,
        **{
            "benchmark.n_pairs": n_pairs,
            "benchmark.sizes": _int_list(sizes),
            # --sizes alone sets every split's sides; --test-sizes the test split's
            "benchmark.test_sizes": _int_list(test_sizes) or ("null" if sizes else None),
            "benchmark.hardneg_share": hardneg_share,
            "benchmark.encoding": encoding,
            "benchmark.diffusion_model": diffusion_model,
            "seed": seed,
        },
    )
    extra: dict = {"use_ray": not local, "force": force, "log": typer.echo}
    if generators:
        extra["generators"] = [g.strip() for g in generators.split(",") if g.strip()]
    if sources:
        extra["sources"] = [s.strip() for s in sources.split(",") if s.strip()]
    try:
        check_encoding(settings.benchmark.encoding)
        if not local:
            connect()
        result = build_from_settings(out, settings, **extra)
    except (BenchmarkError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    counts = result.card.get("counts", {})
    typer.echo(f"{result.root}: {counts.get('images')} images ({counts.get('train_images')} train, "
               f"{counts.get('test_images')} test), {'built' if result.built else 'reused'} in {result.seconds:.0f} s")


@app.command("fit-generator")
def fit_generator_command(
    out: Annotated[
        str | None, typer.Option(help="Model folder (default: <workdir>/generators/ddpm-<key>, the build's cache).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (default: benchmark.fit_steps).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the config's seed).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: benchmark.fit_threads).")] = None,
    force: Annotated[bool, typer.Option(help="Retrain even when the cached model exists.")] = False,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Train the small diffusers UNet that the `ddpm` generator uses (minutes on CPU; cached, so
    build-benchmark reuses it). The folder is a diffusers DDPM pipeline."""
    from raydetect.data.benchmark.diffusion import FitConfig, fit_generator, generator_dir
    from raydetect.data.benchmark.sources import find_photos

    settings = settings_from(
        config, overrides, **{"benchmark.fit_steps": steps, "benchmark.fit_threads": threads, "seed": seed}
    )
    fit = FitConfig(steps=settings.benchmark.fit_steps, seed=settings.seed)
    photos = find_photos()
    folder = Path(out) if out else generator_dir(Path(settings.workdir) / "generators", fit, photos)
    if not force and (folder / "unet").is_dir():
        typer.echo(f"{folder} exists (use --force to retrain)")
        return
    fit_generator(photos, folder, fit, threads=settings.benchmark.fit_threads, progress=True, log=typer.echo)


@app.command("photos")
def photos_command(
    sheet: Annotated[
        str | None, typer.Option("--sheet", help="Write contact sheets here (PNG; several pages get -2, -3, …).")
    ] = None,
    sources: Annotated[str | None, typer.Option(help="Comma-separated photo sources (default: all).")] = None,
    per_page: Annotated[int, typer.Option(help="Photos per contact-sheet page.")] = 80,
) -> None:
    """The benchmark's allow-listed real photographs found on this machine: counts per source and category,
    and optionally contact sheets to check them by eye."""
    from collections import Counter

    from raydetect.data.benchmark.sources import find_photos, write_contact_sheets

    photos = find_photos(tuple(s.strip() for s in sources.split(",")) if sources else None)
    for (source, category), n in sorted(Counter((p.source, p.category) for p in photos).items()):
        typer.echo(f"{source:32} {category:6} {n:4d}")
    typer.echo(f"{len(photos)} photos")
    if sheet:
        for path in write_contact_sheets(photos, sheet, per_page):
            typer.echo(f"contact sheet: {path}")
