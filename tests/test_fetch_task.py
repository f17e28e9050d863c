"""The Prefect fetch task: transient faults are retried to success, permanent ones fail on the first try."""

from __future__ import annotations

import asyncio
import hashlib

import boto3
import pytest

from genoflows.fetch import PermanentFetchError
from genoflows.testing.http_server import FileServer
from genoflows.testing.s3 import auth_enforced
from tasks.fetch import fetch_file
from tests.test_fetch_content import write_vcf_gz


def _run_count(state) -> int:
    """The task run's run_count as the API has it. Task runs reach the API through events, asynchronously: wait
    (bounded) until the stored run has reached the final state we hold, so the count is the final one."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async def read():
        async with get_client() as client:
            for _ in range(300):
                try:
                    run = await client.read_task_run(state.state_details.task_run_id)
                    if run.state is not None and run.state.type == state.type:
                        return run.run_count
                except ObjectNotFound:
                    pass
                await asyncio.sleep(0.1)
            raise AssertionError(f"task run {state.state_details.task_run_id} never reached {state.type} in the API")

    return asyncio.run(read())


def test_faults_are_retried_until_the_file_is_whole(prefect_harness, tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    body = write_vcf_gz(root / "truth.vcf.gz", n=6000)
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


def test_retry_settings_drive_fetch_file_and_no_partial_survives_the_last_attempt(prefect_harness, tmp_path,
                                                                                 monkeypatch):
    """GENOFLOWS_RETRY_ATTEMPTS decides the attempts (applied at call time); a download that drops every time
    leaves no .part once the retries are spent."""
    from tasks.fetch import fetch_retry_options

    monkeypatch.setenv("GENOFLOWS_RETRY_ATTEMPTS", "2")
    from genoflows.settings import get_settings

    get_settings.cache_clear()
    root = tmp_path / "www"
    root.mkdir()
    write_vcf_gz(root / "truth.vcf.gz", n=6000)
    dest = tmp_path / "ref" / "truth.vcf.gz"
    with FileServer(root) as server:
        server.add_fault("truth", "drop", times=10)
        state = fetch_file.with_options(**fetch_retry_options())(server.url("truth.vcf.gz"), dest, return_state=True)
    get_settings.cache_clear()
    assert state.is_failed() and _run_count(state) == 3
    assert sorted(p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")) == []


def test_an_etag_mismatch_is_downloaded_twice_not_five_times(prefect_harness, moto_endpoint, tmp_path, monkeypatch):
    import genoflows.fetch
    from genoflows.fetch import BadSourceFile
    from tasks.fetch import fetch_retry_options
    from tests.test_fetch import _CorruptingClient, _upload_uneven

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="lab-task-mismatch")
    _upload_uneven(s3, "lab-task-mismatch", "calls.bin", [5 << 20, 7 << 20, 100])
    corrupting = _CorruptingClient(s3)
    monkeypatch.setattr(genoflows.fetch, "s3_client", lambda *a, **k: corrupting)
    state = fetch_file.with_options(**fetch_retry_options())(
        "s3://lab-task-mismatch/calls.bin", tmp_path / "calls.bin", return_state=True
    )
    assert state.is_failed() and _run_count(state) == 2 and corrupting.downloads == 2
    with pytest.raises(BadSourceFile, match="downloaded twice"):
        state.result()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


def test_credentials_are_a_block_object(prefect_harness, moto_endpoint, tmp_path):
    """fetch_file(aws_credentials=AwsCredentials(...)): the block object, as a flow's block-typed parameter
    passes it, with its own endpoint; nothing is saved or looked up by name."""
    from prefect_aws import AwsCredentials

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="lab-block")
    s3.put_object(Bucket="lab-block", Key="notes.txt", Body=b"lab notes\n")
    creds = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                           aws_client_parameters={"endpoint_url": moto_endpoint})
    result = fetch_file("s3://lab-block/notes.txt", tmp_path / "notes.txt", aws_credentials=creds)
    assert result.path.read_bytes() == b"lab notes\n"


def test_one_progress_artifact_per_file_and_none_for_small_files(prefect_harness, tmp_path, monkeypatch):
    from genoflows.settings import get_settings
    from genoflows.testing.artifacts import read_artifacts

    root = tmp_path / "www"
    root.mkdir()
    write_vcf_gz(root / "small.vcf.gz", n=6000)
    write_vcf_gz(root / "watched.vcf.gz", n=6000)
    with FileServer(root) as server:
        assert fetch_file(server.url("small.vcf.gz"), tmp_path / "small.vcf.gz").downloaded  # below 64 MiB
        monkeypatch.setenv("GENOFLOWS_PROGRESS_ARTIFACT_MIN_BYTES", "1000")
        get_settings.cache_clear()
        server.add_fault("watched", "drop")  # a retry of the same task run updates the same artifact
        state = fetch_file(server.url("watched.vcf.gz"), tmp_path / "watched.vcf.gz", return_state=True)
    get_settings.cache_clear()
    assert state.is_completed() and _run_count(state) == 2
    assert read_artifacts("fetch-small-vcf-gz") == []
    watched = read_artifacts("fetch-watched-vcf-gz")
    assert len(watched) == 1 and watched[0].type == "progress" and float(watched[0].data) == 100.0


def test_an_unpublished_optional_file_completes_with_none(prefect_harness, tmp_path):
    """A checksum sidecar that is not there (404) is an answer, not a failed task run; a 503 is still retried."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "md5sum").write_text("0" * 32 + "  x.vcf.gz\n")
    with FileServer(root) as server:
        state = fetch_file(server.url("x.vcf.gz.md5"), tmp_path / "x.vcf.gz.md5", kind="checksum", missing_ok=True,
                           return_state=True)
        assert state.is_completed() and state.result() is None
        server.add_fault("md5sum", "503", times=2)
        state = fetch_file(server.url("md5sum"), tmp_path / "md5sum", missing_ok=True, return_state=True)
        assert state.is_completed() and state.result().path.read_text().endswith("x.vcf.gz\n")
        assert [r.status for r in server.requests] == [404, 503, 503, 200]
