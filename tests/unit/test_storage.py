from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raydetect import storage
from raydetect.config import StorageSettings


def test_local_uris_normalise(tmp_path: Path):
    assert storage.normalize(f"file://{tmp_path}") == str(tmp_path)
    assert storage.join(str(tmp_path), "a", "b.txt") == str(tmp_path / "a" / "b.txt")
    assert storage.join("s3://bucket/prefix/", "a", "b.txt") == "s3://bucket/prefix/a/b.txt"
    fs, path = storage.pyarrow_fs(str(tmp_path))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)


def test_atomic_local_write_leaves_no_temp_files(tmp_path: Path):
    target = tmp_path / "deep" / "out.bin"
    storage.write_bytes(str(target), b"hello")
    storage.write_bytes(str(target), b"world")
    assert target.read_bytes() == b"world"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_s3_endpoint_from_config_beats_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    opts = storage.S3Options.resolve(StorageSettings(endpoint_url="http://127.0.0.1:2"))
    assert opts.endpoint_url == "http://127.0.0.1:2"
    assert storage.S3Options.resolve().endpoint_url == "http://127.0.0.1:1"
    fs, path = storage.pyarrow_fs("s3://bucket/key.parquet")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/key.parquet"
