import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raydetect.config import load_settings
from raydetect.evaluate.metrics import (
    HEADLINE,
    binary_metrics,
    bootstrap_intervals,
    equalized_odds,
    join_predictions,
    metrics_by_group,
    weighted_metrics,
)
from raydetect.evaluate.report import evaluate_frame, render_report, write_report


def _scored(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], n // 2)
    prob = np.clip(labels * 0.6 + rng.uniform(0, 0.4, n), 0, 1)
    return pd.DataFrame(
        {
            "path": [f"/d/{i}.png" for i in range(n)],
            "label": labels,
            "prob_ai": prob,
            "category": np.where(np.arange(n) % 4 == 0, "human", "other"),
            "generator": np.where(labels == 0, "real", "esrgan"),
        }
    )


def test_binary_metrics_match_hand_counts():
    labels = np.array([0, 0, 1, 1, 1])
    prob = np.array([0.1, 0.7, 0.8, 0.4, 0.9])
    m = binary_metrics(labels, prob, threshold=0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["false_positive_rate"] == pytest.approx(0.5)
    assert m["auc_roc"] == pytest.approx(5 / 6)


def test_group_metrics_cover_every_category():
    frame = _scored()
    table = metrics_by_group(frame, "category")
    assert set(table["category"]) == {"human", "other"}
    assert table["n"].sum() == len(frame)
    assert ((table["accuracy"] >= 0) & (table["accuracy"] <= 1)).all()


def test_processing_is_grouped_by_kind_not_parameters():
    frame = _scored(8).assign(processing=["none", "jpeg81", "jpeg64", "blur0.9+jpeg70"] * 2)
    table = evaluate_frame(frame, 0.5)["groups"]["processing"]
    assert sorted(table["processing"]) == ["blur+jpeg", "jpeg", "none"]
    assert table.set_index("processing")["n"].to_dict() == {"none": 2, "jpeg": 4, "blur+jpeg": 2}


def test_images_are_grouped_by_their_measured_size():
    frame = _scored(8).assign(width=[224, 512] * 4, height=[224, 384] * 4)
    table = evaluate_frame(frame, 0.5)["groups"]["size"]
    assert table.set_index("size")["n"].to_dict() == {"224x224": 4, "512x384": 4}


def test_join_drops_error_rows_and_unlabelled():
    predictions = pd.DataFrame(
        {"path": ["a", "b", "c"], "prob_ai": [0.2, np.nan, 0.9], "error": [None, "corrupt: x", None]}
    )
    labelled = pd.DataFrame({"path": ["a", "b", "c"], "label": pd.array([0, 1, pd.NA], dtype="Int64")})
    joined = join_predictions(predictions, labelled)
    assert joined["path"].tolist() == ["a"]


def test_report_is_one_self_contained_html_file(tmp_path: Path):
    frame = _scored()
    page, summary = render_report(frame, 0.5, context={"model": "tinycnn"})
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") >= 4
    assert "http://" not in page and "https://" not in page  # nothing fetched from outside
    assert set(summary["groups"]) == {"category", "generator"}
    assert summary["overall"]["accuracy"] == 1.0  # scores above are separable at 0.5

    run = tmp_path / "preds"
    run.mkdir()
    frame.assign(error=None, threshold=0.5)[["path", "prob_ai", "error", "threshold"]].to_parquet(run / "p.parquet")
    (run / "_SUCCESS").write_text("{}")
    out = tmp_path / "report.html"
    summary = write_report(str(run), frame.drop(columns=["prob_ai"]), str(out))
    assert out.exists() and json.loads((tmp_path / "report.json").read_text())["overall"]["n"] == len(frame)


def test_bootstrap_intervals_contain_the_point_estimate():
    frame = _scored(200, seed=1)
    labels, prob = frame["label"].to_numpy(), frame["prob_ai"].to_numpy()
    prob = np.clip(prob + np.random.default_rng(2).normal(0, 0.2, len(prob)), 0, 1)  # not separable
    point = binary_metrics(labels, prob, 0.5)
    intervals = bootstrap_intervals(labels, prob, 0.5, n_resamples=300, seed=0)
    assert set(intervals) == set(HEADLINE)
    for name, (low, high) in intervals.items():
        assert low <= point[name] <= high, (name, low, point[name], high)
        assert high - low > 0  # 200 images: real uncertainty
    again = bootstrap_intervals(labels, prob, 0.5, n_resamples=300, seed=0)
    assert again == intervals  # seeded


def test_equalized_odds_difference_of_a_constructed_example():
    # human: TPR 1/2, FPR 0/2; other: TPR 2/2, FPR 1/2 -> gaps 0.5 and 0.5
    frame = pd.DataFrame({
        "label": [1, 1, 0, 0, 1, 1, 0, 0],
        "prob_ai": [0.9, 0.1, 0.2, 0.3, 0.8, 0.7, 0.6, 0.1],
        "category": ["human"] * 4 + ["other"] * 4,
    })  # fmt: skip
    assert equalized_odds(frame, "category", 0.5) == pytest.approx(0.5)
    assert equalized_odds(frame.assign(category="all"), "category", 0.5) == 0.0


def test_report_has_calibration_intervals_pr_curve_and_a_fairness_flag():
    from raydetect.config import EvaluateSettings
    from raydetect.models.bundle import ModelCard

    frame = _scored(80, seed=3)
    frame["prob_ai"] = np.clip(frame["prob_ai"] + np.random.default_rng(4).normal(0, 0.25, 80), 0.01, 0.99)
    cal = {"temperature": 2.0, "threshold": 0.5, "review_band": [0.4, 0.6], "threshold_rule": "max_f1",
           "review_precision": 0.95, "fitted_on": "validation fold 0", "n": 50, "bins": 10}  # fmt: skip
    card = ModelCard(backbone="tinycnn").calibrated(cal)
    robustness = pd.DataFrame({"perturbation": ["clean", "jpeg50"], "n": [80, 80], "accuracy": [0.9, 0.7],
                               "accuracy_drop": [0.0, 0.2]})  # fmt: skip
    page, summary = render_report(frame, 0.5, card=card, settings=EvaluateSettings(bootstrap=50, fairness_limit=0.0),
                                  robustness=robustness, adversarial=robustness.rename(
                                      columns={"perturbation": "attack"}))  # fmt: skip
    for alt in ("reliability diagram", "precision-recall curve", "ROC and score histogram", "confusion matrix"):
        assert f"alt='{alt}'" in page
    assert "95 % CI" in page and "max_f1" in page and "ABOVE THE LIMIT" in page
    c = summary["calibration"]
    assert c["temperature"] == 2.0 and c["bins"] == 10 and {"ece", "ece_before"} <= set(c)
    expected = np.mean((frame["prob_ai"] >= 0.4) & (frame["prob_ai"] < 0.6))
    assert summary["decision"]["review_share"] == pytest.approx(expected)
    assert summary["fairness"]["flagged"] and summary["fairness"]["limit"] == 0.0
    assert "<h2>Robustness</h2>" in page and "jpeg50" in page and "<h2>Adversarial attacks</h2>" in page
    assert summary["robustness"][1] == {"perturbation": "jpeg50", "n": 80, "accuracy": 0.7, "accuracy_drop": 0.2}
    json.dumps(summary, default=float)


def test_weighted_metrics_equal_binary_metrics_on_the_drawn_images():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 60)
    prob = np.round(rng.random(60), 1)  # ties on purpose
    counts = rng.multinomial(60, np.full(60, 1 / 60), 4)
    fast = weighted_metrics(labels, prob, counts, 0.5)
    for r in range(4):
        index = np.repeat(np.arange(60), counts[r])
        slow = binary_metrics(labels[index], prob[index], 0.5)
        for name in HEADLINE:
            assert fast[name][r] == pytest.approx(slow[name]), name


