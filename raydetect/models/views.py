"""The one image -> model-input function: a decoded image becomes the model's *views*, and the views' logits
become one P(AI). Batch scoring, Serve (predict, batch, explain), `evaluate`, training-time validation and
Grad-CAM all go through here.

Two policies, recorded in the model card (`ModelCard.views`), so a model is always scored the way it was
validated:

- `native` (the default for new models) resamples nothing. An image at least `size` px on a side is covered
  by `size` x `size` tiles cut at native resolution: a grid over the whole image (`ceil(W / size)` columns,
  `ceil(H / size)` rows, evenly spread), thinned to at most `max_tiles` evenly spread tiles. Tile origins sit
  on the 8-px grid, so JPEG's 8 x 8 blocks and the NPR filter's 2 x 2 cells keep the image's phase (up to 7 px
  at the right / bottom edge may go unseen). A side shorter than `size` is taken whole: a 150 px image reaches
  the model at 150 px (the backbones pool globally), or padded to `size` by reflection with `small: pad`.
  Never upscaled. The views' logits are aggregated by `aggregate`: `mean` (of logits), `max`, or `topk` (mean
  of the `top_k` largest).
- `resize` (what models trained before view policies were scored with, and a card without `views`): shorter
  side bicubically resized to `size`, one centre crop.

Views are uint8 HWC arrays; `normalize` makes the float NCHW tensor (on the model's device), and
`predict_views` packs the views of many images into forward passes of at most `max_batch` views of one shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported lazily: decode workers should not pay for it
    import torch

Mode = Literal["native", "resize"]
Aggregate = Literal["mean", "max", "topk"]
Small = Literal["whole", "pad"]
Box = tuple[int, int, int, int]  # left, top, right, bottom in the original image's pixels
TILE_ALIGN = 8  # tile origins on the JPEG block grid (also even: the NPR filter's 2 x 2 phase)
MIN_SIDE = 16  # native views: images with a side shorter than this are refused (`too_small`), never upscaled


class ViewError(ValueError):
    """An image the policy cannot turn into views (reason code `too_small`)."""

    reason = "too_small"


@dataclass(frozen=True)
class ViewPolicy:
    """How an image becomes model inputs; see the module docstring."""

    mode: Mode = "native"
    size: int = 224
    max_tiles: int = 16
    aggregate: Aggregate = "mean"
    top_k: int = 3
    small: Small = "whole"

    def __post_init__(self) -> None:
        if self.mode not in ("native", "resize"):
            raise ValueError(f"view mode must be native or resize, got {self.mode!r}")
        if self.aggregate not in ("mean", "max", "topk"):
            raise ValueError(f"view aggregate must be mean, max or topk, got {self.aggregate!r}")
        if self.small not in ("whole", "pad"):
            raise ValueError(f"small-image rule must be whole or pad, got {self.small!r}")
        if self.size < 1 or self.max_tiles < 1 or self.top_k < 1:
            raise ValueError(f"bad view policy {self}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, size: int) -> ViewPolicy:
        """The policy a card records; a card without one (models made before policies) is `resize`."""
        if not data:
            return cls(mode="resize", size=size)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{"size": size, **known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_mode(self, mode: str | None) -> ViewPolicy:
        """The same policy in another mode (`None` or `card`: unchanged)."""
        return self if mode in (None, "card", self.mode) else replace(self, mode=mode)

    @property
    def key(self) -> str:
        """A short name that differs between policies that give different views (column names, cache keys)."""
        if self.mode == "resize":
            return f"resize{self.size}"
        return f"native{self.size}t{self.max_tiles}{self.small}"


def _origins(length: int, tile: int, count: int) -> list[int]:
    """`count` evenly spread origins of `tile`-long windows in `length`, on the alignment grid."""
    if count <= 1 or length <= tile:
        return [0]
    last = length - tile
    spots = [round(i * last / (count - 1)) for i in range(count)]
    return sorted({min(last, (s // TILE_ALIGN) * TILE_ALIGN) for s in spots})


def _grid(nx: int, ny: int, cap: int) -> tuple[int, int]:
    """The largest grid of at most `cap` cells with about the aspect of an nx x ny grid."""
    if nx * ny <= cap:
        return nx, ny
    scale = math.sqrt(cap / (nx * ny))
    gx, gy = max(1, min(nx, math.floor(nx * scale))), max(1, min(ny, math.floor(ny * scale)))
    while True:  # grow the side that still fits
        grown = [(gx + 1, gy), (gx, gy + 1)]
        fits = [(x, y) for x, y in grown if x <= nx and y <= ny and x * y <= cap]
        if not fits:
            return gx, gy
        gx, gy = max(fits, key=lambda g: g[0] * g[1])


def resize_geometry(width: int, height: int, size: int) -> tuple[int, int]:
    """The image size after the `resize` policy's shorter-side resize (bicubic, only when it differs)."""
    if min(width, height) == size:
        return width, height
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def view_boxes(width: int, height: int, policy: ViewPolicy) -> list[Box]:
    """Where each view comes from, in the original image's pixels (the Grad-CAM stitching uses them too)."""
    size = policy.size
    if policy.mode == "native" and min(width, height) < min(MIN_SIDE, size):
        raise ViewError(f"too_small: {width}x{height} has a side under {MIN_SIDE} px (images are never upscaled)")
    if policy.mode == "resize":
        new_w, new_h = resize_geometry(width, height, size)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        sx, sy = width / new_w, height / new_h
        return [(round(left * sx), round(top * sy), round((left + size) * sx), round((top + size) * sy))]
    tw, th = min(width, size), min(height, size)
    gx, gy = _grid(math.ceil(width / tw), math.ceil(height / th), policy.max_tiles)
    return [(x, y, x + tw, y + th) for y in _origins(height, th, gy) for x in _origins(width, tw, gx)]


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The `resize` policy's view: shorter side to `size` (bicubic, only when it differs), centre crop."""
    new = resize_geometry(*image.size, size)
    if new != image.size:
        image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def make_views(image: Image.Image | np.ndarray, policy: ViewPolicy) -> np.ndarray:
    """The image's views as one uint8 array (N, h, w, 3); every view of one image has the same shape."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    boxes = view_boxes(image.width, image.height, policy)
    if policy.mode == "resize":
        return np.asarray(resize_center_crop(image, policy.size), dtype=np.uint8)[None]
    array = np.asarray(image, dtype=np.uint8)
    views = np.stack([array[top:bottom, left:right] for left, top, right, bottom in boxes])
    short_h, short_w = policy.size - views.shape[1], policy.size - views.shape[2]
    if policy.small == "pad" and (short_h > 0 or short_w > 0):
        views = np.pad(views, ((0, 0), (0, max(0, short_h)), (0, max(0, short_w)), (0, 0)), mode="reflect")
    return np.ascontiguousarray(views)


def tensor_views(image: torch.Tensor, policy: ViewPolicy) -> torch.Tensor:
    """`make_views` for a decoded (3, H, W) uint8 tensor, on its own device (GPU preprocessing): the same
    boxes, so `native` views are the same pixels; `resize` uses torchvision's antialiased bicubic resize,
    within a few grey levels of PIL's. Returns (N, h, w, 3) uint8, which `normalize` takes."""
    import torch
    from torchvision.transforms.v2 import functional as tvf

    height, width = int(image.shape[-2]), int(image.shape[-1])
    boxes = view_boxes(width, height, policy)
    if policy.mode == "resize":
        new_w, new_h = resize_geometry(width, height, policy.size)
        if (new_w, new_h) != (width, height):
            image = tvf.resize(image, [new_h, new_w], tvf.InterpolationMode.BICUBIC, antialias=True)
        left, top = (new_w - policy.size) // 2, (new_h - policy.size) // 2
        return image[:, top : top + policy.size, left : left + policy.size].permute(1, 2, 0)[None].contiguous()
    hwc = image.permute(1, 2, 0)
    views = torch.stack([hwc[top:bottom, left:right] for left, top, right, bottom in boxes])
    short_h, short_w = max(0, policy.size - views.shape[1]), max(0, policy.size - views.shape[2])
    if policy.small == "pad" and (short_h or short_w):
        views = _reflect_pad(views.permute(0, 3, 1, 2).float(), short_h, short_w).to(torch.uint8).permute(0, 2, 3, 1)
    return views.contiguous()


