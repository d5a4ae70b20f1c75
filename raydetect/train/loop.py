"""The training loop as plain PyTorch: what each Ray Train worker runs, and what tests run without Ray.

AdamW, a per-step cosine schedule (linear warm-up optional), optional adversarial training (`adv`: FGSM or
PGD copies of every batch, evaluate/adversarial.py), autocast by `precision` (models/precision.py;
`auto`: bf16 on CUDA where supported, else fp16 with a grad scaler; bf16 on CPUs with native bf16), optional
stem freezing for the first epochs, early stopping on validation F1 (ties broken by validation loss), seeded.
Batches are `(images, labels)` tuples or dicts with `image`, `label` and optionally `weight` (0 for rows that
failed to decode), NCHW float32 images and 0/1 labels. Validation
batches may carry `views` instead of `image`: each row's uint8 views (`models.views.make_views`), scored as
batch scoring and Serve score them (normalised with `LoopConfig.mean/std`, logits aggregated by the
`LoopConfig.views` policy), so the validation metrics are the metrics of the deployed scoring path.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from raydetect.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from raydetect.models.allocator import tune_allocator
from raydetect.models.backbones import early_parameters, stem_parameters
from raydetect.models.precision import autocast, resolve_precision
from raydetect.models.views import ViewPolicy, image_logits, normalize

Batch = tuple[torch.Tensor, torch.Tensor] | Mapping[str, Any]
BatchSource = Callable[[], Iterable[Batch]]
METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "auc")


@dataclass
class LoopConfig:
    """Optimisation settings for one training run (one fold)."""

    epochs: int = 3
    lr: float = 3e-4
    weight_decay: float = 1e-4
    patience: int = 3
    freeze_stem_epochs: int = 0
    trainable_blocks: int | None = None  # only the last N blocks (and the head) train; None: the whole model
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    threshold: float = 0.5
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16, resolved for the device (models/precision.py)
    grad_clip: float | None = 5.0
    views: dict[str, Any] | None = None  # the view policy of validation batches that carry `views`
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    adv: str | None = None  # fgsm | pgd: adversarial training (evaluate/adversarial.py); None / none: off
    adv_eps: float = 2 / 255  # its L-inf budget in pixel units
    adv_steps: int = 10  # PGD steps

    @property
    def view_policy(self) -> ViewPolicy:
        return ViewPolicy(**self.views) if self.views else ViewPolicy()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LoopConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """Per-epoch history, the best epoch by validation F1, its metrics, weights and validation logits."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False
    best_val: tuple[np.ndarray, np.ndarray] | None = None  # (labels, raw logits) of the best epoch's validation


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to `min_lr_ratio` x lr at `total_steps` (held there afterwards)."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the optimiser gets: every parameter but those of frozen input filters (the DIRE UNet, which
    gets no gradient and no weight decay)."""
    from raydetect.models.filters import frozen_parameters

    frozen = {id(p) for p in frozen_parameters(unwrap(model))}
    return [p for p in model.parameters() if id(p) not in frozen]


def set_stem_frozen(model: nn.Module, frozen: bool, trainable_blocks: int | None = None) -> None:
    """Freeze (or unfreeze) everything but the head; with `trainable_blocks` the parameters before the last
    N blocks stay frozen either way (backbones.early_parameters). Frozen BatchNorm layers stop updating their
    statistics."""
    inner = unwrap(model)
    stem = {id(p) for p in stem_parameters(inner)}
    fixed = {id(p) for p in early_parameters(inner, trainable_blocks)}
    for param in inner.parameters():
        if id(param) in stem:
            param.requires_grad_(not frozen and id(param) not in fixed)
    still = stem if frozen else fixed
    for module in inner.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and id(params[0]) in still:
            module.eval()


def _unpack(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(images, labels, weights or None). A `weight` of 0 marks a row that failed to decode: it stays in
    the batch (every data-parallel worker keeps the same number of steps) but counts for nothing."""
    weights = None
    if isinstance(batch, Mapping):
        images, labels = batch["image"], batch["label"]
        if batch.get("weight") is not None:
            weights = torch.as_tensor(batch["weight"]).to(device, dtype=torch.float32).reshape(-1)
    else:
        images, labels = batch
    images = torch.as_tensor(images, dtype=torch.float32).to(device, non_blocking=True)
    if images.dim() == 4:  # NHWC kernels: faster on CPU and on tensor cores
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.as_tensor(labels).to(device, dtype=torch.float32, non_blocking=True).reshape(-1)
    return images, labels, weights


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    precision: str = "auto",
    grad_clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    adversarial: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, int]:
    """One pass over `batches`; returns (mean loss, number of examples). `scaler`: for fp16 only.
    `adversarial(images, labels)`: adversarial copies of a batch; each row's loss is then the mean of its
    clean and adversarial losses (Goodfellow et al., 2015), both in one forward pass."""
    precision = resolve_precision(precision, device)
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    total, count = 0.0, 0.0
    for batch in batches:
        images, labels, weights = _unpack(batch, device)
        if images.shape[0] == 0:
            continue
        adv = adversarial(images, labels) if adversarial is not None else None
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            logits = model(images if adv is None else torch.cat([images, adv])).reshape(-1)
        if adv is None:
            per_row = loss_fn(logits.float(), labels)
        else:
            clean, attacked = logits.float().chunk(2)
            per_row = 0.5 * (loss_fn(clean, labels) + loss_fn(attacked, labels))
        if weights is not None:
            per_row = per_row * weights
            n_rows = float(weights.sum())
        else:
            n_rows = float(images.shape[0])
        loss_sum = per_row.sum()
        loss = loss_sum / max(n_rows, 1.0)
        if scaler is not None and precision == "fp16":
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss_sum.detach())
        count += n_rows
    return (total / count if count else float("nan")), int(count)


