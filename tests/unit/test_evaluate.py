import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raydetect.evaluate.metrics import binary_metrics, join_predictions, metrics_by_group
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