def device_views(detector, image: torch.Tensor):
    """The views a detector takes of an image decoded on its device (`decode_jpegs`; GPU preprocessing in the
    scoring actors and Serve's model replicas): tensors there for a detector that takes them
    (`Detector.takes_tensors`), uint8 arrays for one that does not (DIRE). Raises `ViewError` as `make_views`."""
    views = tensor_views(image, detector.policy)
    return views if getattr(detector, "takes_tensors", False) else views.cpu().numpy()


def _reflect_pad(x: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """np.pad(mode="reflect") at the bottom / right of NCHW `x`, in steps shorter than the side (as numpy)."""
    import torch

    while bottom > 0 or right > 0:
        step_h, step_w = min(bottom, x.shape[2] - 1), min(right, x.shape[3] - 1)
        x = torch.nn.functional.pad(x, (0, step_w, 0, step_h), mode="reflect")
        bottom, right = bottom - step_h, right - step_w
    return x


def normalize(
    views: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float], device: Any = "cpu"
) -> torch.Tensor:
    """uint8 NHWC views -> float32 NCHW, `(x / 255 - mean) / std`, on `device`."""
    import torch

    if isinstance(views, np.ndarray) and not views.flags.writeable:  # Arrow / PIL buffers: torch wants to own
        views = views.copy()
    x = torch.as_tensor(views).to(device, non_blocking=True).to(torch.float32) / 255.0
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    return ((x - m) / s).permute(0, 3, 1, 2).contiguous()


