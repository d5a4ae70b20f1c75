"""GPU preprocessing's tensor path, checked on CPU: JPEGs left to the model actor (`score.preprocess_on:
model`) are decoded with torchvision (nvJPEG on a GPU) and cut into views with tensor ops; they must give the
PIL path's views, P(AI) and error reasons."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from raydetect.data.images import DecodeLimits, decode_image, decode_jpegs, deferrable_jpeg
from raydetect.models.backbones import build_backbone
from raydetect.models.bundle import ModelCard, save_model
from raydetect.models.views import ViewPolicy, make_views, tensor_views
from raydetect.score.decode import JPEG, decode_batch
from raydetect.score.predictor import Predictor
from tests.datasets import encode, smooth_photo, write_bad_files

SIZES = [(150, 200), (224, 224), (333, 517), (640, 480)]
POLICIES = [ViewPolicy(), ViewPolicy(small="pad"), ViewPolicy(max_tiles=4), ViewPolicy(mode="resize")]
RESIZE_TOLERANCE = 2  # grey levels: torchvision's antialiased bicubic against PIL's (1 measured here)


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    side = max(width, height)
    return smooth_photo(np.random.default_rng(seed), side)[:height, :width] + np.random.default_rng(seed).integers(
        0, 8, size=(height, width, 3), dtype=np.uint8
    )


def _jpeg(width: int, height: int, seed: int = 0) -> bytes:
    return encode(_photo(width, height, seed), "JPEG", quality=90)


@pytest.mark.parametrize("width,height", SIZES)
def test_tensor_views_of_a_jpeg_are_the_pil_paths_views(width: int, height: int):
    data = _jpeg(width, height)
    assert deferrable_jpeg(data) == (width, height)
    (tensor,) = decode_jpegs([data], [(width, height)], "cpu")
    pil = decode_image(data)
    for policy in POLICIES:
        expected = make_views(pil, policy).astype(int)
        got = tensor_views(tensor, policy).numpy().astype(int)
        assert got.shape == expected.shape, policy
        limit = RESIZE_TOLERANCE if policy.mode == "resize" else 0  # native views: the same pixels
        assert np.abs(got - expected).max() <= limit, policy


def test_only_plain_jpegs_are_left_to_the_model():
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: nvJPEG cannot apply it, so PIL decodes it (and applies it)
    Image.fromarray(_photo(64, 48)).save(rotated, format="JPEG", exif=exif.tobytes())
    cmyk = io.BytesIO()
    Image.fromarray(_photo(64, 48)).convert("CMYK").save(cmyk, format="JPEG")
    assert deferrable_jpeg(_jpeg(64, 48)) == (64, 48)
    assert deferrable_jpeg(encode(_photo(64, 48), "PNG")) is None
    assert deferrable_jpeg(rotated.getvalue()) is None
    assert deferrable_jpeg(cmyk.getvalue()) is None
    assert deferrable_jpeg(_jpeg(640, 480), DecodeLimits(max_pixels=100_000)) is None  # the CPU path refuses it


def _tiny(path: Path) -> str:
    torch.manual_seed(0)
    model = build_backbone("tinycnn")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    card = ModelCard(backbone="tinycnn", name="tiny", version="1", image_size=64, views=ViewPolicy(size=64).to_dict())
    return save_model(model, card, str(path))


def test_predictions_and_error_rows_match_the_cpu_path(tmp_path: Path):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i, (width, height) in enumerate([(64, 64), (150, 90), (333, 200)]):
        paths.append(folder / f"img{i}.jpg")
        paths[-1].write_bytes(_jpeg(width, height, seed=i))
    paths.append(folder / "photo.png")
    paths[-1].write_bytes(encode(_photo(80, 70), "PNG"))
    paths += list(write_bad_files(tmp_path / "bad").values())
    table = pa.table({"path": [str(p) for p in paths]})
    model = _tiny(tmp_path / "model")
    policy = ViewPolicy(size=64)

    cpu = decode_batch(table, [policy])
    deferred = decode_batch(table, [policy], defer_jpeg=True)
    left = [bool(b) for b in deferred.column(JPEG).to_pylist()]
    assert left[:3] == [True, True, True] and not left[3]  # the JPEGs, not the PNG

    predictor = Predictor([model], num_threads=1)
    a, b = predictor(cpu).to_pandas(), predictor(deferred).to_pandas()
    assert JPEG not in b.columns and list(a.columns) == list(b.columns)
    np.testing.assert_allclose(b["prob_ai"].to_numpy(float), a["prob_ai"].to_numpy(float), atol=1e-6, equal_nan=True)
    assert a["decision"].tolist() == b["decision"].tolist()
    reasons = lambda frame: [e.split(":")[0] if isinstance(e, str) else None for e in frame["error"]]  # noqa: E731
    assert reasons(a) == reasons(b)
    assert reasons(b)[:4] == [None] * 4 and "truncated" in reasons(b)
    for column in ("width", "height", "views"):  # a JPEG the actor failed to decode has none, as on CPU
        assert a[column].fillna(-1).tolist() == b[column].fillna(-1).tolist(), column
