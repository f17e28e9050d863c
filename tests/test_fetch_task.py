"""The Prefect fetch task: transient faults are retried to success, permanent ones fail on the first try."""

from __future__ import annotations

import asyncio
import hashlib
import os

import boto3
import pytest

from genoflows.fetch import PermanentFetchError
from genoflows.testing.http_server import FileServer
from genoflows.testing.s3 import auth_enforced
from tasks.fetch import fetch_file


def _run_count(state) -> int:
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return (await client.read_task_run(state.state_details.task_run_id)).run_count

    return asyncio.run(read())


def test_faults_are_retried_until_the_file_is_whole(prefect_harness, tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    body = os.urandom(200_000)
    (root / "truth.vcf.gz").write_bytes(body)
    with FileServer(root) as server:
        for kind in ("503", "drop", "corrupt"):
            server.add_fault("truth", kind)
        state = fetch_file(
            server.url("truth.vcf.gz"), tmp_path / "ref" / "truth.vcf.gz",
            md5=hashlib.md5(body).hexdigest(), return_state=True,
        )
        assert state.is_completed(), state
        assert (tmp_path / "ref" / "truth.vcf.gz").read_bytes() == body
        assert _run_count(state) == 4  # 503, drop, corrupt, then success
        assert [r.status for r in server.downloads("truth")] == [503, 200, 206, 200]


def test_access_denied_is_not_retried(prefect_harness, moto_endpoint, tmp_path, monkeypatch, settings_env):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="lab-denied")
    s3.put_object(Bucket="lab-denied", Key="s.g.vcf.gz", Body=b"x")
    with auth_enforced(moto_endpoint) as (key, secret):
        monkeypatch.setenv("GENOFLOWS_AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("GENOFLOWS_AWS_SECRET_ACCESS_KEY", secret)
        from genoflows.settings import get_settings

        get_settings.cache_clear()
        state = fetch_file(
            "s3://lab-denied/s.g.vcf.gz", tmp_path / "s.g.vcf.gz", s3_endpoint_url=moto_endpoint, return_state=True
        )
    assert state.is_failed()
    with pytest.raises(PermanentFetchError, match="access denied"):
        state.result()
    assert _run_count(state) == 1
