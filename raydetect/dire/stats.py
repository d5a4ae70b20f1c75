"""The non-neural DIRE classifier: a scikit-learn Pipeline (StandardScaler + LogisticRegression) on each
view's error statistics (`models.dire.error_features`), one logit per view, averaged per image (the view
policy's `mean`, as `DireDetector` scores), with the project's grouped folds (`train.cv.fold_assignment`:
ROOT/folds.parquet, else a seeded StratifiedGroupKFold), and a CV table in the CNNs' format
(`train.cv.format_cv_table`). `leave_generator_out` trains without one generator's AI images and
validates on them, fold by fold, with the share of its AI images caught and of the real images passed
(P(AI) >= 0.5), as the CNNs' generalisation table (`train.cv.generalisation_table`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raydetect.dire.maps import KEY
from raydetect.evaluate.metrics import binary_metrics
from raydetect.models.dire import FEATURE_NAMES

METRICS = ("accuracy", "precision", "recall", "f1", "auc")
HELD_OUT = ("ai_caught", "real_passed")  # leave-one-generator-out rows only


def usable(features: pd.DataFrame) -> pd.DataFrame:
    """Labelled rows with statistics (unreadable images dropped)."""
    ok = features["label"].notna() & features[list(FEATURE_NAMES)].notna().all(axis=1)
    return features[ok].assign(label=lambda f: f["label"].astype(int))


def fit_pipeline(rows: pd.DataFrame, c: float = 1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    return pipeline.fit(rows[list(FEATURE_NAMES)].to_numpy(np.float64), rows["label"].to_numpy())


def image_scores(pipeline, rows: pd.DataFrame) -> pd.DataFrame:
    """P(AI) per image: the views' logits averaged (as `DireDetector.predict_images` with `mean`)."""
    logits = pipeline.decision_function(rows[list(FEATURE_NAMES)].to_numpy(np.float64))
    per_image = (
        rows[[KEY, "label"]]
        .assign(logit=logits)
        .groupby(KEY, sort=False)
        .agg(label=("label", "first"), logit=("logit", "mean"))
    )
    return per_image.assign(prob_ai=1 / (1 + np.exp(-per_image["logit"]))).reset_index()


def _metrics(scores: pd.DataFrame) -> dict[str, float]:
    m = binary_metrics(scores["label"].to_numpy(), scores["prob_ai"].to_numpy())
    return {**{k: m[k] for k in METRICS if k in m}, "auc": m["auc_roc"], "n": m["n"]}