def preprocess(
    image: Image.Image | np.ndarray, policy: ViewPolicy, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """The views of one image as the float32 NCHW array the model takes (CPU)."""
    return normalize(make_views(image, policy), mean, std).numpy()


def aggregate(logits: np.ndarray, policy: ViewPolicy) -> float:
    """One logit from the logits of an image's views, by the policy's rule."""
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    if policy.aggregate == "max":
        return float(values.max())
    if policy.aggregate == "topk":
        return float(np.sort(values)[-min(policy.top_k, values.size) :].mean())
    return float(values.mean())


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def map_views(
    fn: Callable[[np.ndarray], np.ndarray], images: Sequence[np.ndarray], max_batch: int = 32
) -> list[np.ndarray]:
    """`fn` over every view of every image (`images[i]` is an (N_i, h_i, w_i, 3) array), called on batches
    of at most `max_batch` views that share one shape; returns, per image, `fn`'s rows for its views
    (`fn` maps a (B, h, w, 3) batch to a (B, ...) array: logits, features)."""
    by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, views in enumerate(images):
        for j in range(len(views)):
            by_shape.setdefault(tuple(views.shape[1:]), []).append((i, j))
    rows: dict[tuple[int, int], np.ndarray] = {}
    step = max(1, max_batch)
    for members in by_shape.values():
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            result = np.asarray(fn(_stack([images[i][j] for i, j in chunk])))
            rows.update(zip(chunk, result, strict=True))
    return [np.stack([rows[(i, j)] for j in range(len(v))]) if len(v) else np.zeros(0) for i, v in enumerate(images)]


def _stack(views: list) -> Any:
    """np.stack; torch.stack on the tensors' device when some views are tensors (decoded on the model's
    device) and others arrays (decoded on CPU)."""
    tensors = [v for v in views if not isinstance(v, np.ndarray)]
    if not tensors:
        return np.stack(views)
    import torch

    device = tensors[0].device
    return torch.stack([torch.from_numpy(np.array(v)).to(device) if isinstance(v, np.ndarray) else v for v in views])


def view_logits(
    forward: Callable[[np.ndarray], np.ndarray], images: Sequence[np.ndarray], max_batch: int = 32
) -> list[np.ndarray]:
    """The logits of every view of every image (`map_views` with `forward`: uint8 NHWC views -> logits)."""

    def flat(batch: np.ndarray) -> np.ndarray:
        return np.asarray(forward(batch), dtype=np.float64).reshape(-1)

    return [np.asarray(v, dtype=np.float64).reshape(-1) for v in map_views(flat, images, max_batch)]


def image_logits(
    forward: Callable[[np.ndarray], np.ndarray], images: Sequence[np.ndarray], policy: ViewPolicy, max_batch: int = 32
) -> np.ndarray:
    """One aggregated logit per image (see `view_logits`)."""
    per_view = view_logits(forward, images, max_batch)
    return np.array([aggregate(v, policy) for v in per_view], dtype=np.float64)


# --- views in Arrow tables (between Ray Data stages) ------------------------------------------------------

VIEWS_PREFIX = "_views_"  # + policy key: raw bytes of each row's (N, h, w, 3) uint8 views; `_shape` beside it


def views_column(policy: ViewPolicy) -> str:
    return f"{VIEWS_PREFIX}{policy.key}"


def shape_column(policy: ViewPolicy) -> str:
    return f"{views_column(policy)}_shape"


def append_views(table: Any, policy: ViewPolicy, views: Sequence[np.ndarray | None]) -> Any:
    """`table` (pyarrow) with one row's views per row as plain Arrow columns (bytes + shape), which any
    number and shape of views fits without tensor-extension schema unification; None -> empty views."""
    import pyarrow as pa

    blobs = [b"" if v is None else np.ascontiguousarray(v, dtype=np.uint8).tobytes() for v in views]
    shapes = [[0, 0, 0, 3] if v is None else list(v.shape) for v in views]
    table = table.append_column(views_column(policy), pa.array(blobs, type=pa.large_binary()))
    return table.append_column(shape_column(policy), pa.array(shapes, type=pa.list_(pa.int32())))


def read_views(table: Any, policy: ViewPolicy) -> list[np.ndarray]:
    """The views `append_views` stored, one (N, h, w, 3) uint8 array per row (zero-copy views of the bytes)."""
    blobs = table.column(views_column(policy)).to_pylist()
    shapes = table.column(shape_column(policy)).to_pylist()
    return [np.frombuffer(b, dtype=np.uint8).reshape(s) for b, s in zip(blobs, shapes, strict=True)]
