"""The C allocator for tensor-sized buffers: glibc's `malloc` tuned once per process (`tune_allocator`).

A CNN's forward pass allocates and frees activations of several MiB each, every pass. glibc serves blocks above
its mmap threshold with fresh `mmap`s and returns freed memory at the top of its heap above a trim threshold,
so every pass page-faults its activations in again: EfficientNet-Lite0 at 224 px, passes of 8, one thread,
55,000-67,000 minor page faults a pass. With the mmap threshold at its maximum (32 MiB) and the heap keeping
256 MiB free, most of them go (19,000-38,000; none for passes of 4) and the forward pass runs 1.2-1.6x faster
on the 2-core CPU (processes alternating with and without it; README, speed). The thresholds are what
PyTorch's CPU tuning guides reach with jemalloc / tcmalloc, set through glibc's own `mallopt` (no preload, no
environment). Memory that a process once needed stays mapped for reuse (at most 256 MiB of it free).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 256 << 20, M_TOP_PAD: 64 << 20}


@functools.cache
def tune_allocator() -> bool:
    """Set glibc's thresholds for this process (idempotent). False where the C library has no `mallopt`
    (musl, macOS, Windows) or refuses a value: the allocator is then left as it was."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    if not done:
        log.debug("mallopt refused a threshold: the allocator keeps some of its defaults")
    return done
