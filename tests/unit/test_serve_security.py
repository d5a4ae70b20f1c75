"""API keys, bearer parsing and the audit log (plain Python, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raydetect.serve.security import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    ApiKeyError,
    AuditLog,
    bearer_token,
    load_api_key,
    request_id,
)


def test_no_key_configured_means_auth_off():
    assert load_api_key(None, environ={}) is None


def test_env_key_wins_over_file(tmp_path: Path):
    file = tmp_path / "key"
    file.write_text("from-file\n")
    key = load_api_key(str(file), environ={API_KEY_ENV: " from-env "})
    assert key.matches("from-env") and not key.matches("from-file") and key.source == f"env {API_KEY_ENV}"
    key = load_api_key(str(file), environ={})
    assert key.matches("from-file") and key.source == f"file {file}"
    other = tmp_path / "other"
    other.write_text("other-key")
    assert load_api_key(str(file), environ={API_KEY_FILE_ENV: str(other)}).matches("other-key")


def test_missing_or_empty_key_file_fails_closed(tmp_path: Path):
    with pytest.raises(ApiKeyError, match="cannot be read"):
        load_api_key(str(tmp_path / "absent"), environ={})
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ApiKeyError, match="empty"):
        load_api_key(str(empty), environ={})


def test_key_never_shows_itself():
    key = load_api_key(None, environ={API_KEY_ENV: "s3cr3t-value"})
    assert "s3cr3t" not in repr(key) and "s3cr3t" not in str(key) and "s3cr3t" not in f"{key}"
    assert not key.matches(None) and not key.matches("") and not key.matches("s3cr3t-valu")
    assert not key.matches("s3cr3t-value ") and key.matches("s3cr3t-value")


def test_bearer_token_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    for bad in (None, "", "Bearer", "Bearer ", "Basic abc", "abc", "Token abc"):
        assert bearer_token(bad) is None


def test_request_ids_are_sanitised():
    assert request_id("abc-123") == "abc-123"
    for bad in (None, "", "a b", "x" * 200, "evil\nline", "<script>"):
        rid = request_id(bad)
        assert rid != bad and len(rid) == 32


def test_audit_log_writes_json_lines_and_refuses_other_fields(tmp_path: Path):
    log = AuditLog(tmp_path / "sub" / "audit.jsonl")
    log.write(event="predict", request_id="r1", sha256="ab", prob_ai=0.7, decision="ai", model_version="3",
              client="10.0.0.1", route="/v1/predict", latency_ms=4.2, status=200)
    log.write(event="rejected", request_id="r2", status=422, reason="truncated", sha256=None)
    lines = (tmp_path / "sub" / "audit.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["decision"] == "ai" and first["client"] == "10.0.0.1" and "time" in first
    assert "sha256" not in second  # None fields are left out
    with pytest.raises(ValueError, match="audit records take only"):
        log.write(event="predict", body=b"\x89PNG")
    with pytest.raises(ValueError):
        log.write(event="predict", headers={"authorization": "Bearer x"})
    memory = AuditLog(None)
    assert memory.write(event="predict", request_id="x")["request_id"] == "x"
