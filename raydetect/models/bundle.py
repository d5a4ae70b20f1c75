"""A trained detector as a self-describing directory: `model.json` + `weights.pt`.

`raydetect score --model DIR`, Serve and the evaluation all load this one format, from a local path or
`s3://`, through one dispatch point, `load_detector`: the card's `kind` says whether the directory holds a
CNN (`Detector`) or a DIRE model (`models.dire.DireDetector`, the same `predict_images` interface). The JSON
carries what is needed to reproduce predictions: backbone, preprocessing, threshold and the uncertain band
sent to human review, and `calibration` (evaluate/calibration.py): the temperature fitted on the validation
fold, the rule that chose the threshold and band, and what they gave there. A card without it (made before
calibration) keeps temperature 1 and its own threshold and band.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from raydetect import storage
from raydetect.config import StorageSettings
from raydetect.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from raydetect.models.allocator import tune_allocator
from raydetect.models.backbones import build_backbone
from raydetect.models.precision import autocast, resolve_precision
from raydetect.models.views import ViewPolicy, image_logits, make_views, normalize, sigmoid

FORMAT = "raydetect-model/1"
CARD_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"


@dataclass
class ModelCard:
    backbone: str
    name: str = "raydetect"
    input_filter: str = "none"  # inside the model, in front of its stem (models/filters.py)
    version: str = "0"
    image_size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    threshold: float = 0.5
    review_band: list[float] = field(default_factory=lambda: [0.4, 0.6])
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)
    views: dict[str, object] | None = None  # the view policy (models/views.py); None: legacy resize + crop
    calibration: dict[str, object] | None = None  # temperature + decision rule (evaluate/calibration.py)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    format: str = FORMAT
    kind: str = "cnn"  # cnn: a backbone + weights.pt (Detector) | dire: UNet + statistics head (models/dire.py)

    @property
    def view_policy(self) -> ViewPolicy:
        """How this model's inputs are made: the recorded policy, or `resize` for cards without one."""
        return ViewPolicy.from_dict(self.views, self.image_size)

    @property
    def temperature(self) -> float:
        """P(AI) = sigmoid(logit / temperature); 1 for cards without a calibration."""
        return float((self.calibration or {}).get("temperature", 1.0))

    def calibrated(self, calibration: dict[str, object]) -> ModelCard:
        """This card with `calibration` recorded and its threshold and review band taken as the decision."""
        return replace(self, calibration=dict(calibration), threshold=float(calibration["threshold"]),
                       review_band=[float(v) for v in calibration["review_band"]])  # fmt: skip

    def decide(self, prob_ai: float) -> str:
        """real / ai / review: probabilities inside the review band go to a person."""
        low, high = self.review_band
        if low <= prob_ai < high and low < high:
            return "review"
        return "ai" if prob_ai >= self.threshold else "real"


def save_model(model: nn.Module, card: ModelCard, uri: str, storage_settings: StorageSettings | None = None) -> str:
    """Write the directory (weights first, card last, so a card always has its weights)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return write_model_dir(uri, buffer.getvalue(), card, storage_settings)


def write_model_dir(uri: str, weights: bytes, card: ModelCard, storage_settings: StorageSettings | None = None) -> str:
    """Write a model directory from its weights' bytes and its card (weights first, card last)."""
    storage.makedirs(uri, storage_settings)
    storage.write_bytes(storage.join(uri, WEIGHTS_FILE), weights, storage_settings)
    storage.write_text(storage.join(uri, CARD_FILE), json.dumps(asdict(card), indent=2), storage_settings)
    return storage.normalize(uri)


def load_card(uri: str, storage_settings: StorageSettings | None = None) -> ModelCard:
    data = json.loads(storage.read_text(storage.join(uri, CARD_FILE), storage_settings))
    if data.get("format") != FORMAT:
        raise ValueError(f"{uri} is not a raydetect model directory (format {data.get('format')!r})")
    return ModelCard(**data)


def load_weights(uri: str, storage_settings: StorageSettings | None = None) -> dict[str, torch.Tensor]:
    """The state_dict in a model directory's `weights.pt`."""
    data = storage.read_bytes(storage.join(uri, WEIGHTS_FILE), storage_settings)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # a plain state_dict: no code runs


def load_model(
    uri: str, device: str | torch.device = "cpu", storage_settings: StorageSettings | None = None
) -> tuple[nn.Module, ModelCard]:
    card = load_card(uri, storage_settings)
    model = build_backbone(card.backbone, "none", card.input_filter, card.params.get("filter"))
    model.load_state_dict(load_weights(uri, storage_settings))
    return model.to(device).eval(), card


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolved_precision(device: str = "auto", precision: str = "auto") -> str:
    """The precision `Detector.load(uri, device, precision)` runs in this process."""
    return resolve_precision(precision, resolve_device(device))


