"""Typed settings: the embedded defaults, a user YAML file, then dotted overrides, in that order."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULTS_RESOURCE = "defaults.yaml"
InputFilter = Literal["none", "npr", "dire"]  # what models/filters.py can put in front of a backbone's stem
PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]  # forward-pass precision (models/precision.py)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageSettings(_Section):
    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False


class ViewSettings(_Section):
    """How a model trained now will have its inputs made (recorded in its card; models/views.py)."""

    mode: Literal["native", "resize"] = "native"
    max_tiles: int = Field(16, gt=0)
    aggregate: Literal["mean", "max", "topk"] = "mean"
    top_k: int = Field(3, gt=0)
    small: Literal["whole", "pad"] = "whole"


class ImageSettings(_Section):
    size: int = Field(224, gt=0)
    views: ViewSettings = ViewSettings()
    max_pixels: int = Field(40_000_000, gt=0)
    max_bytes: int = Field(25 * 1024 * 1024, gt=0)
    allowed_formats: list[str] = ["JPEG", "PNG", "WEBP"]


class BenchmarkSettings(_Section):
    n_pairs: int = Field(1200, gt=0)
    generators: list[str] = ["esrgan", "esrgan-anime", "waifu2x", "ddpm"]
    sizes: list[int] = [224]  # image sides, drawn per pair (real and AI of a pair alike)
    test_sizes: list[int] | None = [224, 320, 448]  # the test split's sides; null -> sizes
    min_downscale: float = Field(2.0, ge=1)  # every real image is downsampled from its photo at least this much
    hardneg_share: float = Field(0.6, ge=0, le=1)  # real images resized/blurred to their AI pair's sharpness
    hardneg_blur_share: float = Field(0.3, ge=0, le=1)  # of the hard negatives, blurred (the rest resized)
    processing_share: float = Field(0.3, ge=0, le=1)
    test_share: float = Field(0.2, ge=0, lt=1)
    encoding: Literal["png", "jpeg"] = "png"  # the same for both classes (no format shortcut)
    jpeg_quality: int = Field(95, ge=1, le=100)  # used when encoding is jpeg
    diffusion_model: str | None = None  # diffusers id/folder for `ddpm`; null -> fit our own (cached)
    fit_steps: int = Field(500, gt=0)  # training steps of our own small UNet
    fit_threads: int = Field(2, gt=0)  # torch threads for that training (1 is faster on a busy machine)
    sdedit_strength: float = Field(0.25, gt=0, le=1)
    sdedit_steps: int = Field(20, gt=0)  # DDIM schedule; round(steps * strength) are run
    actor_num_cpus: float = Field(0.5, gt=0)  # per generator actor (capped so every pool fits the cluster)
    max_actors: int = Field(2, gt=0)  # per generator
    batch_size: int = Field(4, gt=0)
    threads: int = Field(1, gt=0)  # torch/ncnn threads per actor


class TrainSettings(_Section):
    recipe: Literal["finetune", "probe"] = "finetune"  # probe: logistic regression on frozen features
    probe_c: float = Field(0.5, gt=0)  # the probe's inverse L2 strength (scikit-learn's C)
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    input_filter: InputFilter = "npr"  # in front of the stem (models/filters.py)
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    workers: int = Field(1, gt=0)
    cv: int = Field(1, gt=0)
    fold: int = Field(0, ge=0)
    patience: int = Field(3, gt=0)
    freeze_stem_epochs: int = Field(0, ge=0)
    trainable_blocks: int | None = Field(None, gt=0)  # only the last N blocks (and the head) train; null: all
    leave_generator_out: bool = False  # also train without each generator in turn (generalisation table)
    augment_strength: float = Field(0.0, ge=0)
    image_size: int | None = Field(None, gt=0)  # null -> images.size
    crop_size: int | None = Field(128, gt=0)  # train on random crops of this side at native resolution
    adv: Literal["none", "fgsm", "pgd"] = "none"  # adversarial training (loss: mean of clean and attacked)
    adv_eps_255: float = Field(2.0, ge=0)  # its L-inf budget in grey levels (eps = v / 255)
    adv_steps: int = Field(10, gt=0)  # PGD steps
    augment_views: int = Field(8, gt=0)  # differently-seeded augmented copies of the train set, cycled per epoch
    storage_path: str | None = None  # Ray Train checkpoints (local or s3://); null -> <workdir>/runs
    use_gpu: bool | None = None  # null -> when the cluster has GPUs
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int = Field(0, ge=0)  # per worker; 0 -> the node's cores / the run's workers on it
    decode_actors: int = Field(2, gt=0)  # Ray Data decode/augment actor pool per dataset
    decode_num_cpus: float = Field(0.5, gt=0)
    model_name: str = "raydetect"
    tune_num_samples: int = Field(8, gt=0)
    tune_max_concurrent: int | None = Field(None, gt=0)  # null -> as many trials as the cluster's CPUs/GPUs fit


class CalibrationSettings(_Section):
    """Fitted on the validation fold at the end of training (per fold in CV); recorded in the model card."""

    enabled: bool = True  # false: temperature 1, threshold 0.5, review band 0.4-0.6 as before
    threshold_rule: Literal["max_f1", "target_fpr", "fixed"] = "max_f1"
    target_fpr: float = Field(0.05, ge=0, le=1)  # threshold_rule: target_fpr
    fixed_threshold: float = Field(0.5, ge=0, le=1)  # threshold_rule: fixed
    review_precision: float = Field(0.95, gt=0, le=1)  # outside the review band, decisions at least this precise
    bins: int = Field(15, gt=1)  # equal-width P(AI) bins of the ECE and the reliability diagram
    min_samples: int = Field(20, gt=0)  # fewer validation images: nothing fitted (temperature 1, defaults)


class EvaluateSettings(_Section):
    bootstrap: int = Field(1000, ge=0)  # resamples for the 95 % intervals of the headline metrics; 0: none
    fairness_limit: float = Field(0.1, ge=0)  # equalized-odds difference across `category` flagged above
    robustness_sample: int = Field(120, ge=0)  # labelled images re-scored per perturbation (0: no sweep)
    perturbations: list[str] = ["jpeg90", "jpeg70", "jpeg50", "blur1", "blur2", "downscale0.5", "reencode"]
    reencode: Literal["png", "jpeg"] = "jpeg"  # `reencode`: both classes to this one format (benchmark's encode)
    reencode_quality: int = Field(95, ge=1, le=100)
    adversarial_sample: int = Field(32, ge=0)  # labelled images attacked with --model (0: no adversarial table)
    attacks: list[Literal["fgsm", "pgd"]] = ["fgsm", "pgd"]
    attack_eps_255: list[float] = [1, 2, 4]  # L-inf budgets in grey levels of an 8-bit image (eps = v / 255)
    pgd_steps: int = Field(10, gt=0)
    gallery_size: int = Field(6, ge=0)  # most confident false positives / negatives shown, each (0: none)
    gallery_max_side: int = Field(320, gt=0)  # their overlays are scaled down to this side in the report


class ExplainSettings(_Section):
    """`raydetect explain`, Serve's `/v1/explain` and the report's galleries (raydetect/explain/). LIME and
    KernelSHAP switch superpixels of each view off (to `baseline`) and fit a linear model to the logit."""

    method: Literal["gradcam", "lime", "shap"] = "gradcam"  # the CLI's default
    n_samples: int = Field(64, gt=1)  # perturbed copies per view (LIME and KernelSHAP)
    batch_size: int = Field(16, gt=0)  # perturbed copies per forward pass
    superpixels: Literal["slic", "grid"] = "slic"  # skimage SLIC segments, or a regular grid
    n_segments: int = Field(16, gt=1)  # superpixels per view (SLIC's target count; grid: rounded to a square)
    compactness: float = Field(10.0, gt=0)  # SLIC: higher -> more square segments
    baseline: Literal["blur", "mean"] = "blur"  # a switched-off superpixel: Gaussian-blurred, or the view's mean
    blur_sigma: float = Field(4.0, gt=0)
    kernel_width: float = Field(0.25, gt=0)  # LIME: exponential kernel on the cosine distance of the samples
    ridge_alpha: float = Field(1.0, ge=0)  # LIME: L2 penalty of its linear model
    seed: int = 0  # the perturbations are drawn from this seed (the same explanation every time)


class ScoreSettings(_Section):
    batch_size: int = Field(32, gt=0)  # images per model actor call
    forward_batch: int | None = Field(None, gt=0)  # views per forward pass; null -> by device (CPU 8, CUDA 64)
    views: Literal["card", "native", "resize"] = "card"  # the view policy's mode: the model card's, or forced
    min_actors: int = Field(1, gt=0)
    max_actors: int = Field(2, gt=0)
    actor_num_cpus: float = Field(0.5, gt=0)
    actor_num_gpus: float = Field(1.0, ge=0)  # per model actor, only when the cluster has GPUs
    torch_threads: int = Field(0, ge=0)  # per model actor; 0 -> the node's cores / max_actors
    decode_num_cpus: float = Field(0.25, gt=0)  # read + decode tasks; equal to actor_num_cpus fuses them
    # where JPEGs are decoded and cut into views: cpu (the read tasks), model (the model actor, on its
    # device: nvJPEG + tensor ops on a GPU), auto (model when the actors get a GPU)
    preprocess_on: Literal["auto", "cpu", "model"] = "auto"
    write_num_cpus: float = Field(0.25, gt=0)  # Parquet write tasks
    read_block_rows: int = Field(64, gt=0)  # inputs per read/decode block (2 batches: a short tail)
    rows_per_file: int = Field(1024, gt=0)  # at least this many rows per Parquet file (the last one fewer)


class DireFitSettings(_Section):
    """`raydetect dire fit-diffusion`: DIRE's own small UNet, trained on real training images only. Not the
    benchmark's `ddpm` generator (other channels, seed, epsilon prediction, the whole timestep range)."""

    channels: list[int] = [16, 32, 48]
    layers_per_block: int = Field(1, gt=0)
    size: int = Field(48, gt=0)  # native-resolution training crops (never resampled); fully convolutional
    steps: int = Field(400, gt=0)
    batch_size: int = Field(8, gt=0)
    lr: float = Field(1e-3, gt=0)
    t_max: float = Field(1.0, gt=0, le=1)  # train on timesteps [0, t_max * T): all of them, full DIRE inverts to T
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    pool: int = Field(512, gt=0)  # real crops drawn once, sampled (with flips) for every batch
    seed: int = 1
    threads: int = Field(1, gt=0)  # torch threads; 2 on 2 busy shared cores was 40x slower (spin-waits)
    holdout_fold: int | None = 0  # real images of this fold are never trained on (validation); null: all folds