def _kept(batch: Mapping[str, Any], keep: Any) -> list[Any]:
    """The batch's row `key`s (e.g. paths) at `keep` (indices, a boolean mask, None: all); [] without keys."""
    keys = batch.get("key") if isinstance(batch, Mapping) else None
    if keys is None:
        return []
    keys = np.asarray(keys, dtype=object)
    return list(keys if keep is None else keys[np.asarray(keep)])


def _view_batch_logits(
    model: nn.Module, batch: Mapping[str, Any], device: torch.device, precision: str, config: LoopConfig
) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
    """(aggregated logits, labels, keys) of the decodable rows of a batch that carries `views`."""
    weights = batch.get("weight")
    keep = [i for i in range(len(batch["views"])) if weights is None or float(weights[i]) > 0]
    labels = torch.as_tensor(np.asarray(batch["label"], dtype=np.float32)[keep], device=device)

    def forward(views: np.ndarray) -> np.ndarray:
        x = normalize(views, config.mean, config.std, device).contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            return model(x).reshape(-1).float().cpu().numpy()

    logits = image_logits(forward, [batch["views"][i] for i in keep], config.view_policy)
    return torch.as_tensor(logits, dtype=torch.float32, device=device), labels, _kept(batch, keep)


class Validation(NamedTuple):
    """One pass over validation batches: labels, raw logits, mean BCE loss, and the rows' `key`s (paths) when
    the batches carry them (to join the predictions back to their rows: per-condition metrics, OOF files)."""

    labels: np.ndarray
    logits: np.ndarray
    loss: float
    keys: list[Any]


