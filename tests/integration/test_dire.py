"""DIRE end to end on the shared Ray cluster, with real parts at tiny sizes: fit-diffusion on a tiny
Kaggle-layout benchmark (real training images of the training folds only), maps as a Ray Data job (a
rerun resumes without duplicates), the statistics classifier's CV and model directory, and that model
scored by the batch pipeline into the prediction contract, equal to calling it directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from raydetect.config import load_settings
from raydetect.data.images import decode_image
from raydetect.dire.fit import CARD_NAME, fit_diffusion, training_reals
from raydetect.dire.maps import MAPS_DIR, dire_maps, read_features
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import ModelCard, load_card, load_detector, save_model
from raydetect.models.dire import FEATURE_NAMES, DireDetector, decode_map, load_unet
from raydetect.score import results
from raydetect.score.pipeline import score_run
from raydetect.score.predictor import CONTRACT_COLUMNS
from tests.datasets import make_kaggle_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = [
    "dire.fit.channels=[8,16]", "dire.fit.size=16", "dire.fit.steps=3", "dire.fit.batch_size=4",
    "dire.fit.pool=16", "dire.fit.threads=1", "dire.mode=onestep", "dire.noise_level=0.2", "dire.tile=32",
    "dire.batch_size=4", "dire.torch_threads=1", "score.read_block_rows=4", "score.batch_size=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def fitted(ray_cluster, tmp_path_factory):
    root = make_kaggle_dataset(tmp_path_factory.mktemp("dire") / "kaggle", n_pairs=10, size=32, n_test=2)
    work = root.parent
    settings = load_settings(overrides=[*TINY, f"workdir={work / 'work'}"])
    diffusion = fit_diffusion(str(root), work / "diffusion", settings, progress=False, log=None)
    return root, work, settings, diffusion


def test_fit_diffusion_uses_real_training_images_of_the_training_folds_only(fitted):
    root, _, settings, diffusion = fitted
    card = json.loads((diffusion / CARD_NAME).read_text())
    reals = training_reals(str(root), settings)
    assert set(reals["label"]) == {0} and reals["file_name"].str.startswith("train_data/").all()
    assert 0 not in set(reals["fold"]) and card["holdout_fold"] == 0 and 0 not in card["folds"]
    assert card["images"] == len(reals) < 10  # of the 10 real images, the held-out fold's are left out
    assert (diffusion / "unet" / "config.json").is_file() and card["config"]["prediction_type"] == "epsilon"


def test_maps_job_resumes_without_duplicates_then_a_dire_model_scores_like_any_other(fitted):
    from raydetect.cli import app

    root, work, settings, diffusion = fitted
    out = str(work / "maps")
    first = dire_maps(str(root), out, settings, diffusion=str(diffusion), limit=7, progress=False, log=None)
    second = dire_maps(str(root), out, settings, diffusion=str(diffusion), progress=False, log=None)
    third = dire_maps(str(root), out, settings, diffusion=str(diffusion), progress=False, log=None)
    assert (first["made_this_run"], second["made_this_run"], second["skipped_done"]) == (7, 13, 7)
    assert third["made_this_run"] == 0 and third["skipped_done"] == 20

    features = read_features(out)
    assert len(features) == 20 and features["key"].is_unique and (features["view"] == 0).all()
    assert features[list(FEATURE_NAMES)].notna().all().all() and set(features["label"]) == {0, 1}
    parts = pd.concat(pd.read_parquet(p) for p in sorted((Path(out) / "features").glob("*.parquet")))
    assert len(parts) == 20  # not only deduplicated on read: no row was written twice
    maps = sorted((Path(out) / MAPS_DIR).iterdir())
    assert len(maps) == 20 and {m.suffix for m in maps} == {".npy"}  # one lossless format, both classes
    assert decode_map(maps[0].read_bytes()).shape == (32, 32, 3)

    model = work / "model"
    result = CliRunner().invoke(
        app, ["dire", "fit-classifier", out, "--out", str(model), "--leave-out", "checker",
              *[a for item in TINY for a in ("--set", item)]],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "grouped CV" in result.output and "leave-checker-out: skipped" in result.output  # one generator
    card = load_card(str(model))
    assert card.kind == "dire" and {"cv_f1", "cv_auc"} <= set(card.metrics)
    oof = pd.read_parquet(model / "cv_predictions.parquet")  # beside the CNNs' in benchmarks/recipe_table.py
    assert oof["path"].is_unique and len(oof) == 20 and set(oof["label"]) == {0, 1}
    assert {"fold", "prob_ai", "logit"} <= set(oof.columns) and oof["prob_ai"].between(0, 1).all()

    manifest = score_run(str(root), str(model), str(work / "predictions"), "dire", settings=settings)
    rows, broken = results.read_rows(str(work / "predictions" / "run=dire"))
    assert not broken and manifest["counts"]["scored_this_run"] == 20
    assert list(rows.columns[: len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert rows["path"].is_unique and rows["error"].isna().all() and rows["prob_ai"].between(0, 1).all()
    assert set(rows["decision"]) <= {"real", "ai", "review"} and (rows["model_name"] == "dire").all()

    detector = load_detector(str(model), device="cpu")
    assert isinstance(detector, DireDetector)
    ordered = rows.sort_values("path").head(4)
    direct = [detector.predict_image(decode_image(Path(p).read_bytes())) for p in ordered["path"]]
    np.testing.assert_allclose(ordered["prob_ai"].to_numpy(), direct, rtol=0, atol=1e-5)

    # A CNN + DIRE ensemble: each member's own views, one weighted P(AI).
    torch.manual_seed(0)
    cnn = save_model(
        build_backbone("tinycnn"), ModelCard(backbone="tinycnn", name="cnn", image_size=32), str(work / "cnn")
    )
    score_run(str(root), f"{cnn},{model}", str(work / "predictions"), "ens", weights="1,3", settings=settings)
    both, broken = results.read_rows(str(work / "predictions" / "run=ens"))
    assert not broken and len(both) == 20 and both["prob_ai"].between(0, 1).all()
    assert (both["model_name"] == "cnn+dire").all()
    cnn_direct = load_detector(cnn, device="cpu").predict_image(
        decode_image(Path(ordered["path"].iloc[0]).read_bytes())
    )
    expected = 0.25 * cnn_direct + 0.75 * direct[0]
    assert abs(both.set_index("path").loc[ordered["path"].iloc[0], "prob_ai"] - expected) < 1e-5


def test_a_cnn_on_dire_maps_trains_with_raydetect_train_and_scores_into_the_contract(fitted):
    """`raydetect train --input-filter dire`: the existing Ray Train code on DIRE maps, exported as an
    ordinary `kind: cnn` model directory carrying its UNet, scored by the batch pipeline."""
    from raydetect.cli import app
    from raydetect.models.filters import DireFilter

    root, work, settings, diffusion = fitted
    model = work / "dire-cnn"
    args = [
        "train", str(root), "--backbone", "tinycnn", "--weights", "none", "--input-filter", "dire", "--epochs", "1",
        "--cv", "1", "--fold", "1", "--batch-size", "8", "--output", str(model),
        *[a for item in TINY for a in ("--set", item)], "--set", f"dire.diffusion={diffusion}",
        "--set", f"workdir={work / 'work'}", "--set", "images.size=32", "--set", "train.augment_strength=0",
        "--set", f"tracking.mlflow_uri=sqlite:///{work / 'mlflow.db'}", "--set", "registry.auto_register=false",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = load_card(str(model))
    assert card.kind == "cnn" and card.input_filter == "dire"
    spec = card.params["filter"]
    assert spec["dire"]["mode"] == "onestep" and spec["dire"]["noise_level"] == 0.2
    assert spec["diffusion"] == str(diffusion)  # a record only: the UNet's weights are in weights.pt

    manifest = score_run(str(root), str(model), str(work / "predictions"), "dire-cnn", settings=settings)
    rows, broken = results.read_rows(str(work / "predictions" / "run=dire-cnn"))
    assert not broken and manifest["counts"]["scored_this_run"] == 20
    assert list(rows.columns[: len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert rows["path"].is_unique and rows["error"].isna().all() and rows["prob_ai"].between(0, 1).all()

    detector = load_detector(str(model), device="cpu")
    assert any(isinstance(m, DireFilter) for m in detector.model.modules())
    unet = next(m for m in detector.model.modules() if isinstance(m, DireFilter)).dire.unet
    fitted_unet = load_unet(str(diffusion))[0].state_dict()
    assert all(torch.equal(v, fitted_unet[k]) for k, v in unet.state_dict().items())  # the fitted UNet, frozen
    path = rows.sort_values("path")["path"].iloc[0]
    direct = detector.predict_image(decode_image(Path(path).read_bytes()))
    assert abs(rows.set_index("path").loc[path, "prob_ai"] - direct) < 1e-5