class DireSettings(_Section):
    """DIRE: the reconstruction error of a diffusion UNet as a detector (models/dire.py)."""

    diffusion: str | None = None  # UNet: diffusers id or folder; null -> <workdir>/dire/diffusion
    mode: Literal["full", "truncated", "onestep"] = "onestep"
    steps: int = Field(20, gt=0)  # DDIM schedule length k; full: k inversion + k reconstruction passes
    truncated_steps: int = Field(2, gt=0)  # truncated: invert the first s of the k steps (t0 = s/k T), back
    noise_level: float = Field(0.3, gt=0, lt=1)  # onestep: noise to t = noise_level T, predict x0 once
    seed: int = 0  # the one fixed noise field of onestep (the same for every image)
    map_format: Literal["npy", "png16"] = "npy"  # error maps on disk, the same for both classes
    tile: int = Field(224, gt=0)  # native-resolution views of this side (never resampled)
    max_tiles: int = Field(4, gt=0)
    batch_size: int = Field(8, gt=0)  # views per UNet batch
    classifier_c: float = Field(1.0, gt=0)  # logistic regression's inverse L2 strength
    min_actors: int = Field(1, gt=0)
    max_actors: int = Field(1, gt=0)
    actor_num_cpus: float = Field(0.5, gt=0)  # a fraction: read/decode tasks keep a core on 2-core machines
    actor_num_gpus: float = Field(1.0, ge=0)  # per actor, only when the cluster has GPUs
    torch_threads: int = Field(0, ge=0)  # per actor; 0 -> the node's cores / max_actors
    fit: DireFitSettings = DireFitSettings()


