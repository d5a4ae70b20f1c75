"""The retraining trigger, the `ray job submit` entry point (for a scheduler).

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/monitor.py --data s3://bucket/labelled/2025-01 [--reference s3://bucket/predictions/run=ref] \\
        [--predictions s3://bucket/predictions/run=nightly-20250101] [--output s3://bucket/reports/monitor.json]

Re-evaluates the registry's production version on the newest labelled data (`raydetect monitor check`),
prints the verdict as JSON, and exits 0 when all is well, 1 on "retrain" (a metric more than
`monitor.max_metric_drop` below its registered value, drift from --reference, or an unseen generator),
2 when the check itself failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from raydetect.cli_options import add_job_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="labelled dataset root (local or s3://)")
    parser.add_argument("--split", default="test", help="test (test_labels.csv) | train")
    parser.add_argument("--predictions", default=None, help="a scoring run of --data (default: score it now)")
    parser.add_argument("--reference", default=None, help="a reference scoring run or dataset for the drift test")
    parser.add_argument("--output", default=None, help="also write the verdict JSON here (local or s3://)")
    return add_job_arguments(parser).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from raydetect.cli_options import job_settings
    from raydetect.monitor.cli import run_check

    args = parse_args(argv)
    settings = job_settings(args)
    try:
        verdict = run_check(args.data, args.split, args.predictions, args.reference, args.output, args.ray_address,
                            settings)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the job's status line must say why it failed
        logging.exception("monitor check failed")
        print(json.dumps({"status": "FAILED", "error": f"{type(exc).__name__}: {exc}"}))
        return 2
    print(json.dumps(verdict, indent=2, default=float))
    return 1 if verdict["decision"] == "retrain" else 0


if __name__ == "__main__":
    sys.exit(main())
