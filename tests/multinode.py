"""A real three-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head and two worker nodes,
each its own raylet with its own CPUs and a custom resource), and raydetect's three Ray workloads across it.

Run as its own process (`python -m tests.multinode OUT`), because the test session's other tests share one
single-node cluster in the pytest process. Writes OUT/facts.json, which tests/integration/test_multinode.py
checks:
- a 2-worker Ray Train fold: the node of each training worker;
- the Serve app with two model replicas: the node of each replica, and answers over HTTP;
- batch scoring with one model actor per worker node: the actors' nodes; then a worker node killed in the
  middle of a run, the run resumed, and the rows against the same images scored in this process (no Ray).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

WORKER_CPUS = 2
ACTOR_CPUS = 1.5  # more than half a worker node: one model actor, replica or training worker per node


def _nodes_of(class_part: str) -> list[str]:
    from ray.util.state import list_actors

    return sorted({a.node_id for a in list_actors(limit=1000, detail=True) if class_part in a.class_name})


def _settings(tmp: Path, **overrides):
    from raydetect.config import load_settings

    base = {
        "workdir": str(tmp / "work"),
        "device": "cpu",
        "images": {"size": 32},
        "tracking": {"mlflow_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "multinode"},
        "train": {"backbone": "tinycnn", "weights": "none", "epochs": 1, "batch_size": 8, "workers": 2,
                  "augment_strength": 0.0, "cpus_per_worker": ACTOR_CPUS, "storage_path": str(tmp / "runs")},
        "score": {"min_actors": 2, "max_actors": 2, "actor_num_cpus": ACTOR_CPUS, "torch_threads": 1,
                  "read_block_rows": 4, "rows_per_file": 2, "batch_size": 4},
    }  # fmt: skip
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return load_settings(None, base)


def train_fold(root: Path, tmp: Path) -> dict:
    from raydetect.data.manifest import read_manifest
    from raydetect.train.trainer import fit_fold

    settings = _settings(tmp)
    df = read_manifest(str(root), split="train")
    groups = sorted(df["group"].unique())
    val = df["group"].isin(groups[: len(groups) // 4])
    run = fit_fold(df[~val], df[val], settings, name="multinode-fold", fold=0)
    return {"train_nodes": _nodes_of("RayTrainWorker"), "train_f1": run.f1}


def serve_app(model: str, tmp: Path) -> dict:
    from ray import serve

    from raydetect.serve.app import build_app, model_deployment, serve_topology
    from tests.serve_support import encode, free_port, photo

    settings = _settings(tmp, serve={"min_replicas": 2, "max_replicas": 2, "replica_num_cpus": ACTOR_CPUS,
                                     "ingress_num_cpus": 0.1, "torch_threads": 1, "audit_log": "-"})  # fmt: skip
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(settings, model), name="raydetect", route_prefix="/")
    answers = []
    for seed in range(8):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=encode(photo(seed)),
                                         headers={"Content-Type": "application/octet-stream"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - our own local server
            answers.append(json.loads(response.read())["prob_ai"])
    replicas = f"ServeReplica:raydetect:{model_deployment(serve_topology(settings))}"  # the model's replicas
    facts = {"serve_nodes": _nodes_of(replicas), "serve_answers": len(answers)}
    serve.shutdown()
    return facts


def score_with_a_node_killed(root: Path, model: str, tmp: Path, cluster, victim) -> dict:
    from raydetect.score import results
    from raydetect.score.pipeline import score_run

    settings = _settings(tmp)
    out = str(tmp / "predictions")
    first = score_run(str(root), model, out, "whole", settings=settings)  # every node alive
    facts = {"score_nodes": _nodes_of("MapBatches(Predictor)"), "whole_rows": first["counts"]["rows"]}

    run_dir = Path(out) / "run=killed"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["manifest"] = score_run(str(root), model, out, "killed", settings=settings)
        except Exception as exc:  # noqa: BLE001 - a run may fail when its node dies; the rerun resumes it
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and thread.is_alive() and len(list(run_dir.glob("*.parquet"))) < 2:
        time.sleep(0.05)
    facts["parts_before_kill"] = len(list(run_dir.glob("*.parquet")))
    cluster.remove_node(victim, allow_graceful=False)
    facts["killed_node"] = victim.node_id
    cluster.add_node(num_cpus=WORKER_CPUS, resources={"worker_c": 1})  # what an autoscaler does next
    thread.join(timeout=600)
    facts["first_attempt"] = "completed" if "manifest" in outcome else outcome.get("error", "hung")
    resumed = score_run(str(root), model, out, "killed", settings=settings)
    rows, broken = results.read_rows(resumed["output"])
    facts.update(
        resumed_counts=resumed["counts"], rows=len(rows), unique_paths=int(rows["path"].nunique()), broken=len(broken),
        prob_ai={p: float(v) for p, v in zip(rows["path"], rows["prob_ai"], strict=True) if v == v},
    )  # fmt: skip
    return facts


def in_process_probs(root: Path, model: str) -> dict[str, float]:
    """The same images through the scoring core in this process, no Ray: the single-node reference."""
    import pyarrow as pa

    from raydetect.score.decode import decode_batch
    from raydetect.score.inputs import list_inputs
    from raydetect.score.predictor import Predictor

    predictor = Predictor([model], device="cpu", num_threads=1)
    paths = list_inputs(str(root), "auto")["path"].tolist()
    table = decode_batch(pa.table({"path": paths}), [d.policy for d in predictor.detectors])
    rows = predictor(table).to_pandas()
    return {p: float(v) for p, v in zip(rows["path"], rows["prob_ai"], strict=True) if v == v}


def main(out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from tests.datasets import make_kaggle_dataset
    from tests.serve_support import make_model

    os.environ.pop("RAY_ADDRESS", None)
    out.mkdir(parents=True, exist_ok=True)
    root = make_kaggle_dataset(out / "data", n_pairs=20, size=40, n_test=0)
    model = make_model(out / "model", "tinycnn", image_size=32, version="3", views="native")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    workers = [cluster.add_node(num_cpus=WORKER_CPUS, resources={f"worker_{k}": 1}) for k in "ab"]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    facts: dict = {"nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
                   "worker_nodes": [w.node_id for w in workers], "head_node": cluster.head_node.node_id}  # fmt: skip
    try:
        facts.update(train_fold(root, out))
        facts.update(serve_app(model, out))
        facts.update(score_with_a_node_killed(root, model, out, cluster, workers[1]))
    finally:
        ray.shutdown()
        cluster.shutdown()
    facts["reference_prob_ai"] = in_process_probs(root, model)
    (out / "facts.json").write_text(json.dumps(facts, indent=2, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
