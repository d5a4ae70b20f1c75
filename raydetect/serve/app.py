"""The online detector: a Ray Serve application with a FastAPI ingress and a batched model deployment.

```
HTTP -> Serve proxy -> RayDetectAPI (FastAPI: auth, body limit, safe decode, crop, audit log)
                          -> DetectorModel (@serve.batch: normalise + forward; explanations; autoscaled)
```

- The ingress decodes every upload with the shared safe decoder (`raydetect.data.images.decode_image`:
  format sniffing, pixel cap, EXIF) and answers bad input with a 4xx JSON `{"error", "detail",
  "request_id"}`; it never fetches URLs. It sends the model the image's `uint8` views, cut by the model's
  view policy (`raydetect.models.views`, the same function batch scoring uses: native-resolution tiles, or
  the legacy resized crop), so the model gets what it was validated on and a batch crosses the process
  boundary as views, not as decoded photos. With `serve.preprocess_on: model` (auto: when model replicas get
  a GPU) the ingress only checks a JPEG's header (`data.images.deferrable_jpeg`) and sends its bytes: the model
  replica decodes each batch at once on its device (`decode_jpegs`, batched nvJPEG on CUDA) and cuts the same
  views with tensor ops (`views.device_views`), as batch scoring's `score.preprocess_on` does; other formats,
  rotated or CMYK JPEGs and `/v1/explain` (which draws on the image) still decode in the ingress.
- `DetectorModel` loads the model directory (`raydetect.models.bundle`) once per replica from
  `user_config["model_uri"]`; changing `user_config` (a new `model_uri`, or a new `revision` for a moved
  alias) reloads it in place through `reconfigure`, without restarting replicas. `max_batch_size` and
  `batch_wait_timeout_s` in `user_config` retune dynamic batching live (`max_batch_size: 1` turns it off).
- The model comes from (`raydetect.registry.resolve_model`): the builder's `model_uri` (a directory or a
  registry reference such as `models:/raydetect@production` or `production`), else `$RAYDETECT_MODEL_URI`,
  else `serve.model_uri` in the config, else the registry's `production` alias, else
  `<workdir>/models/production`. A registry reference is resolved when the app is built (`serve.run`, or
  a `serve deploy` whose import path or args changed); `/v1/model` names the registry version
  (`registry_version`, `model_ref`). A `models:/` reference written into `user_config.model_uri` itself
  (serve_config.yaml) is looked up by each replica in `reconfigure`, in the registry the builder's settings
  name. An unchanged config file re-runs neither, so after a promotion or rollback `raydetect model deploy`
  (serve/redeploy.py) writes the newly resolved directory and version into the running application's
  `user_config` and deploys it again: the replicas reload in place (bumping `revision` by hand does too).

`app_builder` is the `import_path` target of `serve_config.yaml` (`serve run` / `serve deploy`);
`build_app(settings, model_uri)` is the Python entry point (tests, `raydetect serve`, benchmarks).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.concurrency import run_in_threadpool

from raydetect.config import Settings, StorageSettings, load_settings
from raydetect.data.images import (
    DecodeLimits,
    ImageDecodeError,
    decode_image,
    decode_jpegs,
    decodes_on_model,
    deferrable_jpeg,
    sha256_hex,
)
from raydetect.models.views import ViewError, ViewPolicy, device_views, make_views
from raydetect.registry import ResolvedModel, resolve_model
from raydetect.serve.coalesce import Coalescer
from raydetect.serve.drain import AdmissionGate
from raydetect.serve.security import AuditLog, bearer_token, load_api_key, request_id

logger = logging.getLogger("ray.serve")

MODEL_DEPLOYMENT = "DetectorModel"
INGRESS_DEPLOYMENT = "RayDetectAPI"

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_S = 0.0
# Serve batches may all be in flight at once: they wait in the Coalescer, which merges them per forward pass.
MAX_CONCURRENT_BATCHES = 256


def resolved_topology(topology: str, model_gpus: float) -> str:
    """`serve.topology` for model replicas of `model_gpus` GPUs each: `auto` splits a GPU model replica from
    CPU ingress replicas (they decode, the GPU replica batches; scaled apart) and fuses a CPU model into the
    ingress replica (one process: no hop, no second copy of each request)."""
    if topology != "auto":
        return topology
    return "split" if model_gpus > 0 else "fused"


def serve_topology(settings: Settings) -> str:
    """The topology `build_app` builds for `settings` on this cluster (or machine, before Ray starts)."""
    return resolved_topology(settings.serve.topology, _gpus_per_replica(settings))


def config_file_settings(settings: Settings) -> Settings:
    """`settings` as an application built from a Serve config file takes them (`app_builder`, and the
    generator of serve_config.yaml): `serve.topology: auto` is `split` there, the topology whose two
    deployments such a file names, whatever devices the cluster it lands on has."""
    if settings.serve.topology != "auto":
        return settings
    return settings.model_copy(update={"serve": settings.serve.model_copy(update={"topology": "split"})})


def model_deployment(topology: str) -> str:
    """The deployment whose user_config names the model: its own (`split`), or the ingress it runs in (`fused`)."""
    return INGRESS_DEPLOYMENT if topology == "fused" else MODEL_DEPLOYMENT


def carries_model(entry: dict[str, Any]) -> bool:
    """Whether a deployment's entry of an application config holds the model's user_config (either topology)."""
    return entry.get("name") == MODEL_DEPLOYMENT or "model_uri" in (entry.get("user_config") or {})


class _DropConcurrentBatchesWarning(logging.Filter):
    """Serve warns when max_batch_size * max_concurrent_batches > max_ongoing_requests, which is always
    true here by design (the Coalescer, not the concurrency cap, bounds each forward pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "max_concurrent_batches" not in record.getMessage()

# Decode failures -> HTTP status. Everything an uploader can cause is a 4xx.
DECODE_STATUS = {
    "empty": 400,
    "too_large": 413,
    "unsupported_format": 415,
    "too_many_pixels": 413,
    "too_small": 422,
    "truncated": 422,
    "corrupt": 422,
}


# --- plain helpers (no Ray) --------------------------------------------------------------------------


def model_views(image, policy: ViewPolicy | None) -> dict[str, Any] | None:
    """What the model deployment takes for one image: its views under `policy` and the policy's key (the
    model answers `stale` when its policy changed meanwhile); None when the policy is not known yet."""
    if policy is None:
        return None
    try:
        return {"key": policy.key, "views": make_views(image, policy)}
    except ViewError as exc:
        raise ImageDecodeError(exc.reason, str(exc).split(": ", 1)[-1]) from None


def _decode_and_views(data: bytes, limits: DecodeLimits, policy: ViewPolicy | None):
    """Safe decode, then the model's views when its policy is known (one worker-thread hop)."""
    image = decode_image(data, limits)
    return image, model_views(image, policy)


@dataclass(frozen=True)
class DeferredJpeg:
    """A JPEG whose decoding is left to the model replica (`serve.preprocess_on: model`): its header's size."""

    width: int
    height: int


def deferred_item(data: bytes, limits: DecodeLimits) -> tuple[DeferredJpeg, dict[str, Any]] | None:
    """(stand-in image, model item) for a JPEG the model replica may decode itself; None: decode it here."""
    size = deferrable_jpeg(data, limits)
    return None if size is None else (DeferredJpeg(*size), {"jpeg": data, "size": size})


def decode_error(reason: str, detail: str, rid: str) -> ApiError:
    """The 4xx of a decode failure: the ingress's own, or one the model replica answered."""
    return ApiError(DECODE_STATUS.get(reason, 422), reason, detail, rid)


class ApiError(Exception):
    """A request the API refuses: always a 4xx with a stable `reason` code."""

    def __init__(self, status: int, reason: str, detail: str, request_id: str = "", headers: dict | None = None):
        super().__init__(f"{status} {reason}: {detail}")
        self.status, self.reason, self.detail, self.request_id = status, reason, detail, request_id
        self.headers = headers


# --- response schemas (OpenAPI) ------------------------------------------------------------------------


class Prediction(BaseModel):
    request_id: str
    sha256: str = Field(description="SHA-256 of the image file's bytes")
    prob_ai: float = Field(ge=0, le=1, description="P(AI-generated)")
    decision: str = Field(description="real | ai | review (uncertain band, for a person)")
    threshold: float
    model_name: str
    model_version: str
    scored_at: str
    latency_ms: float
    width: int
    height: int
    views: int = Field(description="how many views of the image the model scored (native tiles, or 1)")
    filename: str | None = None


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    sha256: str | None = None
    prob_ai: float | None = None
    decision: str | None = None
    threshold: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    width: int | None = None
    height: int | None = None
    views: int | None = None
    error: str | None = Field(None, description="null, or why this image could not be scored (reason: detail)")


class BatchPrediction(BaseModel):
    request_id: str
    count: int
    errors: int
    latency_ms: float
    scored_at: str
    results: list[BatchItem]


class ExplainResponse(Prediction):
    method: str = Field(description="how the map was made: gradcam | lime | shap")
    reason: str = Field(description="one line: the decision, where its evidence sits and which frequency band "
                        "of the image carries it")
    overlay_png_base64: str = Field(
        description="PNG of the whole image with the map of every view stitched over it"
    )
    overlay_width: int
    overlay_height: int


class ErrorResponse(BaseModel):
    error: str = Field(description="stable reason code, e.g. truncated, unsupported_format, unauthorized")
    detail: str
    request_id: str


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    name: str
    version: str
    backbone: str
    input_filter: str = Field(description="filter inside the model in front of its stem: none | npr | dire")
    image_size: int
    views: dict[str, Any] = Field(description="the view policy: how an image becomes the model's inputs")
    threshold: float
    review_band: list[float]
    temperature: float = Field(1.0, description="P(AI) = sigmoid(logit / temperature), from the card's calibration")
    calibration: dict[str, Any] | None = Field(None, description="how temperature, threshold and band were chosen")
    model_uri: str
    registry_version: str | None = Field(None, description="the registry version answering, when from the registry")
    precision: str = Field(description="forward-pass precision the replica runs: fp32 | bf16 | fp16")
    preprocess_on: str = Field(description="where JPEGs are decoded and cut into views: ingress | model")
    topology: str = Field("split", description="split: model and ingress deployments | fused: one deployment")


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (direct use in tests)
        return f"pid-{os.getpid()}"


# --- the model deployment -----------------------------------------------------------------------------


@serve.deployment(name=MODEL_DEPLOYMENT, max_ongoing_requests=32)
class DetectorModel:
    """One loaded detector per replica; dynamic batching of single-image calls."""

    def __init__(self, device: str = "auto", torch_threads: int | None = None, precision: str = "auto",
                 registry_uri: str | None = None, explain: dict[str, Any] | None = None,
                 storage_settings: StorageSettings | None = None):
        import torch

        from raydetect.config import ExplainSettings

        threads = torch_threads or max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        torch.set_num_threads(threads)
        self.device, self.torch_threads, self.precision = device, threads, precision
        self.registry_uri = registry_uri  # where user_config's `models:/` references are looked up
        self.explain_settings = ExplainSettings(**(explain or {}))  # LIME / KernelSHAP samples, superpixels
        self.storage_settings = storage_settings  # the config's `storage:` (S3 endpoint) for the model's files
        self.detector = None
        self.model_uri: str | None = None
        self.revision: Any = None
        self.registry_version: str | None = None  # set when the model came from the registry
        self.model_ref: str | None = None
        self.loaded_at: str | None = None
        self._lock = threading.Lock()  # one model call at a time: Grad-CAM hooks must not see predictions
        self.batches = 0  # forward passes of predict, and the images they carried (dynamic batching at work)
        self.batched_images = 0
        self.largest_batch = 0
        self.jpegs_decoded = 0  # JPEGs this replica decoded itself (`serve.preprocess_on: model`)
        self._coalescer = Coalescer(self._predict_sync, lambda: self.predict._get_max_batch_size())
        logging.getLogger("ray.serve").addFilter(_DropConcurrentBatchesWarning())

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls this at start and on every `user_config` change: (re)load the model if its URI or
        revision changed, and retune dynamic batching."""
        from raydetect.models.bundle import load_detector

        config = dict(config or {})
        uri = config.get("model_uri")
        if not uri:
            raise ValueError("DetectorModel needs user_config.model_uri (a raydetect model directory)")
        uri, version, ref = self._resolve(config)
        if uri != self.model_uri or config.get("revision") != self.revision or self.detector is None:
            detector = load_detector(uri, device=self.device, precision=self.precision,
                                     storage_settings=self.storage_settings)
            with self._lock:
                self.detector, self.model_uri, self.revision = detector, uri, config.get("revision")
                self.registry_version, self.model_ref = version, ref
                self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
            card = detector.card
            self._warm_up()
            logger.info("DetectorModel loaded %s %s from %s on %s", card.name, card.version, uri, detector.device)
        self.predict.set_max_batch_size(int(config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)))
        self.predict.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_S)))

    def _resolve(self, config: dict[str, Any]) -> tuple[str, str | None, str | None]:
        """(directory, registry version, reference) of user_config's model. A `models:/` reference is looked
        up in the registry now, so a new `revision` picks up a promotion or rollback in place."""
        uri = str(config["model_uri"])
        if not uri.startswith("models:/"):
            return uri, config.get("registry_version"), config.get("model_ref")
        base = load_settings()
        registry = base.tracking.model_copy(update={"mlflow_uri": self.registry_uri or base.tracking.mlflow_uri})
        settings = base.model_copy(update={"tracking": registry, "storage": self.storage_settings or base.storage})
        resolved = resolve_model(uri, settings)
        return resolved.uri, resolved.version, uri

    def _warm_up(self) -> None:
        """One prediction and the Grad-CAM imports now, so the first caller does not pay for them."""
        import io

        import pytorch_grad_cam  # noqa: F401 - imports cv2/scipy: seconds, once
        from PIL import Image

        policy = self.detector.policy
        jpeg = io.BytesIO()
        Image.new("RGB", (policy.size, policy.size), (128, 128, 128)).save(jpeg, format="JPEG")
        decoded = self.jpegs_decoded
        self._predict_sync([{"key": policy.key, "views": np.zeros((1, policy.size, policy.size, 3), np.uint8)},
                            {"jpeg": jpeg.getvalue(), "size": (policy.size, policy.size)}])  # decode path too
        self.jpegs_decoded = decoded  # callers' JPEGs only

    def check_health(self) -> None:
        if self.detector is None:
            raise RuntimeError("no model loaded")

    async def info(self) -> dict[str, Any]:
        card = self.detector.card
        return {
            "name": card.name,
            "version": card.version,
            "backbone": card.backbone,
            "input_filter": card.input_filter,
            "image_size": card.image_size,
            "views": self.detector.policy.to_dict(),
            "mean": list(card.mean),
            "std": list(card.std),
            "threshold": card.threshold,
            "review_band": list(card.review_band),
            "temperature": card.temperature,
            "calibration": card.calibration,
            "metrics": card.metrics,
            "created_at": card.created_at,
            "model_uri": self.model_uri,
            "revision": self.revision,
            "registry_version": self.registry_version,
            "model_ref": self.model_ref,
            "loaded_at": self.loaded_at,
            "device": str(self.detector.device),
            "precision": self.detector.precision,
            "torch_threads": self.torch_threads,
            "replica": _replica_id(),
            "pid": os.getpid(),
            "max_batch_size": self.predict._get_max_batch_size(),
            "batch_wait_timeout_s": self.predict._get_batch_wait_timeout_s(),
            "batches": self.batches,
            "batched_images": self.batched_images,
            "largest_batch": self.largest_batch,
            "jpegs_decoded": self.jpegs_decoded,
        }

    def _inputs(self, detector, items: list[dict[str, Any]]) -> tuple[dict[int, Any], dict[int, dict[str, Any]]]:
        """The model's views of each item it can score, by index, and the answers of the others: views cut for
        another policy are `stale`; JPEGs left to this replica are decoded here in one batch (on the model's
        device) and cut with its policy, a bad one answering its decode error."""
        views: dict[int, Any] = {}
        answers: dict[int, dict[str, Any]] = {}
        deferred = [i for i, item in enumerate(items) if "jpeg" in item]
        blobs, sizes = [items[i]["jpeg"] for i in deferred], [tuple(items[i]["size"]) for i in deferred]
        self.jpegs_decoded += len(deferred)
        for i, image in zip(deferred, decode_jpegs(blobs, sizes, detector.device) if deferred else [], strict=True):
            if isinstance(image, str):  # "reason: detail", as the ingress's decoder says it
                answers[i] = {"error": image}
                continue
            try:
                views[i] = device_views(detector, image)
            except ViewError as exc:
                answers[i] = {"error": str(exc)}
        for i, item in enumerate(items):
            if "jpeg" not in item:
                if item["key"] == detector.policy.key:
                    views[i] = item["views"]
                else:
                    answers[i] = {"stale": True, "views_key": detector.policy.key}
        return views, answers

    def _predict_sync(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        started, clock = time.time(), time.perf_counter()
        with self._lock:
            detector = self.detector
            card = detector.card
            inputs, answers = self._inputs(detector, items)
            out: list[dict[str, Any]] = [answers.get(i, {}) for i in range(len(items))]
            good = sorted(inputs)
            if good:
                views = [inputs[i] for i in good]
                probs = detector.predict_images(views)  # in passes of the detector's forward_batch
                self.batches += 1
                self.batched_images += len(good)
                self.largest_batch = max(self.largest_batch, len(good))
                for i, prob in zip(good, probs, strict=True):
                    out[i] = _result(card, float(prob), len(inputs[i]))
            model_ms = 1000 * (time.perf_counter() - clock)  # lock wait + decode (model-side) + forward
            return [dict(item, batch_size=len(good), model_started_at=started, model_ms=model_ms) for item in out]

    @serve.batch(
        max_batch_size=DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S,
        max_concurrent_batches=MAX_CONCURRENT_BATCHES,
    )
    async def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """P(AI) for one image's views (`model_views`: `{"key", "views"}`); `{"stale": True}` when the views
        were cut for another view policy than the current model's, e.g. right after a reload: the caller
        cuts them again and retries. Or for a JPEG's bytes (`deferred_item`: `{"jpeg", "size"}`), decoded and
        cut here; `{"error": "reason: detail"}` when it cannot be.

        Serve's batches wait in the Coalescer while the model is busy; each forward pass then takes all
        that waits, up to `max_batch_size` images (1 turns batching off: one image per forward pass)."""
        entered = time.time()
        results = await self._coalescer.submit(items)
        for item, result in zip(items, results, strict=True):  # where this call's milliseconds went
            sent = item.get("sent_at")
            result["timing_ms"] = {"to-batch": 1000 * (entered - sent) if sent else None,
                                   "coalesce": 1000 * (result.pop("model_started_at") - entered),
                                   "model": result.pop("model_ms")}
        return results

    def _explain_sync(self, item: dict[str, Any]) -> dict[str, Any]:
        from raydetect.explain.core import signed_target, view_maps

        method = item.get("method", "gradcam")
        with self._lock:  # Grad-CAM's hooks must not see other calls; LIME / SHAP only run forward passes
            detector = self.detector
            card = detector.card
            if item["key"] != detector.policy.key:
                return {"stale": True, "views_key": detector.policy.key}
            prob = float(detector.predict_images([item["views"]])[0])
            sign = signed_target(prob, card.threshold)
            if method == "gradcam":
                maps = view_maps(detector, item["views"], method, sign, self.explain_settings)
        if method != "gradcam":  # seconds of forward passes: predictions go on meanwhile
            maps = view_maps(detector, item["views"], method, sign, self.explain_settings)
        return {**_result(card, prob, len(item["views"])), "policy": detector.policy.to_dict(), "method": method,
                "cams": [m.astype(np.float32) for m in maps]}

    async def explain(self, item: dict[str, Any]) -> dict[str, Any]:
        """The prediction plus one map (view-sized, in [0, 1]) per view of one image, by `item["method"]`
        (gradcam, lime, shap; explain/core.py)."""
        return await asyncio.to_thread(self._explain_sync, item)


class LocalModel:
    """`serve.topology: fused`: the model deployment's class in this (ingress) replica, called the way the
    ingress calls a DeploymentHandle (`await model.predict.remote(item)`), so one code path serves both."""

    def __init__(self, model: Any):
        self.instance = model

    def __getattr__(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(remote=getattr(self.instance, name))


# --- the HTTP ingress -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngressOptions:
    """What the ingress needs from the settings (picklable; no secrets: only the key *file* path)."""

    limits: DecodeLimits
    max_body_bytes: int
    max_batch_images: int
    max_overlay_pixels: int
    api_key_file: str | None
    audit_log: str | None
    preprocess_on: str = "ingress"  # resolved: ingress | model

    @classmethod
    def from_settings(cls, settings: Settings, model_gpus: float = 0.0) -> IngressOptions:
        s = settings.serve
        audit = s.audit_log or str(settings.workdir_path / "serve" / "audit.jsonl")
        key_file = str(Path(s.api_key_file).expanduser().resolve()) if s.api_key_file else None
        return cls(
            limits=DecodeLimits.from_settings(settings.images),
            max_body_bytes=s.max_body_bytes,
            max_batch_images=s.max_batch_images,
            max_overlay_pixels=s.max_overlay_pixels,
            api_key_file=key_file,
            audit_log=str(Path(audit).expanduser().resolve()) if audit != "-" else None,
            preprocess_on="model" if decodes_on_model(s.preprocess_on, model_gpus) else "ingress",
        )


api = FastAPI(
    title="raydetect",
    summary="Tell AI-generated images from real photographs.",
    description=(
        "Upload one image (multipart `file`, or the raw bytes as the body) and get P(AI), a decision "
        "(`real` / `ai` / `review`) and the model that made it. JPEG, PNG and WebP; bad input is a 4xx "
        "JSON error with a reason. When an API key is configured, every `/v1` route needs "
        "`Authorization: Bearer <key>`."
    ),
    version="1",
)
_gate = AdmissionGate()  # one per ingress replica process: counts requests in flight, refuses new ones when draining
api.add_middleware(_gate.middleware)
_bearer = HTTPBearer(auto_error=False, description="the API key (when one is configured)")
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422)}


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    body = {"error": exc.reason, "detail": exc.detail, "request_id": exc.request_id}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _serve_request_id(request: Request) -> str:
    try:
        from ray.serve.context import _get_serve_request_context

        candidate = _get_serve_request_context().request_id
    except Exception:  # noqa: BLE001 - private API; fall back to the header / a fresh id
        candidate = ""
    return request_id(candidate or request.headers.get("x-request-id"))


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _result(card, prob: float, views: int) -> dict[str, Any]:
    """What the model deployment answers for one scored image."""
    return {"prob_ai": prob, "decision": card.decide(prob), "threshold": float(card.threshold),
            "model_name": card.name, "model_version": str(card.version), "views": views}


def _public(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("prob_ai", "decision", "threshold", "model_name", "model_version", "views")
    return {key: result[key] for key in keys}


def server_timing(stages: dict[str, float | None]) -> str:
    """A `Server-Timing` header (W3C): where one request's milliseconds went, in the order of `stages`."""
    return ", ".join(f"{name};dur={ms:.2f}" for name, ms in stages.items() if ms is not None)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _render_overlay(image, result: dict[str, Any], max_pixels: int):
    """The overlay PNG at the image's size (scaled down only past `max_pixels`), and the one-line reason:
    the views' maps stitched over the whole image."""
    from PIL import Image

    from raydetect.explain.core import image_heat
    from raydetect.explain.gradcam import overlay, png_bytes
    from raydetect.explain.reasons import reason as explain_reason

    heat = image_heat(result["cams"], image.size, ViewPolicy(**result["policy"]))
    reason = explain_reason(image, heat, result["prob_ai"], result["decision"], result["threshold"])
    if image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.Resampling.BILINEAR))
    return png_bytes(overlay(image, heat)), image.size, reason