class Detector:
    """A loaded model and its card: the one predictor that batch scoring, Serve and evaluation share.

    `predict_images` takes each image's uint8 views (`models.views.make_views` with `self.policy`) and gives
    one P(AI) per image; `predict` / `logits` take preprocessed NCHW float arrays (one view each).
    `precision` (auto | fp32 | bf16 | fp16, see models/precision.py) is resolved for `device` once, here;
    `self.precision` is what the forward passes run (autocast), always fp32 output. `self.model` stays the
    plain fp32 module (Grad-CAM takes its gradients in fp32). Every P(AI) is `sigmoid(logit / T)` with the
    card's temperature T (`probabilities`, the one place calibration is applied); `logits` stay raw."""

    takes_tensors = True  # predict_images also takes views as device tensors (GPU preprocessing)
    # Views per forward pass by device when a caller names none: on the 2-core CPU, EfficientNet-Lite0 + NPR
    # runs 1.2-1.8x more images/s in passes of 4-8 views than of 32 (activations that stay in cache;
    # benchmarks/score_throughput.py (b')); GPUs want large passes.
    FORWARD_BATCH = {"cpu": 8, "cuda": 64}

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        device: torch.device,
        policy: ViewPolicy | None = None,
        precision: str = "auto",
    ):
        # channels_last (NHWC) convolutions: 1.1-1.6x faster on CPU here, and what tensor cores want
        self.model, self.card, self.device = model.to(memory_format=torch.channels_last), card, device
        self.policy = policy or card.view_policy
        self.precision = resolve_precision(precision, device)
        tune_allocator()  # activations reused, not page-faulted in again every pass: 1.3-1.5x on CPU

    @classmethod
    def load(cls, uri: str, device: str = "auto", view_mode: str | None = None, precision: str = "auto",
             storage_settings: StorageSettings | None = None) -> Detector:
        """`view_mode` (native / resize) overrides the card's view policy mode; None or `card` keeps it."""
        dev = resolve_device(device)
        model, card = load_model(uri, dev, storage_settings)
        return cls(model, card, dev, card.view_policy.with_mode(view_mode), precision)

    @torch.inference_mode()
    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """One logit per NCHW float input."""
        tensor = torch.as_tensor(batch, dtype=torch.float32).to(self.device, non_blocking=True)
        tensor = tensor.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            out = self.model(tensor)
        return out.float().reshape(-1).cpu().numpy()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(AI) of raw logits (the card's temperature; 1 without a calibration)."""
        return sigmoid(np.asarray(logits) / self.card.temperature)

    def predict(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """P(AI) per NCHW float input (one view each)."""
        return self.probabilities(self.logits(batch))

    def view_logits(self, views: np.ndarray) -> np.ndarray:
        """Logits of uint8 NHWC views (normalised here, on the model's device)."""
        return self.logits(normalize(views, self.card.mean, self.card.std, self.device))

    def predict_image(self, image: Image.Image | np.ndarray) -> float:
        """P(AI) of one decoded image, through its views."""
        return float(self.predict_images([make_views(image, self.policy)])[0])

    @property
    def forward_batch(self) -> int:
        """Views per forward pass when `predict_images` is given none (`FORWARD_BATCH`, by device)."""
        return self.FORWARD_BATCH.get(self.device.type, 32)

    def predict_images(self, images: list[np.ndarray], max_batch: int | None = None) -> np.ndarray:
        """P(AI) per image from its views (`images[i]`: (N_i, h, w, 3) uint8), aggregated by the policy, in
        forward passes of at most `max_batch` views (None: `forward_batch`, by device)."""
        batch = max_batch or self.forward_batch
        return self.probabilities(image_logits(self.view_logits, images, self.policy, batch))


def load_detector(uri: str, device: str = "auto", view_mode: str | None = None, precision: str = "auto",
                  storage_settings: StorageSettings | None = None):
    """The one model resolver of scoring, Serve and evaluation: the card's `kind` picks `Detector` (cnn) or
    `DireDetector` (dire); both give `.card`, `.policy`, `.device`, `.precision`, `.predict_images(views)`.
    `storage_settings` (the config's `storage:`) reach every read of the directory, as they do image reads."""
    card = load_card(uri, storage_settings)
    options = {"device": device, "view_mode": view_mode, "precision": precision, "storage_settings": storage_settings}
    if card.kind == "dire":
        from raydetect.models.dire import DireDetector

        return DireDetector.load(uri, **options)
    if card.kind != "cnn":
        raise ValueError(f"{uri}: unknown model kind {card.kind!r} (cnn, dire)")
    return Detector.load(uri, **options)


# --- tables of the training run, kept in the model directory ------------------------------------------------

CV_PREDICTIONS_FILE = "cv_predictions.parquet"  # its CV's out-of-fold rows (train.cv.out_of_fold)
GENERALISATION_FILE = "generalisation.csv"  # leave-one-generator-out (train.cv.generalisation_table)


def save_beside_model(frame: pd.DataFrame | None, model_uri: str | None, file: str,
                      storage_settings: StorageSettings | None = None) -> None:  # fmt: skip
    """Write a table of the training run into the model directory it exported (Parquet, or CSV by `file`'s
    suffix): the CV's out-of-fold predictions (ensembles, recipe tables), the generalisation table."""
    if frame is None or model_uri is None:
        return
    buffer = io.BytesIO()
    if file.endswith(".csv"):
        frame.to_csv(buffer, index=False)
    else:
        frame.to_parquet(buffer, index=False)
    storage.write_bytes(storage.join(model_uri, file), buffer.getvalue(), storage_settings)


def read_beside_model(
    model_uri: str, file: str, storage_settings: StorageSettings | None = None
) -> pd.DataFrame | None:
    """A table `save_beside_model` wrote (None when the model directory has none)."""
    uri = storage.join(model_uri, file)
    if not storage.exists(uri, storage_settings):
        return None
    data = io.BytesIO(storage.read_bytes(uri, storage_settings))
    return pd.read_csv(data) if file.endswith(".csv") else pd.read_parquet(data)