class TrackingSettings(_Section):
    mlflow_uri: str | None = None
    experiment: str = "raydetect"


class ServeSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(25 * 1024 * 1024, gt=0)
    max_batch_images: int = Field(16, gt=0)
    # null -> $RAYDETECT_MODEL_URI, then the registry's production alias, then <workdir>/models/production.
    model_uri: str | None = None
    api_key_file: str | None = None  # secret file (first line); $RAYDETECT_API_KEY wins; neither -> auth off
    audit_log: str | None = None  # JSON lines; null -> <workdir>/serve/audit.jsonl; "-" -> not written
    max_batch_size: int = Field(16, gt=0)  # @serve.batch; 1 turns dynamic batching off
    batch_wait_timeout_s: float = Field(0.0, ge=0)  # 0: the Coalescer batches what waits while the model is busy
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, gt=0)
    target_ongoing_requests: float = Field(8.0, gt=0)
    max_ongoing_requests: int = Field(32, gt=0)
    replica_num_cpus: float = Field(1.0, ge=0)
    num_gpus: float | None = None  # per model replica; null -> 1 when the cluster has GPUs, else 0
    torch_threads: int | None = None  # null -> the replica's CPU share (at least 1)
    ingress_replicas: int = Field(1, gt=0)
    ingress_num_cpus: float = Field(0.25, ge=0)
    drain_timeout_s: float = Field(30.0, ge=0)  # `raydetect serve` on SIGTERM / Ctrl-C: wait for requests in flight
    max_overlay_pixels: int = Field(16_000_000, gt=0)  # explain overlays larger than this are scaled down
    # JPEG decode + views: ingress (the HTTP replica, PIL) | model (the model replica, batched, on its device:
    # nvJPEG + tensor ops on a GPU) | auto (model when model replicas get a GPU, else ingress)
    preprocess_on: Literal["auto", "ingress", "model"] = "auto"
    # Ray Serve's high-throughput mode on clusters raydetect starts (cluster.serve_environment): HAProxy in front
    # of the ingress replicas' own ports in place of the Python proxy actor, gRPC between deployments. Read by
    # Serve's processes when the cluster starts; elsewhere set the variables on the nodes (deploy/kuberay).
    haproxy: bool = True
    # split: the HTTP ingress and the model are two deployments (decode and model scale apart; a GPU model
    # replica behind CPU ingress replicas) | fused: one deployment, the model in each ingress replica (no hop
    # between them: about 4 ms and one process's CPU less per request; autoscaled as the model was) | auto:
    # split when model replicas get a GPU, else fused (`serve.app.serve_topology`); split when deployed from a
    # Serve config file, which names both deployments (`serve.app.config_file_settings`)
    topology: Literal["auto", "split", "fused"] = "auto"


