"""Small datasets in the Kaggle layout, made on the fly for tests.

"Real" images are smooth random fields; their "AI" counterparts are the same field with a faint periodic
up-sampling-like pattern (what generators leave behind), so a tiny CNN can learn the difference while
size and encoding stay identical across classes (no format/size shortcut).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def smooth_photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """A photo-like smooth RGB field, uint8 HxWx3."""
    coarse = rng.uniform(0, 255, size=(size // 16 + 1, size // 16 + 1, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image).copy()


def ai_counterpart(photo: np.ndarray, strength: float = 24.0) -> np.ndarray:
    """The same content with a checkerboard artefact, as transposed convolutions leave."""
    h, w, _ = photo.shape
    yy, xx = np.mgrid[0:h, 0:w]
    pattern = np.where((yy + xx) % 2 == 0, strength, -strength)[..., None]
    return np.clip(photo.astype(np.float32) + pattern, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def make_kaggle_dataset(
    root: Path,
    n_pairs: int = 16,
    size: int = 64,
    seed: int = 0,
    fmt: str = "PNG",
    n_test: int = 4,
    processed_every: int = 0,
    generators: tuple[str, ...] = ("checker",),
) -> Path:
    """Write `train.csv`, `test.csv`, `train_data/`, `test_data_v2/` under `root`; one group per pair. With
    `processed_every` k > 0 the rows gain a `processing` column: `blur1.0` on every k-th pair, else `none`
    (a label for the per-condition metrics only; the pixels are not blurred). Pair i's AI image is credited
    to `generators[i % len(generators)]` (names only: every counterpart is the same checkerboard)."""
    rng = np.random.default_rng(seed)
    ext = "png" if fmt == "PNG" else "jpg"
    (root / "train_data").mkdir(parents=True, exist_ok=True)
    (root / "test_data_v2").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_pairs):
        photo = smooth_photo(rng, size)
        for label, array in ((0, photo), (1, ai_counterpart(photo))):
            name = f"train_data/{i:04d}_{label}.{ext}"
            (root / name).write_bytes(encode(array, fmt))
            rows.append(
                {
                    "file_name": name,
                    "label": label,
                    "group": f"photo{i:04d}",
                    "category": "human" if i % 3 == 0 else "other",
                    "generator": "real" if label == 0 else generators[i % len(generators)],
                    **({"processing": "none" if i % processed_every else "blur1.0"} if processed_every else {}),
                }
            )
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test_ids = []
    for j in range(n_test):
        photo = smooth_photo(rng, size)
        name = f"test_data_v2/t{j:04d}.{ext}"
        (root / name).write_bytes(encode(photo if j % 2 == 0 else ai_counterpart(photo), fmt))
        test_ids.append(name)
    pd.DataFrame({"id": test_ids}).to_csv(root / "test.csv", index=False)
    return root


def write_bad_files(folder: Path) -> dict[str, Path]:
    """A corrupt, a truncated, a zero-byte and a non-image file; returns them by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    good = encode(smooth_photo(np.random.default_rng(1), 64), "JPEG")
    files = {
        "corrupt": (folder / "corrupt.jpg", good[:20] + bytes(200) + good[220:]),
        "truncated": (folder / "truncated.jpg", good[: len(good) // 2]),
        "empty": (folder / "empty.jpg", b""),
        "not_image": (folder / "notes.jpg", b"this is not an image, just text\n" * 4),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {kind: path for kind, (path, _) in files.items()}


def write_scored_images(folder: Path, n: int = 16, size: int = 64, seed: int = 0) -> pd.DataFrame:
    """`n` PNGs (half real smooth fields, half their checkerboard counterparts) and a frame of them as a
    scoring run joined to labels would give: path, label, prob_ai (seeded, with mistakes of both kinds),
    category, generator."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = i % 2
        photo = smooth_photo(rng, size)
        path = folder / f"{i:03d}_{label}.png"
        path.write_bytes(encode(ai_counterpart(photo) if label else photo))
        rows.append({"path": str(path), "label": label, "prob_ai": float(rng.uniform(0.05, 0.95)),
                     "category": "human" if i % 4 == 0 else "other", "generator": "checker" if label else "real"})
    return pd.DataFrame(rows)


def write_scoring_run(
    folder: Path, paths: list[str], prob_ai: np.ndarray, sizes: list[int], model: str | None = None
) -> str:
    """A scoring run folder as `raydetect score` writes it (DESIGN.md §3): one Parquet part and a `_SUCCESS`
    manifest naming `model` (when given); decisions from a 0.4-0.6 review band."""
    decision = np.where(prob_ai >= 0.6, "ai", np.where(prob_ai >= 0.4, "review", "real"))
    frame = pd.DataFrame({
        "path": paths, "sha256": [f"{i:064x}" for i in range(len(paths))], "prob_ai": prob_ai, "decision": decision,
        "threshold": 0.5, "model_name": "tiny", "model_version": "1", "scored_at": datetime.now(UTC), "error": None,
        "width": np.asarray(sizes, "int32"), "height": np.asarray(sizes, "int32"), "views": np.int32(1),
    })  # fmt: skip
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "part-00000.parquet", index=False)
    (folder / "_SUCCESS").write_text(json.dumps({"models": [{"uri": model}] if model else []}))
    return str(folder)


def predictions_for(manifest: pd.DataFrame, folder: Path, wrong: int = 0) -> str:
    """Confident, correct predictions for a labelled manifest (the first `wrong` rows flipped)."""
    labels = manifest["label"].astype(int).to_numpy().copy()
    labels[:wrong] = 1 - labels[:wrong]
    prob_ai = np.where(labels == 1, 0.9, 0.1)
    return write_scoring_run(folder, manifest["path"].tolist(), prob_ai, [32] * len(manifest))
