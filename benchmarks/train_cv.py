"""5-fold CV of EfficientNet-Lite0 (ImageNet, offline weights) against ResNet-18 (no pretraining).

    .venv/bin/python benchmarks/train_cv.py .raydetect/benchmark --cv 5 --epochs 5 [--set train.workers=2]

Prints each variant's per-fold table, then one line per variant with mean ± std of loss, accuracy,
precision, recall, F1 and AUC-ROC and its wall time. Same folds for every variant (grouped, stratified).
Runs on the Ray cluster in $RAY_ADDRESS, else a local one; MLflow logs every fold.
"""

from __future__ import annotations

import argparse

from raydetect.config import load_settings
from raydetect.train.cv import compare_variants, format_cv_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="dataset root in the Kaggle layout (e.g. the demo benchmark)")
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--variants",
        default="efficientnet_lite0:imagenet,resnet18:none",
        help="backbone:weights pairs, comma-separated",
    )
    parser.add_argument("--output", default=None, help="folder for the best-fold model of each variant")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    overrides = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    settings = load_settings(args.config, overrides)
    variants = [tuple(item.split(":", 1)) for item in args.variants.split(",")]
    summary, outcomes = compare_variants(args.root, settings, variants, cv=args.cv, output_dir=args.output)
    for key, outcome in outcomes.items():
        print(format_cv_table(outcome.table, f"\n== {key}: {args.cv}-fold CV, wall {outcome.wall_s:.0f} s"))
    print("\n" + summary.to_string(index=False))


if __name__ == "__main__":
    main()
