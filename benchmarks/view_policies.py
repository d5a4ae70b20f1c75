"""The same model scored with the `resize` and the `native` view policy, side by side.

    .venv/bin/python benchmarks/view_policies.py ROOT --model MODEL_DIR [--split test] [--json out.json]

Scores the labelled split of ROOT (Kaggle layout) twice through the batch pipeline (`score.views=resize`,
then `native`), and prints accuracy / F1 / AUC overall, per image size, and the share of real photos
called AI (false-positive rate), for each policy, plus the pipeline's images/s and views per image.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import pandas as pd


def score(root: str, model: str, split: str, mode: str, work: str) -> tuple[pd.DataFrame, dict]:
    from raydetect.config import load_settings
    from raydetect.score import results
    from raydetect.score.pipeline import score_run

    settings = load_settings(overrides=[f"workdir={work}", f"score.views={mode}"])
    manifest = score_run(root, model, os.path.join(work, "predictions"), f"views-{mode}", split=split,
                         settings=settings)  # fmt: skip
    return results.read_rows(manifest["output"])[0], manifest


def figures(rows: pd.DataFrame, labelled: pd.DataFrame, threshold: float) -> dict:
    from raydetect.evaluate.metrics import binary_metrics, join_predictions

    joined = join_predictions(rows, labelled)
    joined["size"] = joined["width"].astype(str) + "x" + joined["height"].astype(str)
    out = {"overall": binary_metrics(joined["label"].astype(int).to_numpy(), joined["prob_ai"].to_numpy(), threshold)}
    for size, part in joined.groupby("size"):
        out[size] = binary_metrics(part["label"].astype(int).to_numpy(), part["prob_ai"].to_numpy(), threshold)
    out["overall"]["views_per_image"] = float(joined["views"].mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--model", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import ray

    from raydetect.cluster import connect
    from raydetect.data.manifest import read_manifest
    from raydetect.models.bundle import load_card

    connect()
    ray.data.DataContext.get_current().enable_progress_bars = False
    labelled = read_manifest(args.root, split=args.split)
    threshold = load_card(args.model).threshold
    report: dict = {}
    with tempfile.TemporaryDirectory() as work:
        for mode in ("resize", "native"):
            rows, manifest = score(args.root, args.model, args.split, mode, work)
            report[mode] = figures(rows, labelled, threshold)
            report[mode]["images_per_s"] = manifest["throughput_images_per_s"]
    keys = [k for k in report["native"] if k != "images_per_s"]
    print(f"{'policy':8} {'subset':10} {'n':>5} {'acc':>6} {'f1':>6} {'auc':>6} {'real->AI':>8}")
    for mode in ("resize", "native"):
        for key in keys:
            m = report[mode][key]
            print(f"{mode:8} {key:10} {m['n']:5d} {m['accuracy']:6.3f} {m['f1']:6.3f} {m['auc_roc']:6.3f} "
                  f"{m['false_positive_rate']:8.3f}")
        print(f"{mode:8} pipeline {report[mode]['images_per_s']} img/s, "
              f"{report[mode]['overall']['views_per_image']:.2f} views/image")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2, default=float)
    ray.shutdown()


if __name__ == "__main__":
    main()