@serve.deployment(name=INGRESS_DEPLOYMENT, max_ongoing_requests=128)
@serve.ingress(api)
class RayDetectAPI:
    """HTTP front door: auth, body limit, safe decoding, audit log; the model runs in `DetectorModel`: its
    deployment (`model` a handle), or this replica (`serve.topology: fused`: `model` holds its arguments,
    and this deployment's user_config reaches `DetectorModel.reconfigure`)."""

    def __init__(self, model: DeploymentHandle | dict[str, Any], options: IngressOptions):
        self.local = DetectorModel.func_or_class(**model) if isinstance(model, dict) else None
        self.model = LocalModel(self.local) if self.local is not None else model
        self.options = options
        self.api_key = load_api_key(options.api_key_file)
        self.audit = AuditLog(options.audit_log)
        self._policy: ViewPolicy | None = None
        self._page = resources.files("raydetect.serve").joinpath("static/index.html").read_text()
        import scipy.ndimage  # noqa: F401 - the overlay and reason code (explain/), imported before the first request

        import raydetect.explain.core  # noqa: F401
        auth = f"on ({self.api_key.source})" if self.api_key else "off"
        logger.info("RayDetectAPI ready: API key auth %s; audit log %s", auth, options.audit_log or "memory")

    @property
    def topology(self) -> str:
        return "split" if self.local is None else "fused"

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's user_config: the model's, when it runs in this replica."""
        if self.local is None:
            raise ValueError(f"user_config belongs to the {MODEL_DEPLOYMENT} deployment (serve.topology: split)")
        self.local.reconfigure(config)

    def check_health(self) -> None:
        if self.local is not None:
            self.local.check_health()

    # -- request plumbing --

    def _authorize(self, request: Request, rid: str, route: str) -> None:
        if self.api_key is None:
            return
        if not self.api_key.matches(bearer_token(request.headers.get("authorization"))):
            self.audit.write(event="unauthorized", request_id=rid, **self._client(request), route=route,
                             status=401)
            raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer <key>)", rid,
                           headers={"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _client(request: Request) -> dict[str, str | None]:
        """The client as Serve's proxy reports it (uvicorn honours X-Forwarded-For only from trusted local
        proxies), and the raw X-Forwarded-For claim kept apart (a caller can write any header)."""
        forwarded = request.headers.get("x-forwarded-for")
        return {"client": request.client.host if request.client else None,
                "forwarded_for": forwarded.split(",")[0].strip()[:64] if forwarded else None}

    async def _read_body(self, request: Request, rid: str) -> bytes:
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                declared_len = int(declared)
            except ValueError:
                raise ApiError(400, "bad_request", "Content-Length is not a number", rid) from None
            if declared_len > limit:
                raise ApiError(413, "too_large", f"the body ({declared_len} bytes) is over the {limit}-byte limit", rid)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, "too_large", f"the body is over the {limit}-byte limit", rid)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _uploads(self, request: Request, rid: str, max_files: int) -> list[tuple[str | None, bytes]]:
        """(filename, bytes) of each uploaded image: multipart files, or the raw body as one image."""
        mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await self._read_body(request, rid)
        if mime == "multipart/form-data":
            from starlette.datastructures import UploadFile

            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                form = await Request(request.scope, replay).form(max_files=max_files, max_fields=16)
            except Exception as exc:  # noqa: BLE001 - any multipart parser complaint is the caller's
                detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc)
                reason = "too_many_images" if "Too many files" in str(detail) else "bad_multipart"
                raise ApiError(400, reason, f"the multipart body could not be parsed ({detail})", rid) from None
            files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            uploads = [(f.filename, await f.read()) for f in files]
            await form.close()
            if not uploads:
                raise ApiError(400, "no_file", "the multipart body holds no file part", rid)
            return uploads
        if mime in ("", "application/octet-stream") or mime.startswith("image/"):
            return [(None, body)]
        raise ApiError(
            415, "unsupported_media_type",
            f"send the image as multipart/form-data, image/* or application/octet-stream (got {mime!r})", rid,
        )

    async def _decode(self, data: bytes, rid: str, defer: bool = True):
        """The decoded image and, in the same worker-thread hop, the model's views of it (policy known); or,
        where the model replica decodes (`preprocess_on: model`, `defer`), a JPEG's header size and its bytes."""
        deferred = deferred_item(data, self.options.limits) if defer and self.options.preprocess_on == "model" else None
        if deferred is not None:
            return deferred
        try:
            return await run_in_threadpool(_decode_and_views, data, self.options.limits, self._policy)
        except ImageDecodeError as exc:
            raise decode_error(exc.reason, exc.message, rid) from None

    async def _model_policy(self, refresh: bool = False) -> ViewPolicy:
        if self._policy is None or refresh:
            self._policy = ViewPolicy(**(await self.model.info.remote())["views"])
        return self._policy

    async def _call_model(self, method: str, decoded, rid: str = "", extra: dict[str, Any] | None = None
                          ) -> dict[str, Any]:  # fmt: skip
        """Call the model with the image's views (and `extra` keys); cut them again when the model was swapped
        meanwhile."""
        image, item = decoded
        extra = {**(extra or {}), "sent_at": time.time()}  # the model says how long the call took to reach it
        if item is not None and "jpeg" in item:  # the model replica decodes it and cuts its own views
            result = await getattr(self.model, method).remote({**item, **extra})
            if "error" in result:
                reason, _, detail = result["error"].partition(": ")  # "reason: detail", as decode_jpegs says it
                raise decode_error(reason, detail or reason, rid)
            return result
        for attempt in range(3):
            policy = await self._model_policy(refresh=attempt > 0)
            if item is None or item["key"] != policy.key:
                try:
                    item = await run_in_threadpool(model_views, image, policy)
                except ImageDecodeError as exc:
                    raise decode_error(exc.reason, exc.message, rid) from None
            result = await getattr(self.model, method).remote({**item, **extra})
            if not result.get("stale"):
                return result
        raise RuntimeError("the model's view policy kept changing while this request was served")

    def _reject(self, exc: ApiError, request: Request, route: str, sha: str | None = None) -> None:
        self.audit.write(event="rejected", request_id=exc.request_id, **self._client(request), route=route,
                         sha256=sha, status=exc.status, reason=exc.reason)

    async def _one_image(self, request: Request, rid: str, route: str, defer: bool = True):
        uploads = await self._uploads(request, rid, max_files=1)
        if len(uploads) != 1:
            raise ApiError(400, "too_many_images", f"{route} takes one image; use /v1/predict/batch", rid)
        filename, data = uploads[0]
        sha = sha256_hex(data) if data else None
        try:
            decoded = await self._decode(data, rid, defer)
        except ApiError as exc:
            self._reject(exc, request, route, sha)
            raise
        return filename, data, sha, decoded

    def _record(self, event: str, request: Request, rid: str, route: str, sha: str, result: dict, ms: float):
        self.audit.write(event=event, request_id=rid, **self._client(request), route=route, sha256=sha,
                         prob_ai=round(result["prob_ai"], 6), decision=result["decision"],
                         model_name=result["model_name"], model_version=result["model_version"], latency_ms=ms,
                         status=200)

    async def drain(self) -> dict[str, int]:
        """Handle call (not a route) from `raydetect serve` at shutdown: refuse new requests (503
        `shutting_down`), and say how many accepted ones are still in flight."""
        return {"in_flight": _gate.close()}

    # -- routes --

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self._page)

    @api.get("/healthz", summary="Liveness and readiness (no auth)")
    async def healthz(self) -> JSONResponse:
        try:
            info = await asyncio.wait_for(self.model.info.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - not ready is an answer, not a crash
            return JSONResponse({"status": "unavailable", "detail": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "model_loaded": bool(info.get("version") is not None)})

    @api.get("/v1/model", response_model=ModelInfo, responses=_ERRORS, dependencies=[Depends(_bearer)],
             summary="The model being served: name, version, threshold, preprocessing, batching")
    async def model_info(self, request: Request) -> dict[str, Any]:
        rid = _serve_request_id(request)
        self._authorize(request, rid, "/v1/model")
        info = await self.model.info.remote()
        self._policy = ViewPolicy(**info["views"])
        auth = {"api_key": self.api_key is not None}
        limits = {"max_body_bytes": self.options.max_body_bytes, "max_batch_images": self.options.max_batch_images,
                  "max_pixels": self.options.limits.max_pixels,
                  "allowed_formats": list(self.options.limits.allowed_formats)}
        ingress = {"replica": _replica_id(), "pid": os.getpid()}
        return {**info, "auth": auth, "limits": limits, "ingress": ingress,
                "preprocess_on": self.options.preprocess_on, "topology": self.topology}

    @api.post("/v1/predict", response_model=Prediction, responses=_ERRORS, openapi_extra=_IMAGE_BODY,
              dependencies=[Depends(_bearer)], summary="Score one image")
    async def predict(self, request: Request) -> JSONResponse:
        start = time.perf_counter()
        rid = _serve_request_id(request)
        self._authorize(request, rid, "/v1/predict")
        filename, _, sha, decoded = await self._one_image(request, rid, "/v1/predict")
        image, read_ms, call = decoded[0], _ms(start), time.perf_counter()
        try:
            result = await self._call_model("predict", decoded, rid)
        except ApiError as exc:  # a JPEG the model replica could not decode
            self._reject(exc, request, "/v1/predict", sha)
            raise
        ms = _ms(start)
        timing = server_timing({"read-decode": read_ms, **result.get("timing_ms", {}), "handle": _ms(call),
                                "ingress": ms})  # fmt: skip
        self._record("predict", request, rid, "/v1/predict", sha, result, ms)
        body = Prediction(request_id=rid, sha256=sha, **_public(result), scored_at=_now(), latency_ms=ms,
                          width=image.width, height=image.height, filename=filename)
        # A Response of its own, for the header: Serve's class-based routes do not inject FastAPI's `Response`.
        return JSONResponse(body.model_dump(), headers={"Server-Timing": timing})

    @api.post("/v1/predict/batch", response_model=BatchPrediction, responses=_ERRORS, openapi_extra=_BATCH_BODY,
              dependencies=[Depends(_bearer)], summary="Score up to serve.max_batch_images images (multipart)")
    async def predict_batch(self, request: Request) -> dict[str, Any]:
        start = time.perf_counter()
        rid = _serve_request_id(request)
        route = "/v1/predict/batch"
        self._authorize(request, rid, route)
        mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if mime != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type", f"send the images as multipart/form-data (got {mime!r})",
                           rid)
        limit = self.options.max_batch_images
        uploads = await self._uploads(request, rid, max_files=limit)
        if len(uploads) > limit:
            raise ApiError(400, "too_many_images", f"{len(uploads)} images; at most {limit} per request", rid)

        async def one(index: int, filename: str | None, data: bytes) -> dict[str, Any]:
            sha = sha256_hex(data) if data else None
            try:
                decoded = await self._decode(data, rid)
                result = await self._call_model("predict", decoded, rid)
            except ApiError as exc:
                self._reject(exc, request, route, sha)
                return {"index": index, "filename": filename, "sha256": sha, "error": f"{exc.reason}: {exc.detail}"}
            self._record("predict_batch", request, rid, route, sha, result, _ms(start))
            image = decoded[0]
            return {"index": index, "filename": filename, "sha256": sha, **_public(result),
                    "width": image.width, "height": image.height, "error": None}

        results = await asyncio.gather(*(one(i, name, data) for i, (name, data) in enumerate(uploads)))
        if all(r["error"] is not None for r in results):  # nothing scored: the request as a whole is bad
            why = "; ".join(f"#{r['index']} {r['error']}" for r in results)
            raise ApiError(422, "no_valid_images", f"none of the {len(results)} images could be scored ({why})",
                           rid)
        return {"request_id": rid, "count": len(results), "errors": sum(r["error"] is not None for r in results),
                "latency_ms": _ms(start), "scored_at": _now(), "results": results}

    @api.post("/v1/explain", response_model=ExplainResponse, responses=_ERRORS, openapi_extra=_IMAGE_BODY,
              dependencies=[Depends(_bearer)], summary="Score one image and show why (Grad-CAM, LIME or SHAP overlay)")
    async def explain(self, request: Request, method: str = Query(
            "gradcam", description="gradcam (one backward pass per view) | lime | shap (explain.n_samples forward "
            "passes per view, on superpixels)")) -> dict[str, Any]:  # fmt: skip
        from raydetect.explain.core import METHODS

        start = time.perf_counter()
        rid = _serve_request_id(request)
        self._authorize(request, rid, "/v1/explain")
        if method not in METHODS:
            error = ApiError(422, "unknown_method", f"method {method!r} is not one of {', '.join(METHODS)}", rid)
            self._reject(error, request, "/v1/explain")
            raise error
        filename, _, sha, decoded = await self._one_image(request, rid, "/v1/explain", defer=False)  # draws on it
        image = decoded[0]
        result = await self._call_model("explain", decoded, rid, {"method": method})
        png, size, reason = await run_in_threadpool(_render_overlay, image, result, self.options.max_overlay_pixels)
        ms = _ms(start)
        self._record("explain", request, rid, "/v1/explain", sha, result, ms)
        return {"request_id": rid, "sha256": sha, **_public(result), "scored_at": _now(), "latency_ms": ms,
                "width": image.width, "height": image.height, "filename": filename, "method": method, "reason": reason,
                "overlay_png_base64": base64.b64encode(png).decode("ascii"), "overlay_width": size[0],
                "overlay_height": size[1]}