class GateSettings(_Section):
    """What `raydetect model promote` asks of a version (raydetect/gates.py); null switches a gate off."""

    min_metrics: dict[str, float] = {"f1": 0.7, "auc_roc": 0.75}  # floors on the version's evaluation
    max_drop: dict[str, float] = {"f1": 0.02, "auc_roc": 0.02}  # vs production, on the same data
    max_fairness_gap: float | None = Field(0.2, ge=0)  # accuracy gap between categories
    max_robustness_drop: float | None = Field(0.3, ge=0)  # accuracy unprocessed minus processed


class RegistrySettings(_Section):
    model_name: str = "raydetect"  # the registered model in MLflow's model registry
    alias: str = "production"  # the alias that serves
    auto_register: bool = True  # `raydetect train` registers the model it saves (when tracking is on)
    gates: GateSettings = GateSettings()


class MonitorSettings(_Section):
    """`raydetect monitor drift` / `check` (raydetect/monitor/)."""

    psi_bins: int = Field(10, gt=1)  # quantile bins of the reference's prob_ai
    max_psi: float = Field(0.2, gt=0)  # PSI above this is drift (0.1-0.2: moderate, > 0.2: large)
    ks_alpha: float = Field(0.01, gt=0, lt=1)  # KS test on prob_ai: p below this (and PSI > max_psi/2) is drift
    max_share_change: float = Field(0.1, gt=0)  # absolute change of the ai / review share
    max_input_psi: float = Field(0.25, gt=0)  # PSI of an input statistic (size, brightness, ..., embeddings)
    input_sample: int = Field(200, ge=0)  # files per side read for the input statistics (0: none)
    embeddings: bool = True  # compare the sample's pooled backbone features (with the runs' or --model's model)
    embedding_components: int = Field(3, ge=0)  # principal components of the reference's features compared
    max_metric_drop: float = Field(0.05, gt=0, lt=1)  # relative drop below the registered value -> retrain
    metrics: list[str] = ["f1", "auc_roc"]


