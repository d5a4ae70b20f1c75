"""Nightly bulk re-scoring, the `ray job submit` entry point.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/nightly_rescore.py --input s3://bucket/images/ --model s3://bucket/models/production \\
        --output s3://bucket/predictions [--run-id nightly-20250101] [--summary s3://bucket/reports/x.json]

The run id defaults to `nightly-<UTC date>`, so a job re-submitted the same day (after a failure or a lost
driver) finishes the same run instead of starting over. Writes OUTPUT/run=<id>/*.parquet, `_SUMMARY.json`
and `_SUCCESS` (last), prints the run summary (counts, share of ai / review, throughput, errors) as JSON,
and writes it to --summary when given. Exit code 0 on success, 1 when the run fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from raydetect.cli_options import add_job_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="dataset root, folder, manifest file or s3:// prefix")
    parser.add_argument("--model", default=None, help="model directory(ies), comma-separated for an ensemble")
    parser.add_argument("--weights", default=None, help="ensemble weights, e.g. 2,1")
    parser.add_argument("--output", required=True, help="predictions root (local or s3://)")
    parser.add_argument("--run-id", default=None, help="default: nightly-<UTC date>")
    parser.add_argument("--split", default="auto", help="auto | train | test | folder | all")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--actors", default=None, help="MIN:MAX model actors")
    parser.add_argument("--summary", default=None, help="also write the summary JSON here (local or s3://)")
    return add_job_arguments(parser).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from raydetect.cli_options import job_settings
    from raydetect.score.cli import run_and_summarize

    args = parse_args(argv)
    settings = job_settings(args)
    run_id = args.run_id or f"nightly-{datetime.now(UTC):%Y%m%d}"
    try:
        summary = run_and_summarize(
            args.input, args.model, args.output, run_id, weights=args.weights, actors=args.actors,
            split=args.split, settings=settings, summary_uri=args.summary, ray_address=args.ray_address,
            batch_size=args.batch_size,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the job's status line must say why it failed
        logging.exception("nightly re-scoring failed")
        print(json.dumps({"run_id": run_id, "status": "FAILED", "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps({"status": "SUCCEEDED", **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
