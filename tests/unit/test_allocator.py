"""`models.allocator.tune_allocator`: after it, a CNN forward pass reuses its activations' memory instead of
page-faulting them in again every pass (counted by the kernel: minor page faults, not time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAULTS = """
import resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    from raydetect.models.allocator import tune_allocator
    assert tune_allocator() and tune_allocator()  # idempotent
from raydetect.models.backbones import build_backbone
model = build_backbone("efficientnet_lite0", "none").eval()
x = torch.randn(4, 3, 224, 224)
with torch.inference_mode():
    for _ in range(2):
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_stops_the_forward_pass_faulting_its_activations_in_again():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    faults = {}
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        faults[mode] = float(out.stdout.split()[-1])
    assert faults["default"] > 5000, faults  # glibc's defaults: fresh mmaps for the larger activations
    assert faults["tuned"] < faults["default"] / 10, faults


def test_the_detector_tunes_the_allocator_of_its_process(tmp_path: Path):
    from raydetect.models.allocator import tune_allocator
    from raydetect.models.bundle import load_detector
    from tests.serve_support import make_model

    tune_allocator.cache_clear()
    load_detector(make_model(tmp_path / "m", "tinycnn", image_size=32), device="cpu")
    assert tune_allocator.cache_info().currsize == 1  # called (and remembered) by the Detector
