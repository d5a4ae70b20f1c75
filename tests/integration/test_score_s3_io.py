"""The scoring reader against the moto S3 server (no Ray): byte cap, empty objects, missing keys."""

from __future__ import annotations

import pytest

from raydetect import storage
from raydetect.data.images import sha256_hex
from raydetect.score.decode import ReadFailure, read_capped

pytestmark = [pytest.mark.s3]


def test_s3_reads_are_capped_and_failures_become_reasons(s3_bucket: str):
    big = bytes(range(256)) * 20
    storage.write_bytes(f"{s3_bucket}/x/empty.jpg", b"")
    storage.write_bytes(f"{s3_bucket}/x/small.png", b"\x89PNG small")
    storage.write_bytes(f"{s3_bucket}/x/big.png", big)
    paths = [f"{s3_bucket}/x/{name}" for name in ("empty.jpg", "small.png", "big.png", "missing.png")]

    empty, small, too_big, missing = read_capped(paths, max_bytes=1000)

    assert empty == b"" and small == b"\x89PNG small"
    assert isinstance(too_big, ReadFailure) and too_big.error.startswith(f"too_large: {len(big)} bytes")
    assert too_big.sha256 == sha256_hex(big)  # hashed by streaming, never held whole
    assert isinstance(missing, ReadFailure) and missing.error.startswith("missing:")
