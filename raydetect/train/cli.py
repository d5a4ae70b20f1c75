"""`raydetect train` and `raydetect tune`. Heavy imports (torch, ray) happen inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raydetect.cli_options import ConfigOption, SetOption, settings_from


def _settings(config: Path | None, overrides: list[str] | None, **flags: object):

    return settings_from(config, overrides, **flags)


def _csv(text: str | None, cast: type = str) -> list | None:
    if text is None:
        return None
    return [cast(part.strip()) for part in text.split(",") if part.strip()]


def train(
    root: Annotated[str, typer.Argument(help="Dataset root (Kaggle layout), local or s3://.")],
    backbone: Annotated[
        str | None,
        typer.Option(help="resnet18/34/50/101, efficientnet_lite0/1/2, clip_vit_b16/l14, clip_vit_b16_mid "
                     "(head on blocks 4-8), dinov2_vits14, tinycnn."),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(help="imagenet (the backbone's pretrained weights: CLIP's, DINOv2's) | none | a state_dict."),
    ] = None,
    input_filter: Annotated[
        str | None,
        typer.Option(help="none | npr (neighbouring-pixel residual in front of the stem) | dire (the DIRE map of "
                          "the dire.diffusion UNet, see `raydetect dire fit-diffusion`)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per fold (early stopping may end sooner).")] = None,
    workers: Annotated[int | None, typer.Option(help="Ray Train workers (data-parallel).")] = None,
    fold: Annotated[int | None, typer.Option(help="Validate on this fold of a 5-fold split (with --cv 1).")] = None,
    cv: Annotated[int | None, typer.Option(help="k-fold cross-validation: train every fold, print mean ± std.")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Model directory to write (local or s3://).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Per-worker batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Training/inference image size (default images.size).")] = None,
    crop_size: Annotated[
        int | None, typer.Option(help="Train on random native-resolution crops of this side (faster; no resampling).")
    ] = None,
    storage_path: Annotated[str | None, typer.Option(help="Ray Train checkpoints (local or s3://).")] = None,
    recipe: Annotated[
        str | None, typer.Option(help="finetune (Ray Train) | probe (logistic regression on frozen features).")
    ] = None,
    adv: Annotated[
        str | None, typer.Option(help="Adversarial training: none | fgsm | pgd (loss: mean of clean and attacked).")
    ] = None,
    adv_eps: Annotated[
        float | None, typer.Option(help="Its L-inf budget in grey levels of an 8-bit image: 2 means 2/255.")
    ] = None,
    leave_generator_out: Annotated[
        bool | None,
        typer.Option("--leave-generator-out/--no-leave-generator-out",
                     help="Also train without each generator in turn: a train-on-others / test-on-one table."),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Fine-tune a detector with Ray Train (or fit a linear probe on frozen features) on one fold or with
    k-fold CV; log to MLflow; export the model."""
    from raydetect.train.cv import format_cv_table, format_generalisation, train_detector

    settings = _settings(
        config,
        overrides,
        **{
            "train.backbone": backbone,
            "train.weights": weights,
            "train.input_filter": input_filter,
            "train.epochs": epochs,
            "train.workers": workers,
            "train.fold": fold,
            "train.cv": cv,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.image_size": image_size,
            "train.crop_size": crop_size,
            "train.storage_path": storage_path,
            "train.recipe": recipe,
            "train.adv": adv,
            "train.adv_eps_255": adv_eps,
            "train.leave_generator_out": leave_generator_out,
        },
    )
    outcome = train_detector(root, settings, output=output)
    k = len(outcome.runs)
    title = f"{settings.train.backbone} ({settings.train.weights}): " + (
        f"{k}-fold cross-validation" if k > 1 else f"fold {outcome.runs[0].fold}"
    )
    typer.echo(format_cv_table(outcome.table, title))
    typer.echo(f"wall time: {outcome.wall_s:.1f} s")
    typer.echo(f"model: {outcome.model_uri}  (best fold {outcome.best_fold})")
    if outcome.generalisation is not None:
        typer.echo(format_generalisation(outcome.generalisation))
    if outcome.mlflow_run_id:
        typer.echo(f"mlflow run: {outcome.mlflow_run_id}  ({settings.mlflow_uri()})")
    if "registry_version" in outcome.extra:
        typer.echo(f"registered: {settings.registry.model_name} version {outcome.extra['registry_version']} "
                   f"(raydetect model promote {outcome.extra['registry_version']})")


def tune(
    root: Annotated[str, typer.Argument(help="Dataset root (Kaggle layout), local or s3://.")],
    num_samples: Annotated[int | None, typer.Option(help="Trials to sample.")] = None,
    cv: Annotated[int, typer.Option(help="Folds per trial (objective: mean CV F1); 1 = one quick fold.")] = 1,
    fold: Annotated[int, typer.Option(help="The validation fold when --cv 1.")] = 0,
    backbones: Annotated[
        str, typer.Option(help="Comma-separated backbones to search.")
    ] = "efficientnet_lite0,resnet18",
    input_filters: Annotated[
        str, typer.Option(help="Comma-separated input filters to search (none, npr, dire).")
    ] = "none,npr",
    lr_min: Annotated[float, typer.Option(help="Learning rate range (log-uniform).")] = 1e-4,
    lr_max: Annotated[float, typer.Option()] = 3e-3,
    wd_min: Annotated[float, typer.Option(help="Weight decay range (log-uniform).")] = 1e-6,
    wd_max: Annotated[float, typer.Option()] = 1e-2,
    augment_min: Annotated[float, typer.Option(help="Augmentation strength range (uniform).")] = 0.0,
    augment_max: Annotated[float, typer.Option()] = 1.0,
    epochs: Annotated[str, typer.Option(help="Comma-separated epoch counts to choose from.")] = "3,5,8",
    grace_period: Annotated[int | None, typer.Option(help="ASHA: epochs before a trial may be stopped.")] = None,
    workers: Annotated[int | None, typer.Option(help="Ray Train workers per trial.")] = None,
    weights: Annotated[str | None, typer.Option(help="imagenet | none for every trial.")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Folder for best_config.* and leaderboard.csv.")
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Search lr, weight decay, backbone, input filter, augmentation and epochs with Ray Tune + ASHA
    (objective: CV F1)."""
    from raydetect.train.tune import format_leaderboard, search_space, tune_detector

    settings = _settings(
        config, overrides, **{"train.workers": workers, "train.weights": weights, "train.tune_num_samples": num_samples}
    )
    space = search_space(
        backbones=_csv(backbones),
        input_filters=_csv(input_filters),
        lr=(lr_min, lr_max),
        weight_decay=(wd_min, wd_max),
        augment=(augment_min, augment_max),
        epochs=_csv(epochs, int),
    )
    outcome = tune_detector(
        root, settings, num_samples=num_samples, cv=cv, fold=fold, space=space, output=output, grace_period=grace_period
    )
    typer.echo(format_leaderboard(outcome.leaderboard))
    typer.echo(f"best ({'mean CV F1' if cv > 1 else 'F1'} {outcome.best_objective:.4f}): {outcome.best_config}")
    typer.echo(f"wall time: {outcome.wall_s:.1f} s")
    typer.echo(f"written: {outcome.output}/best_config.yaml (use with `raydetect train --config`), leaderboard.csv")


def register(app: typer.Typer) -> None:
    """Add `train` and `tune` to the main `raydetect` app."""
    app.command("train")(train)
    app.command("tune")(tune)
