"""The offline benchmark builder (DESIGN.md §2): real photographs shipped by packages, AI counterparts
from Real-ESRGAN, waifu2x (ncnn, CPU) and a diffusers SDEdit generator, in the Kaggle layout.

`build_benchmark(out, n_pairs=…, generators=…, sizes=…, seed=…)` is the entry point (the CLI's
`raydetect data build-benchmark` calls `build_from_settings`). Heavy modules (ncnn, torch, diffusers,
Ray) are imported only when a generator or the Ray job needs them.
"""

from raydetect.data.benchmark.build import (
    CARD_FILE,
    KNOWN_GENERATORS,
    PREVIEW_FILE,
    BenchmarkError,
    BenchmarkResult,
    PairBuilder,
    build_benchmark,
    build_from_settings,
    make_generator,
)

__all__ = [
    "CARD_FILE",
    "KNOWN_GENERATORS",
    "PREVIEW_FILE",
    "BenchmarkError",
    "BenchmarkResult",
    "PairBuilder",
    "build_benchmark",
    "build_from_settings",
    "make_generator",
]
