"""The CLIP ViT detectors (models/clip.py): OpenAI's weights through timm and the Hugging Face cache, offline.

The real weights cannot be downloaded here, so a Hugging Face cache is filled with a checkpoint of the real
ViT-B/16 architecture (random values, CLIP's 512-wide projection as head) under the repository timm reads,
and the real loading path runs against it with HF_HUB_OFFLINE=1, in a fresh process (huggingface_hub reads
its environment at import).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from raydetect.explain.gradcam import gradcam_map, target_layers
from raydetect.models.backbones import build_backbone, default_normalization, stem_parameters
from raydetect.models.clip import PREPROCESSING, hub_id
from raydetect.train.loop import set_stem_frozen

LOAD_AND_COMPARE = """
import sys, torch
from safetensors.torch import load_file
from raydetect.models.backbones import build_backbone
model = build_backbone("clip_vit_b16", "imagenet")
reference = load_file(sys.argv[1])
state = model.state_dict()
same = [k for k, v in reference.items() if k in state and state[k].shape == v.shape
        and torch.equal(state[k], v.float())]
print("same", len(same), "of", len(reference), "head", tuple(model.head.weight.shape))
"""


def _fill_cache(home: Path) -> Path:
    """A Hugging Face cache holding `model.safetensors` for hub_id('clip_vit_b16'); returns the file."""
    import timm
    from safetensors.torch import save_file

    repo = home / "hub" / ("models--" + hub_id("clip_vit_b16").replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(0)
    source = timm.create_model("vit_base_patch16_clip_quickgelu_224", pretrained=False, num_classes=512)
    path = snapshot / "model.safetensors"
    save_file({k: v.half().contiguous() for k, v in source.state_dict().items()}, str(path))  # half: smaller file
    return path


def _run_offline(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", *args], env=env, capture_output=True, text=True, timeout=300)


def test_clip_encoder_loads_the_pretrained_weights_from_an_offline_hugging_face_cache(tmp_path):
    weights = _fill_cache(tmp_path / "hf")
    done = _run_offline(tmp_path / "hf", LOAD_AND_COMPARE, str(weights))
    assert done.returncode == 0, done.stderr[-3000:]
    # every encoder tensor is the cached one; CLIP's projection head (2 tensors) gave way to one logit
    assert done.stdout.split() == ["same", "151", "of", "153", "head", "(1,", "768)"]


def test_missing_clip_weights_say_how_to_get_them(tmp_path):
    done = _run_offline(tmp_path / "empty", "from raydetect.models.backbones import build_backbone\n"
                        "build_backbone('clip_vit_l14', 'imagenet')")  # fmt: skip
    assert done.returncode != 0
    assert "MissingWeightsError" in done.stderr
    assert f"hf download {hub_id('clip_vit_l14')}" in done.stderr and "HF_HUB_OFFLINE=1" in done.stderr


def test_clip_detector_takes_any_input_size_and_expects_clip_normalisation():
    torch.manual_seed(0)
    model = build_backbone("clip_vit_b16", "none").eval()
    with torch.no_grad():
        for side in (64, 128, 224):  # 128 px training crops, 224 px evaluation images
            assert model(torch.randn(2, 3, side, side)).shape == (2, 1)
    assert default_normalization("clip_vit_b16") == (PREPROCESSING["mean"], PREPROCESSING["std"])


def test_freezing_the_clip_encoder_leaves_a_linear_probe():
    torch.manual_seed(0)
    model = build_backbone("clip_vit_b16", "none")
    head = {id(p) for p in model.head.parameters()}
    assert head.isdisjoint(id(p) for p in stem_parameters(model))
    set_stem_frozen(model, True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model(torch.randn(4, 3, 64, 64)).squeeze(1), torch.tensor([0.0, 1.0, 0.0, 1.0])
    )
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.weight", "head.bias"}


def test_gradcam_on_a_vit_uses_the_last_block_and_maps_back_to_the_input():
    torch.manual_seed(0)
    model = build_backbone("clip_vit_b16", "none").eval()
    assert target_layers(model) == [model.blocks[-1].norm1]
    rng = np.random.default_rng(0)
    heat = gradcam_map(model, rng.random((1, 3, 96, 96), dtype=np.float32))
    assert heat.shape == (96, 96)
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.std() > 0.01  # a 6x6 patch grid, upsampled


def test_the_mid_block_variant_reads_the_class_token_after_blocks_4_to_8():
    """clip_vit_b16_mid's head sees exactly the concatenated class tokens that blocks 4-8 of the whole
    encoder emit (the same weights), and the encoder's later blocks are gone."""
    torch.manual_seed(0)
    mid = build_backbone("clip_vit_b16_mid", "none").eval()
    whole = build_backbone("clip_vit_b16", "none").eval()
    shared = {k[4:]: v for k, v in mid.state_dict().items() if k.startswith("vit.") and "head" not in k}
    whole.load_state_dict({**whole.state_dict(), **shared}, strict=True)
    assert len(mid.blocks) == 8 and mid.head.in_features == 5 * 768
    captured, seen = [], []
    hooks = [whole.blocks[i].register_forward_hook(lambda _m, _a, out: captured.append(out[:, 0])) for i in range(3, 8)]
    head_hook = mid.head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    x = torch.randn(2, 3, 96, 64)  # any size: the position embeddings are interpolated
    with torch.no_grad():
        whole(x)
        assert mid(x).shape == (2, 1)
    for hook in [*hooks, head_hook]:
        hook.remove()
    torch.testing.assert_close(seen[0], torch.cat(captured, dim=1))
    assert target_layers(mid) == [mid.blocks[-1].norm1]
    heat = gradcam_map(mid, np.random.default_rng(0).random((1, 3, 96, 96), dtype=np.float32))
    assert heat.shape == (96, 96) and heat.std() > 0.01