@torch.inference_mode()
def validate(
    model: nn.Module, batches: Iterable[Batch], device: torch.device, precision: str = "auto",
    config: LoopConfig | None = None,
) -> Validation:
    """Score `batches` with the model in eval mode (raw logits: what calibration is fitted on)."""
    precision = resolve_precision(precision, device)
    model.eval()
    config = config or LoopConfig()
    labels_out: list[np.ndarray] = []
    logits_out: list[np.ndarray] = []
    keys: list[Any] = []
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total = 0.0
    for batch in batches:
        if isinstance(batch, Mapping) and "views" in batch:
            logits, labels, kept = _view_batch_logits(model, batch, device, precision, config)
        else:
            images, labels, weights = _unpack(batch, device)
            if images.shape[0] == 0:
                continue
            with autocast(precision, device):
                logits = model(images).reshape(-1).float()
            keep = None
            if weights is not None:  # rows that failed to decode are not scored
                keep = weights > 0
                logits, labels = logits[keep], labels[keep]
                keep = keep.cpu().numpy()
            kept = _kept(batch, keep)
        total += float(loss_fn(logits, labels))
        labels_out.append(labels.cpu().numpy())
        logits_out.append(logits.cpu().numpy())
        keys.extend(kept)
    labels_all = np.concatenate(labels_out) if labels_out else np.zeros(0)
    logits_all = np.concatenate(logits_out) if logits_out else np.zeros(0)
    return Validation(labels_all, logits_all, total / len(labels_all) if len(labels_all) else float("nan"), keys)


def predict_logits(
    model: nn.Module, batches: Iterable[Batch], device: torch.device, precision: str = "auto",
    config: LoopConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, raw logits, mean BCE loss) over `batches`, model in eval mode (what calibration is fitted on)."""
    labels, logits, loss, _ = validate(model, batches, device, precision, config)
    return labels, logits, loss


def predict_batches(
    model: nn.Module, batches: Iterable[Batch], device: torch.device, precision: str = "auto",
    config: LoopConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, P(AI), mean BCE loss) over `batches`, model in eval mode (uncalibrated: temperature 1)."""
    labels, logits, loss = predict_logits(model, batches, device, precision, config)
    return labels, torch.sigmoid(torch.as_tensor(logits)).numpy(), loss


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """accuracy, precision, recall, F1 at `threshold` and AUC-ROC (NaN with one class), via scikit-learn."""
    from raydetect.evaluate.metrics import binary_metrics

    if len(labels) == 0:
        return {key: float("nan") for key in METRIC_KEYS}
    full = binary_metrics(labels.astype(int), probs, threshold)
    return {
        "accuracy": full["accuracy"],
        "precision": full["precision"],
        "recall": full["recall"],
        "f1": full["f1"],
        "auc": full["auc_roc"],
    }


class EarlyStopping:
    """Tracks the best epoch by validation F1 (ties: lower validation loss); stops after `patience` misses."""

    def __init__(self, patience: int):
        self.patience = max(1, patience)
        self.best_f1 = -math.inf
        self.best_loss = math.inf
        self.misses = 0

    def update(self, f1: float, loss: float) -> bool:
        f1 = -1.0 if math.isnan(f1) else f1
        loss = math.inf if math.isnan(loss) else loss
        improved = f1 > self.best_f1 + 1e-9 or (abs(f1 - self.best_f1) <= 1e-9 and loss < self.best_loss - 1e-9)
        if improved:
            self.best_f1, self.best_loss, self.misses = f1, loss, 0
        else:
            self.misses += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.misses >= self.patience


EpochCallback = Callable[[dict[str, float], nn.Module, bool], None]
ValidationCallback = Callable[[Validation], None]