def _with_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-fold rows, then `mean` and `std` rows (the CNNs' CV table layout)."""
    columns = [m for m in (*METRICS, *HELD_OUT) if m in frame.columns]
    mean = {"fold": "mean", **{m: frame[m].mean() for m in columns}}
    std = {"fold": "std", **{m: frame[m].std(ddof=0) for m in columns}}
    return pd.concat([frame.astype({"fold": object}), pd.DataFrame([mean, std])], ignore_index=True)


def cross_validate(features: pd.DataFrame, c: float = 1.0, exclude_train: pd.Series | None = None) -> pd.DataFrame:
    """Grouped k-fold CV over the `fold` column: per-fold metrics, then `mean` and `std` rows."""
    return cross_validate_oof(features, c, exclude_train)[0]


def cross_validate_oof(features: pd.DataFrame, c: float = 1.0, exclude_train: pd.Series | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """`cross_validate`'s table and its out-of-fold rows, one per image (path, fold, label, logit, prob_ai and
    the images' `CARRIED` columns): the CNNs' `cv_predictions.parquet`, so `benchmarks/recipe_table.py` puts a
    DIRE statistics model beside them and in their ensembles."""
    from raydetect.train.cv import CARRIED

    rows = usable(features)
    carried = [c for c in ("path", *CARRIED) if c in rows.columns]
    per_image = rows.drop_duplicates(KEY).set_index(KEY)[carried]
    table, oof = [], []
    for fold in sorted(rows["fold"].unique()):
        train, val = rows[rows["fold"] != fold], rows[rows["fold"] == fold]
        if exclude_train is not None:
            train = train[~exclude_train.reindex(train.index, fill_value=False)]
        scores = image_scores(fit_pipeline(train, c), val)
        table.append({"fold": int(fold), **_metrics(scores)})
        oof.append(scores.join(per_image, on=KEY).assign(fold=int(fold)))
    return _with_summary(pd.DataFrame(table)), pd.concat(oof, ignore_index=True).drop(columns=[KEY])


def leave_generator_out(features: pd.DataFrame, generator: str, c: float = 1.0) -> pd.DataFrame:
    """CV that never trains on `generator`'s AI images and validates on the validation folds' real images
    and that generator's AI images only."""
    rows = usable(features)
    held = rows["generator"].eq(generator) & rows["label"].eq(1)
    if not (rows["label"].eq(1) & ~held).any():
        raise ValueError(f"leave-{generator}-out needs AI images of another generator to train on")
    table = []
    for fold in sorted(rows["fold"].unique()):
        train = rows[(rows["fold"] != fold) & ~held]
        val = rows[(rows["fold"] == fold) & (held | rows["label"].eq(0))]
        if val["label"].nunique() < 2:
            continue
        scores = image_scores(fit_pipeline(train, c), val)
        called_ai = scores["prob_ai"].to_numpy() >= 0.5
        labels = scores["label"].to_numpy()
        table.append({"fold": int(fold), **_metrics(scores), "ai_caught": float(called_ai[labels == 1].mean()),
                      "real_passed": float((~called_ai[labels == 0]).mean())})  # fmt: skip
    return _with_summary(pd.DataFrame(table))


def format_table(table: pd.DataFrame, title: str = "") -> str:
    from raydetect.train.cv import format_cv_table

    text = format_cv_table(table, title)
    if all(c in table.columns for c in HELD_OUT) and (table["fold"] == "mean").any():
        mean = table[table["fold"] == "mean"].iloc[0]
        text += f"\nits AI images caught {mean['ai_caught']:.4f}, real images passed {mean['real_passed']:.4f}"
    return text


def export_model(features: pd.DataFrame, maps_config: dict, settings, uri: str, name: str = "dire", **card) -> str:
    """Fit the statistics classifier on every usable row and write a DIRE model directory (`kind: dire`):
    the UNet the maps were made with + the classifier, with the maps' reconstruction settings (so scoring
    computes the statistics the classifier was fitted on); loadable by `bundle.load_detector`."""
    from raydetect.models.dire import load_unet, save_dire_model

    diffusion = maps_config["diffusion"]
    dire = settings.dire.model_copy(update={k: v for k, v in maps_config.items() if k != "diffusion"})
    unet, scheduler_config = load_unet(diffusion)
    pipeline = fit_pipeline(usable(features), dire.classifier_c)
    params = {"diffusion": diffusion, **card.pop("params", {})}
    return save_dire_model(uri, unet, scheduler_config, pipeline, dire, settings.storage, name=name, params=params,
                           **card)


def fit_classifier(
    maps: str,
    model_out: str,
    settings,
    name: str = "dire",
    version: str | None = None,
    leave_out: str | None = None,
    log=print,
) -> tuple[str, dict[str, float]]:
    """`raydetect dire fit-classifier` (and the demo's DIRE stage): the grouped CV table of the statistics
    classifier on a `dire maps` folder (and the leave-`leave_out`-out table), printed with `log`, then the
    classifier fitted on every fold into a DIRE model directory. Returns its URI and the CV metrics."""
    import json
    from datetime import UTC, datetime

    from raydetect import storage
    from raydetect.dire.maps import CONFIG_FILE, read_features
    from raydetect.models.bundle import CV_PREDICTIONS_FILE, save_beside_model

    features = read_features(maps, settings)
    table, oof = cross_validate_oof(features, settings.dire.classifier_c)
    log(format_table(table, "DIRE statistics, grouped CV (image level)"))
    mean = table[table["fold"] == "mean"].iloc[0]
    metrics = {f"cv_{m}": float(mean[m]) for m in ("f1", "auc", "accuracy")}
    if leave_out:
        try:
            held = leave_generator_out(features, leave_out, settings.dire.classifier_c)
        except ValueError as exc:
            log(f"leave-{leave_out}-out: skipped ({exc})")
        else:
            log(format_table(held, f"leave-{leave_out}-out"))
            held_mean = held[held["fold"] == "mean"].iloc[0]
            metrics.update({f"leave_{leave_out}_out_{m}": float(held_mean[m])
                            for m in ("f1", "auc", "ai_caught", "real_passed")})  # fmt: skip
    made_with = json.loads(storage.read_text(storage.join(maps, CONFIG_FILE), settings.storage))
    uri = export_model(
        features,
        made_with,
        settings,
        model_out,
        name=name,
        version=version or datetime.now(UTC).strftime("dire-%Y%m%d%H%M%S"),
        metrics=metrics,
    )
    save_beside_model(oof, uri, CV_PREDICTIONS_FILE, settings.storage)  # benchmarks/recipe_table.py reads it
    return uri, metrics