def test_write_report_takes_the_calibration_from_the_runs_manifest(tmp_path: Path):
    frame = _scored(40)
    run = tmp_path / "preds"
    run.mkdir()
    frame.assign(error=None, threshold=0.45)[["path", "prob_ai", "error", "threshold"]].to_parquet(run / "p.parquet")
    manifest = {"model_name": "m", "model_version": "1", "threshold": 0.45, "review_band": [0.3, 0.55],
                "calibration": {"temperature": 1.7, "threshold": 0.45, "review_band": [0.3, 0.55], "bins": 10}}
    (run / "_SUCCESS").write_text(json.dumps(manifest))
    summary = write_report(str(run), frame.drop(columns=["prob_ai"]), str(tmp_path / "r.html"))
    assert summary["calibration"]["temperature"] == 1.7 and "ece_before" in summary["calibration"]
    assert summary["decision"]["review_band"] == [0.3, 0.55] and summary["threshold"] == 0.45


def test_condition_metrics_are_f1_as_generated_and_processed_real_photos_called_real() -> None:
    from raydetect.evaluate.metrics import condition_metrics

    frame = pd.DataFrame({
        "label":      [0, 0, 1, 1, 0, 0, 0, 1],
        "prob_ai":    [0.1, 0.7, 0.9, 0.2, 0.6, 0.3, 0.2, 0.95],
        "processing": ["none", "none", "none", "none", "hardneg:blur1.1", "jpeg70", None, "blur1.0"],
    })  # fmt: skip
    got = condition_metrics(frame)
    # as generated (none, and a missing value): labels 0,0,1,1,0 vs calls 0,1,1,0,0 -> tp 1, fp 1, fn 1
    assert got["f1_as_generated"] == pytest.approx(2 / 4)
    assert got["real_processed_acc"] == pytest.approx(1 / 2)  # hardneg 0.6 called AI, jpeg70 0.3 called real
    assert all(np.isnan(v) for v in condition_metrics(frame.drop(columns="processing")).values())


def test_the_report_shows_trainings_leave_one_generator_out_table(tmp_path: Path):
    from raydetect.evaluate.robustness import model_checks
    from raydetect.models.bundle import GENERALISATION_FILE, save_beside_model

    table = pd.DataFrame({"generator": ["ddpm", "waifu2x"], "folds": [5, 5], "n_val": [600, 600], "f1": [0.39, 0.11],
                          "auc": [0.82, 0.66], "ai_caught": [0.32, 0.08], "real_passed": [0.93, 0.94]})  # fmt: skip
    page, summary = render_report(_scored(), 0.5, generalisation=table)
    assert "Generalisation: leave one generator out" in page and "waifu2x" in page
    assert summary["generalisation"][1]["ai_caught"] == 0.08
    assert render_report(_scored(), 0.5)[1]["generalisation"] is None
    # `evaluate --model DIR` and the demo find it in the model directory, where training saved it
    save_beside_model(table, str(tmp_path), GENERALISATION_FILE)
    settings = load_settings(None, {"evaluate": {"robustness_sample": 0, "adversarial_sample": 0, "gallery_size": 0}})
    found = model_checks([str(tmp_path)], pd.DataFrame(), settings)["generalisation"]
    pd.testing.assert_frame_equal(found, table)
