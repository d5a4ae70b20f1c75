"""Adversarial attacks (FGSM, PGD under an L-infinity budget) for evaluation and adversarial training.

`attack` is the one implementation: it works on any input scale. ε is in pixel units (1/255 = one grey
level of an 8-bit image); `scale` converts a pixel step into input units (1 / std per channel for
normalised inputs) and `lower` / `upper` are the inputs of pixel values 0 and 1, so the adversarial image
is always a valid image within ε of the original in every pixel and channel.
- FGSM (Goodfellow et al., 2015): one step of ε along the sign of the loss gradient.
- PGD (Madry et al., 2018): a random start in the ε-ball, `steps` signed steps of 2.5 ε / steps, each
  projected back onto the ball and the valid range.
The loss is the binary cross-entropy of the model's logit against the true label, so the attack pushes AI
images towards `real` and real photos towards `ai`. Gradients are taken in fp32 with the model in eval mode
(BatchNorm statistics untouched); the model's own train/eval modes are restored afterwards.

`adversarial_eval` attacks a sample of labelled images through `bundle.Detector`: each image's views (its
view policy, as scoring sees them), one aggregated logit per image, the card's temperature and threshold,
the attacked P(AI) against the labels (accuracy, F1, AUC). Every row, the clean one too, runs in fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

ATTACKS = ("fgsm", "pgd")
DEFAULT_EPSILONS = (1 / 255, 2 / 255, 4 / 255)


@contextmanager
def eval_mode(model: nn.Module):
    """The model in eval mode for the block; every module's own mode restored after (frozen stems too)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


def attack(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    method: str = "fgsm",
    eps: float = 2 / 255,
    steps: int = 10,
    scale: torch.Tensor | float = 1.0,
    lower: torch.Tensor | float = 0.0,
    upper: torch.Tensor | float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Adversarial copy of `x` (see the module docstring); `forward(x)` gives logits shaped like `y`."""
    if method not in ATTACKS:
        raise ValueError(f"unknown attack {method!r} ({' | '.join(ATTACKS)})")
    x = x.detach().float()
    lower, upper = torch.as_tensor(lower, dtype=x.dtype), torch.as_tensor(upper, dtype=x.dtype)
    budget = eps * torch.as_tensor(scale, dtype=x.dtype)
    if method == "fgsm":
        steps, step, adv = 1, budget, x.clone()
    else:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
        step, adv = budget * 2.5 / steps, x + noise * budget
    y = y.float().reshape(-1)
    for _ in range(steps):
        adv = torch.maximum(torch.minimum(adv, upper), lower).detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.binary_cross_entropy_with_logits(forward(adv).float().reshape(-1), y)
            (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.maximum(torch.minimum(adv, x + budget), x - budget)
    return torch.maximum(torch.minimum(adv, upper), lower).detach()


def normalised_bounds(mean, std, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, lower, upper) of inputs normalised as (x - mean) / std, shaped (1, 3, 1, 1)."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    return 1 / s, (0 - m) / s, (1 - m) / s


def attack_normalised(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, eps: float, mean, std,
                      steps: int = 10, seed: int = 0) -> torch.Tensor:
    """`attack` on a batch of normalised NCHW inputs, one logit per row (what adversarial training uses)."""
    scale, lower, upper = normalised_bounds(mean, std, x.device)
    with eval_mode(model):
        return attack(lambda a: model(a).reshape(-1), x, y, method, eps, steps, scale, lower, upper, seed)


def _image_logit(model: nn.Module, policy) -> Callable[[torch.Tensor], torch.Tensor]:
    """The aggregated logit of one image's stacked views, differentiable (`views.aggregate` in torch)."""

    def forward(views: torch.Tensor) -> torch.Tensor:
        logits = model(views.contiguous(memory_format=torch.channels_last)).reshape(-1)
        if policy.aggregate == "max":
            return logits.max().reshape(1)
        if policy.aggregate == "topk":
            return logits.topk(min(policy.top_k, logits.numel())).values.mean().reshape(1)
        return logits.mean().reshape(1)

    return forward


def attacked_logits(detector, images: list[np.ndarray], labels: np.ndarray, method: str, eps: float,
                    steps: int = 10, seed: int = 0) -> np.ndarray:
    """One raw logit per image after attacking its views (uint8 NHWC each) with `method` at `eps`."""
    from raydetect.models.views import normalize

    card, model = detector.card, detector.model
    forward = _image_logit(model, detector.policy)
    out = []
    with eval_mode(model):
        for i, views in enumerate(images):
            x = normalize(views, card.mean, card.std, detector.device)
            scale, lower, upper = normalised_bounds(card.mean, card.std, x.device)
            y = torch.tensor([float(labels[i])], device=x.device)
            adv = attack(forward, x, y, method, eps, steps, scale, lower, upper, seed + i) if eps > 0 else x
            with torch.no_grad():
                out.append(float(forward(adv)))
    return np.asarray(out)


def adversarial_eval(detector, labelled: pd.DataFrame, settings, seed: int = 0) -> pd.DataFrame:
    """Accuracy, F1 and AUC on `settings.adversarial_sample` labelled images, clean and under each attack
    and ε of `settings` (config.EvaluateSettings): one row per (attack, ε)."""
    from raydetect.evaluate.metrics import binary_metrics
    from raydetect.evaluate.robustness import decode_sample
    from raydetect.models.views import make_views

    images, labels = decode_sample(labelled, settings.adversarial_sample, seed)
    views = [make_views(image, detector.policy) for image in images]
    rows = []
    runs = [("none", 0.0)] + [(m, e / 255) for m in settings.attacks for e in settings.attack_eps_255]
    for method, eps in runs:
        logits = attacked_logits(detector, views, labels, method, eps, settings.pgd_steps, seed)
        metrics = binary_metrics(labels, detector.probabilities(logits), detector.card.threshold)
        rows.append({"attack": method, "eps": eps, "eps_255": round(eps * 255, 3), "n": len(labels),
                     **{k: metrics[k] for k in ("accuracy", "f1", "auc_roc")}})  # fmt: skip
    return pd.DataFrame(rows)
