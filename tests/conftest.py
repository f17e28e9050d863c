"""Shared fixtures: one Prefect test harness per session, a moto S3 server, isolated settings."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# The retry policy of outside calls (tasks.runtime.transient_retry_options), fast in tests: 4 retries, short
# delays. A test that needs other values sets GENOFLOWS_RETRY_* itself (fetch-trust).
os.environ.setdefault("GENOFLOWS_RETRY_ATTEMPTS", "4")
os.environ.setdefault("GENOFLOWS_RETRY_BASE_DELAY_SECONDS", "0.05")
os.environ.setdefault("GENOFLOWS_RETRY_MAX_DELAY_SECONDS", "0.2")


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for the whole session (starting one costs ~25 s here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """moto in server mode on 127.0.0.1: boto3 talks real HTTP to it."""
    from genoflows.testing.s3 import moto_server

    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def settings_env(monkeypatch, tmp_path):
    """Point every genoflows directory setting into tmp_path; returns the fresh Settings."""
    from genoflows.settings import get_settings

    for name in ("data", "reference", "cache"):
        monkeypatch.setenv(f"GENOFLOWS_{name.upper()}_DIR", str(tmp_path / name))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


# deploy (issue 11): one real `prefect server start` shared by the slow server/UI/automation/docker-pool tests.
@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """`prefect server start` on 127.0.0.1 (free port, SQLite in tmp), with UI and services; stopped at the end."""
    from genoflows.testing.prefect_server import prefect_server as start

    with start(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server
