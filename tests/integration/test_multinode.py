"""raydetect on a real multi-node Ray cluster (three raylets on this machine, see tests/multinode.py): a
2-worker Ray Train fold, the Serve app and batch scoring spread over the worker nodes, and a worker node
killed in the middle of a scoring run: after the resume no row is lost or duplicated, and every P(AI) equals
the same images scored in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("multinode")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-m", "tests.multinode", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=840)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "facts.json").read_text())


def test_three_nodes_and_work_on_more_than_one(facts: dict):
    assert len(facts["nodes"]) == 3 and facts["head_node"] not in facts["worker_nodes"]
    workers = set(facts["worker_nodes"])
    assert set(facts["train_nodes"]) == workers  # one training worker per worker node (DDP across nodes)
    assert facts["train_f1"] == facts["train_f1"]  # the fold finished with a metric (not NaN)
    assert set(facts["serve_nodes"]) == workers and facts["serve_answers"] == 8
    assert set(facts["score_nodes"]) == workers


def test_a_killed_worker_node_loses_and_duplicates_no_row_after_the_resume(facts: dict):
    assert facts["parts_before_kill"] >= 1  # the node died mid-run, after rows were written
    counts = facts["resumed_counts"]
    assert counts["inputs"] == counts["rows"] == facts["rows"] == facts["unique_paths"] == facts["whole_rows"]
    assert counts["duplicates"] == counts["missing"] == counts["errors"] == facts["broken"] == 0


def test_rows_equal_the_single_process_scores(facts: dict):
    reference, scored = facts["reference_prob_ai"], facts["prob_ai"]
    assert set(scored) == set(reference)
    assert max(abs(scored[path] - reference[path]) for path in reference) < 1e-6
