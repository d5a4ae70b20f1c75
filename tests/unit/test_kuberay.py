"""The KubeRay manifests parse, run the pinned Ray, serve serve_config.yaml's application, and submit entry
points that exist and accept their arguments."""

import shlex
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
IMAGE_TAG = f"{ray.__version__}-py311-gpu"


def documents() -> list[dict]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs.append(doc)
            if doc["kind"] == "ConfigMap":  # the nightly RayJob, created by the CronJob
                docs.extend(yaml.safe_load(text) for name, text in doc["data"].items() if name.endswith(".yaml"))
    return docs


def by_kind(kind: str) -> list[dict]:
    return [doc for doc in documents() if doc["kind"] == kind]


def cluster_specs() -> list[dict]:
    return [d["spec"]["rayClusterConfig"] for d in by_kind("RayService")] + [
        d["spec"]["rayClusterSpec"] for d in by_kind("RayJob")
    ]


def test_the_three_workloads_exist():
    assert len(by_kind("RayService")) == 1
    assert len(by_kind("RayJob")) == 2  # the training sweep and the nightly re-scoring
    (cron,) = by_kind("CronJob")
    command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["kubectl", "create"]


def test_clusters_run_the_pinned_ray_and_autoscale_gpu_workers():
    assert f"FROM rayproject/ray:{IMAGE_TAG}" in (ROOT / "Dockerfile").read_text()
    for spec in cluster_specs():
        assert spec["rayVersion"] == ray.__version__
        assert spec["enableInTreeAutoscaling"] is True
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            for container in group["template"]["spec"]["containers"]:
                assert container["image"].endswith(":" + IMAGE_TAG), container["image"]
                assert {"secretRef": {"name": "raydetect-env"}} in container["envFrom"]
        head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" not in head_limits
        limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in spec["workerGroupSpecs"]]
        assert any("nvidia.com/gpu" in group for group in limits), "a GPU worker group"
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_rayservice_serves_serve_config_yaml_application():
    (service,) = by_kind("RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]
    for apps in (embedded, local):
        for deployment in apps[0]["deployments"]:
            uri = deployment.get("user_config", {}).pop("model_uri", None)
            if apps is embedded and uri is not None:
                assert uri.startswith("s3://")  # pods share no local model folder
    assert embedded == local


@pytest.mark.parametrize("job", ["nightly_rescore", "train_sweep"])
def test_rayjob_entrypoints_parse(job):
    (doc,) = [d for d in by_kind("RayJob") if f"jobs/{job}.py" in d["spec"]["entrypoint"]]
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and (ROOT / argv[1]).is_file()
    if job == "nightly_rescore":
        from importlib.util import module_from_spec, spec_from_file_location

        spec = spec_from_file_location(job, ROOT / argv[1])
        module = module_from_spec(spec)
        spec.loader.exec_module(module)
        args = module.parse_args(argv[2:])
        assert args.input.startswith("s3://") and args.output.startswith("s3://")
    else:
        from typer.testing import CliRunner

        from raydetect.cli import app

        # the same commands as jobs/train_sweep.py (`raydetect.train.cli.register`); --help parses the options
        result = CliRunner().invoke(app, [*argv[2:4], "--help"])
        assert result.exit_code == 0, result.output
        options = [a.split("=")[0] for a in argv[4:] if a.startswith("--")]
        assert all(option in result.output for option in options), (options, result.output)