class DemoSettings(_Section):
    train: dict[str, Any] | None = None  # `train:` keys the demo trains with instead (its recipe; defaults.yaml)
    evaluate: dict[str, Any] | None = None  # `evaluate:` keys its report uses instead (cheaper attacks)
    dire: dict[str, Any] | None = None  # `dire:` keys of its DIRE stage (deep-merged); null: no DIRE stage
    dire_sample: int = Field(200, gt=0)  # the first N training images the DIRE stage makes maps of


class Settings(_Section):
    workdir: str = ".raydetect"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: PrecisionSetting = "auto"  # scoring, Serve, evaluation and training (models/precision.py)
    storage: StorageSettings = StorageSettings()
    images: ImageSettings = ImageSettings()
    benchmark: BenchmarkSettings = BenchmarkSettings()
    train: TrainSettings = TrainSettings()
    calibration: CalibrationSettings = CalibrationSettings()
    score: ScoreSettings = ScoreSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    explain: ExplainSettings = ExplainSettings()
    dire: DireSettings = DireSettings()
    tracking: TrackingSettings = TrackingSettings()
    serve: ServeSettings = ServeSettings()
    registry: RegistrySettings = RegistrySettings()
    monitor: MonitorSettings = MonitorSettings()
    demo: DemoSettings = DemoSettings()

    def for_demo(self) -> Settings:
        """These settings with `demo.train` over `train`, `demo.evaluate` over `evaluate` and `demo.dire`
        deep-merged over `dire` (validated like those sections)."""
        train = TrainSettings.model_validate({**self.train.model_dump(), **(self.demo.train or {})})
        evaluate = EvaluateSettings.model_validate({**self.evaluate.model_dump(), **(self.demo.evaluate or {})})
        dire = DireSettings.model_validate(_deep_merge(self.dire.model_dump(), self.demo.dire or {}))
        return self.model_copy(update={"train": train, "evaluate": evaluate, "dire": dire})

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()

    def mlflow_uri(self) -> str:
        """The tracking URI: config, then $MLFLOW_TRACKING_URI, then a SQLite file in the workdir."""
        uri = self.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        return uri or f"sqlite:///{self.workdir_path / 'mlflow.db'}"


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """`train.epochs=5` -> {"train": {"epochs": 5}}; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw else ""
    for part in reversed(dotted.strip().split(".")):
        value = {part: value}
    return value


def default_config_text() -> str:
    return resources.files("raydetect").joinpath(DEFAULTS_RESOURCE).read_text()


def load_settings(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Settings:
    """Defaults, then the YAML file at `path`, then `overrides` (dotted strings or a nested dict)."""
    data: dict[str, Any] = yaml.safe_load(default_config_text()) or {}
    if path is not None:
        user = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(user, dict):
            raise ValueError(f"{path}: a config file must hold a mapping at the top level")
        data = _deep_merge(data, user)
    if isinstance(overrides, dict):
        data = _deep_merge(data, overrides)
    else:
        for text in overrides or []:
            data = _deep_merge(data, parse_override(text))
    return Settings.model_validate(data)