def fit(
    model: nn.Module,
    train_batches: BatchSource,
    val_batches: BatchSource,
    config: LoopConfig,
    device: torch.device | str = "cpu",
    steps_per_epoch: int | None = None,
    on_epoch: EpochCallback | None = None,
    sync_stop: Callable[[bool], bool] | None = None,
    keep_best_state: bool = True,
    on_validation: ValidationCallback | None = None,
) -> FitResult:
    """Train `model` (already on `device`, possibly DDP-wrapped) and validate after every epoch.

    `train_batches()` / `val_batches()` return a fresh iterable per epoch. `on_epoch(record, model, improved)`
    runs after each epoch (Ray: report + checkpoint). `sync_stop(local_decision)` makes every worker agree on
    early stopping (rank 0 decides). `on_validation(Validation)` sees each epoch's raw validation logits
    (and row keys) before `on_epoch` (the trainer fits the calibration of an improved epoch on them).
    The returned history has one dict per epoch:
    epoch, lr, train_loss, val_loss, val_accuracy, val_precision, val_recall, val_f1, val_auc, best_val_f1.
    """
    device = torch.device(device)
    seed_everything(config.seed)
    tune_allocator()  # as for inference (models/allocator.py): activations and gradients reused, not re-faulted
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = (steps_per_epoch or 1) * config.epochs
    scheduler = cosine_schedule(optimizer, total_steps, config.warmup_steps, config.min_lr_ratio)
    if steps_per_epoch is None:  # unknown epoch length: step the cosine once per epoch instead
        scheduler_per_step, scheduler = scheduler, None
    else:
        scheduler_per_step = None
    precision = resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    stopper = EarlyStopping(config.patience)
    result = FitResult()
    adversarial = adversarial_examples(model, config)

    for epoch in range(config.epochs):
        frozen = epoch < config.freeze_stem_epochs
        model.train()
        set_stem_frozen(model, frozen, config.trainable_blocks)
        lr = optimizer.param_groups[0]["lr"]
        train_loss, _ = train_one_epoch(
            model, train_batches(), optimizer, scheduler, device, precision, config.grad_clip, scaler, adversarial
        )
        if scheduler_per_step is not None:
            scheduler_per_step.step()
        if frozen:
            set_stem_frozen(model, False, config.trainable_blocks)
        validation = validate(model, val_batches(), device, precision, config)
        labels, logits, val_loss = validation.labels, validation.logits, validation.loss
        if on_validation is not None:
            on_validation(validation)
        probs = torch.sigmoid(torch.as_tensor(logits)).numpy()
        metrics = classification_metrics(labels, probs, config.threshold)
        improved = stopper.update(metrics["f1"], val_loss)
        record = {
            "epoch": epoch + 1,
            "lr": float(lr),
            "stem_frozen": float(frozen),
            "train_loss": float(train_loss),
            "val_loss": float(val_loss),
            "n_val": float(len(labels)),
            **{f"val_{k}": float(v) for k, v in metrics.items()},
        }
        record["best_val_f1"] = float(stopper.best_f1)
        result.history.append(record)
        if improved:
            result.best_epoch, result.best_metrics = epoch + 1, dict(record)
            result.best_val = (labels, logits)
            if keep_best_state:
                result.best_state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
        stop = stopper.should_stop and epoch + 1 < config.epochs
        if sync_stop is not None:
            stop = sync_stop(stop)
        record["stopping"] = float(stop or epoch + 1 == config.epochs)
        if on_epoch is not None:
            on_epoch(record, unwrap(model), improved)
        if stop:
            result.stopped_early = True
            break
    return result


def adversarial_examples(model: nn.Module, config: LoopConfig):
    """`(images, labels) -> adversarial images` for `config.adv` (None when off): the attack of
    evaluate/adversarial.py on the plain module (not its DDP wrapper), in pixel units of `adv_eps`."""
    if config.adv in (None, "", "none"):
        return None
    from raydetect.evaluate.adversarial import attack_normalised

    def make(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return attack_normalised(unwrap(model), images, labels, config.adv, config.adv_eps, config.mean, config.std,
                                 config.adv_steps, seed=config.seed)  # fmt: skip

    return make


def tensor_batches(
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
) -> BatchSource:
    """A batch source over in-memory arrays (a new shuffled order per call when `shuffle`)."""
    images_t = torch.as_tensor(images, dtype=torch.float32)
    labels_t = torch.as_tensor(labels, dtype=torch.float32)
    calls = {"n": 0}

    def source() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.arange(len(images_t))
        if shuffle:
            generator = torch.Generator().manual_seed(seed + calls["n"])
            order = torch.randperm(len(images_t), generator=generator)
        calls["n"] += 1
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            yield images_t[index], labels_t[index]

    return source
