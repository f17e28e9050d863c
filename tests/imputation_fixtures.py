"""Shared pieces of the imputation tests: a small simulated cohort, a Cloudgene test server with a made-up
token per run, a saved server block, and settings that make polling and retries fast."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from genoflows.imputation.simulate import make_cohort
from genoflows.settings import get_settings
from genoflows.testing.cloudgene_server import CloudgeneServer

FAST_ENV = {
    "GENOFLOWS_IMPUTATION_POLL_INITIAL_SECONDS": "0.05",
    "GENOFLOWS_IMPUTATION_POLL_CAP_SECONDS": "0.3",
    "GENOFLOWS_IMPUTATION_POLL_QUEUED_CAP_SECONDS": "0.5",
    "GENOFLOWS_RETRY_ATTEMPTS": "4",
    "GENOFLOWS_RETRY_BASE_DELAY_SECONDS": "0.05",
    "GENOFLOWS_RETRY_MAX_DELAY_SECONDS": "0.2",
}


def made_up_token() -> str:
    """A JWT-looking token unique to this run, so a leak is detectable by a plain substring search."""
    return "eyJ" + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def imp_cohort(tmp_path_factory):
    """40 study samples (servers need 20) on chromosomes 20 and 21, hg19 naming."""
    return make_cohort(
        tmp_path_factory.mktemp("imputation-cohort"),
        chroms=("20", "21"),
        panel_size=120,
        study_size=40,
        length=200_000,
    )


@pytest.fixture
def imp_token() -> str:
    return made_up_token()


@pytest.fixture
def cloudgene(imp_token, tmp_path):
    with CloudgeneServer(
        tokens={"lab": imp_token},
        speed=1.0,
        queue_seconds=0.8,
        run_seconds=0.6,
        export_seconds=0.2,
        workdir=tmp_path / "server",
    ) as server:
        yield server


@pytest.fixture
def imp_fast(settings_env, monkeypatch, tmp_path):
    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def save_block(server: CloudgeneServer, imp_token: str, name: str | None = None, **fields) -> str:
    from blocks.imputation_server import ImputationServer

    name = name or f"cg-{secrets.token_hex(4)}"
    ImputationServer(
        kind="cloudgene", base_url=server.base_url, app_id="imputationserver2", token=imp_token, **fields
    ).save(name, overwrite=True)
    return name


def assert_no_token(imp_token: str, *roots: Path, texts: tuple[str, ...] = ()) -> None:
    for text in texts:
        assert imp_token not in text
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file() and p.stat().st_size < 5_000_000:
                assert imp_token.encode() not in p.read_bytes(), f"token leaked into {p}"
