"""Write `serve_config.yaml`: what `serve build` would write for this app, with the builder as import path.

`serve build` only accepts a ready `Application`, while our config names the builder
(`raydetect.serve.app:app_builder`, so `args:` can pass a model and a config); this module does what
`serve build` does (Serve's own schema objects and YAML layout) with the builder's application.

    python -m raydetect.serve.config_file [serve_config.yaml]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from raydetect.config import Settings, load_settings

APP_NAME = "raydetect"
IMPORT_PATH = "raydetect.serve.app:app_builder"
HEADER = """\
# Ray Serve config for raydetect, in the schema `serve build` produces (regenerate it with
# `python -m raydetect.serve.config_file`; a test checks that it is current and valid).
#
#   serve run serve_config.yaml         # local: starts Ray and Serve, serves http://127.0.0.1:8000/
#   serve deploy serve_config.yaml      # a running cluster (RAY_ADDRESS / --address of its dashboard)
#
# - The model: DetectorModel.user_config.model_uri (a raydetect model directory, local or s3://; a relative
#   path is relative to the replica's working directory, so use an absolute path or s3:// on a cluster).
#   Edit user_config (model_uri, or `revision` to reload a moved alias; max_batch_size, batch_wait_timeout_s)
#   and `serve deploy` again: replicas reload in place, without a restart. After `raydetect model promote` /
#   `rollback`, `raydetect model deploy --address <dashboard>` does that for the registry's new version.
# - args: `config` (a raydetect YAML file) and `overrides` (section.key=value) feed the app builder.
#   Deployed from a file, `serve.topology: auto` is `split`: DetectorModel (the model) and RayDetectAPI (HTTP),
#   the two deployments named here. (`raydetect serve` on a machine without GPUs runs the model inside
#   RayDetectAPI instead: one deployment, no hop; `serve.topology=fused` in overrides does that from a file
#   whose only deployment entry is RayDetectAPI, with the model's user_config.)
# - API key: set RAYDETECT_API_KEY (or RAYDETECT_API_KEY_FILE) in the replicas' environment, e.g. under
#   runtime_env.env_vars, before exposing the port; every /v1 route then needs `Authorization: Bearer <key>`.
# - http_options.host 127.0.0.1 keeps the port local; use 0.0.0.0 to accept other machines' traffic.
# - Model replica resources: args.overrides, e.g. [serve.replica_num_cpus=4, serve.num_gpus=1]. By default
#   the builder asks for one GPU per replica when the cluster has GPUs. (A ray_actor_options block under
#   DetectorModel here would replace the builder's whole block, GPU request included.)
# - Serve's HAProxy ingress (about 10 ms less per request than the Python proxy on 2 cores; `raydetect serve`
#   turns it on for the cluster it starts, `serve.haproxy`): Serve reads it from its processes' environment
#   when the cluster starts, so start the nodes with RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1
#   (deploy/kuberay/rayservice.yaml and cluster.yaml do). Ingress replicas then also listen on ports of their
#   own (30000-31000) on http_options.host, behind HAProxy: on a cluster of several nodes that host must be
#   0.0.0.0 (HAProxy on one node reaches ingress replicas on the others), with the API key set.
"""


def default_model_uri(settings: Settings) -> str:
    return settings.serve.model_uri or f"{settings.workdir}/models/production"


def render(settings: Settings | None = None) -> str:
    """The YAML text of serve_config.yaml for `settings` (the embedded defaults when None)."""
    from ray.serve._private.build_app import build_app as serve_build_app
    from ray.serve.deployment import deployment_to_schema
    from ray.serve.schema import LoggingConfig, ServeApplicationSchema, ServeDeploySchema
    from ray.serve.scripts import ServeDeploySchemaDumper

    from raydetect.serve.app import build_app, carries_model, config_file_settings

    settings = config_file_settings(settings or load_settings())
    model_uri = default_model_uri(settings)
    built = serve_build_app(build_app(settings, model_uri), name=APP_NAME)
    deployments = []
    for deployment in built.deployments:
        schema = deployment_to_schema(deployment).model_dump(exclude_unset=True)
        if carries_model(schema):
            schema["user_config"] = dict(schema["user_config"], model_uri=model_uri)
            # Serve replaces the builder's whole ray_actor_options with a block from this file, which would
            # drop the GPU the builder asks for on a GPU cluster: resources go through args.overrides.
            schema.pop("ray_actor_options", None)
        deployments.append(schema)
    app = ServeApplicationSchema(
        name=APP_NAME,
        route_prefix="/",
        import_path=IMPORT_PATH,
        runtime_env={},
        args={"config": None, "overrides": []},
        deployments=deployments,
    ).model_dump(exclude_unset=True)
    config: dict[str, Any] = {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.serve.host, "port": settings.serve.port},
        "logging_config": LoggingConfig().model_dump(),
        "applications": [app],
    }
    ServeDeploySchema.model_validate(config)
    body = yaml.dump(config, Dumper=ServeDeploySchemaDumper, default_flow_style=False, sort_keys=False, width=80,
                     indent=2)
    return (HEADER + "\n" + body).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "serve_config.yaml")
    path.write_text(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
