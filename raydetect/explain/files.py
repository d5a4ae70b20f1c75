"""Explanations of image files: one overlay PNG per image in a folder, a reason per image, and
`explanations.json` beside them (what `raydetect explain` and the demo write). Local paths or s3://."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath

from raydetect import storage
from raydetect.config import Settings
from raydetect.data.images import DecodeLimits, ImageDecodeError, decode_image
from raydetect.explain.core import check_method, explain_image
from raydetect.explain.gradcam import png_bytes

SUMMARY_FILE = "explanations.json"


@dataclass
class FileExplanation:
    path: str
    overlay: str | None = None  # where the overlay PNG went
    reason: str | None = None
    prob_ai: float | None = None
    decision: str | None = None
    error: str | None = None  # `reason: detail` when the file could not be read or decoded

    @property
    def line(self) -> str:
        return f"{self.path}: {self.reason if self.error is None else 'error ' + self.error}"


def overlay_names(paths: list[str], method: str) -> list[str]:
    """`<stem>.<method>.png` per input; a stem seen before gets `-2`, `-3`, ... (the same name twice in a run
    would overwrite)."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = PurePosixPath(path.replace("\\", "/")).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}{'' if seen[stem] == 1 else f'-{seen[stem]}'}.{method}.png")
    return names


def explain_one(detector, path: str, target: str, method: str, settings: Settings) -> FileExplanation:
    try:
        image = decode_image(storage.read_bytes(path), DecodeLimits.from_settings(settings.images))
    except ImageDecodeError as exc:
        return FileExplanation(path, error=f"{exc.reason}: {exc.message}")
    except OSError as exc:  # missing or unreadable
        return FileExplanation(path, error=f"missing: {exc}")
    result = explain_image(detector, image, method, settings.explain)
    storage.write_bytes(target, png_bytes(result.overlay))
    return FileExplanation(path, target, result.reason, result.prob_ai, result.decision)


def write_explanations(detector, paths: list[str], out_dir: str, settings: Settings, method: str | None = None,
                       log=None) -> list[FileExplanation]:  # fmt: skip
    """Explain each image file with `detector` by `method` (default `explain.method`) into `out_dir`; `log`
    (e.g. print) gets each file's line as soon as it is done."""
    method = check_method(method or settings.explain.method)
    storage.makedirs(out_dir)
    results = []
    for path, name in zip(paths, overlay_names(paths, method), strict=True):
        results.append(explain_one(detector, path, storage.join(out_dir, name), method, settings))
        if log is not None:
            log(results[-1].line)
    summary = {"method": method, "model": f"{detector.card.name} {detector.card.version}",
               "images": [vars(r) for r in results]}  # fmt: skip
    storage.write_text(storage.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2))
    return results