# --- building the application ------------------------------------------------------------------------


def _gpus_per_replica(settings: Settings) -> float:
    if settings.serve.num_gpus is not None:
        return float(settings.serve.num_gpus)
    if settings.device == "cpu":
        return 0.0
    try:
        import ray

        if ray.is_initialized():
            return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    except Exception:  # noqa: BLE001 - no GPU information means no GPU request
        return 0.0


def build_app(settings: Settings | None = None, model_uri: str | ResolvedModel | None = None) -> serve.Application:
    """The Serve application for `settings` (defaults when None) serving `model_uri`: a reference
    (`registry.resolve_model`), or one already resolved (`raydetect serve` has looked it up to check it)."""
    settings = settings or load_settings()
    s = settings.serve
    if s.max_ongoing_requests < s.max_batch_size:
        raise ValueError(
            f"serve.max_ongoing_requests ({s.max_ongoing_requests}) must be >= serve.max_batch_size "
            f"({s.max_batch_size}), or batches can never fill"
        )
    resolved = model_uri if isinstance(model_uri, ResolvedModel) else resolve_model(
        model_uri, settings, must_exist=False, serve=True
    )
    user_config = {
        "model_uri": resolved.uri,
        "max_batch_size": s.max_batch_size,
        "batch_wait_timeout_s": s.batch_wait_timeout_s,
    }
    if resolved.version is not None:
        user_config.update(registry_version=resolved.version, model_ref=resolved.ref)
    gpus = _gpus_per_replica(settings)
    model_args = {"device": settings.device, "torch_threads": s.torch_threads, "precision": settings.precision,
                  "registry_uri": settings.mlflow_uri(), "explain": settings.explain.model_dump(),
                  "storage_settings": settings.storage}  # fmt: skip
    model_options = {
        "autoscaling_config": {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        },
        "ray_actor_options": {"num_cpus": s.replica_num_cpus, "num_gpus": gpus},
        "user_config": user_config,
    }
    options = IngressOptions.from_settings(settings, gpus)
    ingress_queue = max(4 * s.max_ongoing_requests, 64)
    if resolved_topology(s.topology, gpus) == "fused":  # one deployment: the model's resources and autoscaling
        return RayDetectAPI.options(max_ongoing_requests=ingress_queue, **model_options).bind(model_args, options)
    model = DetectorModel.options(max_ongoing_requests=s.max_ongoing_requests, **model_options).bind(**model_args)
    ingress = RayDetectAPI.options(
        num_replicas=s.ingress_replicas,
        max_ongoing_requests=ingress_queue,
        ray_actor_options={"num_cpus": s.ingress_num_cpus},
    )
    return ingress.bind(model, options)


class AppArgs(BaseModel):
    """Arguments of `app_builder` (the `args:` of an application in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_uri: str | None = Field(None, description="model directory or registry reference; see registry.resolve_model")
    config: str | None = Field(None, description="a raydetect YAML config file")
    overrides: list[str] = Field(default_factory=list, description="section.key=value overrides")


def app_builder(args: dict[str, Any] | AppArgs | None = None) -> serve.Application:
    """`import_path: raydetect.serve.app:app_builder` (for `serve run` / `serve deploy`)."""
    parsed = args if isinstance(args, AppArgs) else AppArgs.model_validate(dict(args or {}))
    settings = config_file_settings(load_settings(parsed.config, parsed.overrides))
    return build_app(settings, parsed.model_uri)


__all__ = ["AppArgs", "DetectorModel", "IngressOptions", "RayDetectAPI", "api", "app_builder", "build_app"]
