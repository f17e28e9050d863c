"""The AWS Batch executor against moto in server mode, with jobs run by a local agent as real processes."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import boto3
import pysam
import pytest

from genoflows.batch import (
    BatchConfig,
    BatchPermanentError,
    BatchResources,
    BatchRunner,
    BatchTransientError,
    use_batch,
)
from genoflows.testing.batch_agent import create_queue, local_batch
from genoflows.toolrun import read_provenance, run_tool


@pytest.fixture
def batch_env(moto_endpoint, monkeypatch):
    """A queue and job definition on moto, a staging bucket, and the local agent running jobs."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # what the job's container and our clients talk to
    bucket = f"staging-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    create_queue(moto_endpoint)
    with local_batch(moto_endpoint) as agent:
        yield moto_endpoint, bucket, agent


def make_runner(endpoint: str, bucket: str, *, queue="genoflows-tools", definition="genoflows-tool",
                tools=None, key_id=None, secret=None) -> BatchRunner:
    kw = dict(endpoint_url=endpoint, region_name="us-east-1")
    if key_id:
        kw.update(aws_access_key_id=key_id, aws_secret_access_key=secret)
    config = BatchConfig(
        job_queue=queue, job_definition=definition, staging_uri=f"s3://{bucket}/jobs",
        tools=tools if tools is not None else {"bcftools": BatchResources(vcpus=2, memory_mib=4096)},
        poll_initial_seconds=0.05, poll_max_seconds=0.3,
    )
    return BatchRunner(config, boto3.client("batch", **kw), boto3.client("s3", **kw), boto3.client("logs", **kw),
                       sleep=lambda s: time.sleep(min(s, 0.3)))


def write_vcf(path: Path, n: int = 50) -> Path:
    header = pysam.VariantHeader()
    header.contigs.add("chr1", length=10_000)
    header.add_sample("S1")
    header.formats.add("GT", 1, "String", "Genotype")
    with pysam.VariantFile(str(path), "wz", header=header) as out:
        for i in range(n):
            rec = out.new_record(contig="chr1", start=100 + 37 * i, alleles=("A", "G"))
            rec.samples["S1"]["GT"] = (0, 1) if i % 3 else (1, 1)
            out.write(rec)
    return path


def test_tool_call_runs_as_a_batch_job_and_its_output_comes_back(batch_env, tmp_path):
    endpoint, bucket, agent = batch_env
    (tmp_path / "in").mkdir()
    vcf = write_vcf(tmp_path / "in" / "calls.vcf.gz")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    lines: list[str] = []
    argv = ["bcftools", "view", "-i", 'GT="AA"', "-Oz", "-o", str(out_dir / "hom.vcf.gz"), str(vcf)]
    with use_batch(make_runner(endpoint, bucket)):
        record = run_tool(argv, log=lines.append, provenance_dir=tmp_path / "prov")
    # The same command run here gives the same records.
    run_tool([*argv[:6], str(tmp_path / "local.vcf.gz"), str(vcf)])
    remote = [str(r) for r in pysam.VariantFile(str(out_dir / "hom.vcf.gz"))]
    local = [str(r) for r in pysam.VariantFile(str(tmp_path / "local.vcf.gz"))]
    assert remote == local and len(remote) == 17
    # Resources went with the job; the job's log reached ours; provenance names the job and queue.
    assert {"type": "VCPU", "value": "2"} in agent.submitted[-1]["resourceRequirements"]
    assert {"type": "MEMORY", "value": "4096"} in agent.submitted[-1]["resourceRequirements"]
    assert any("genoflows: running bcftools" in line for line in lines), lines
    prov = read_provenance(tmp_path / "prov")[-1]
    assert prov["executor"]["queue"] == "genoflows-tools" and prov["executor"]["batch_job_id"] == record.executor["batch_job_id"]
    assert not list(out_dir.glob(".*part"))


def test_tools_not_configured_for_batch_run_here(batch_env, tmp_path):
    endpoint, bucket, agent = batch_env
    vcf = write_vcf(tmp_path / "calls.vcf.gz")
    with use_batch(make_runner(endpoint, bucket, tools={"regenie": BatchResources(vcpus=4)})):
        record = run_tool(["bcftools", "index", "-t", str(vcf)])
    assert record.executor is None and not agent.submitted and (tmp_path / "calls.vcf.gz.tbi").exists()


def test_failed_job_names_exit_code_and_keeps_the_tool_output(batch_env, tmp_path):
    endpoint, bucket, agent = batch_env
    bad = tmp_path / "broken.vcf.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    lines: list[str] = []
    prov = tmp_path / "prov"
    prov.mkdir()
    with use_batch(make_runner(endpoint, bucket)), pytest.raises(BatchPermanentError, match=r"exit code [1-9]") as err:
        run_tool(["bcftools", "view", "-o", str(tmp_path / "o.vcf"), str(bad)], log=lines.append, provenance_dir=prov)
    assert any("bcftools" in line and "@batch" in line for line in lines[1:]), lines
    assert not (tmp_path / "o.vcf").exists()
    # The tool's own last words are in the error's first line (what a status table shows), all of it in tools.log.
    assert err.value.tail and err.value.tail[-1].strip() in str(err.value).splitlines()[0]
    log_text = (prov / "tools.log").read_text()
    assert "bcftools batch failed" in log_text and err.value.tail[-1].strip() in log_text


def test_out_of_memory_is_permanent_and_names_the_memory(batch_env, tmp_path):
    endpoint, bucket, agent = batch_env
    vcf = write_vcf(tmp_path / "calls.vcf.gz")
    agent.faults = ["oom"]
    with use_batch(make_runner(endpoint, bucket)), pytest.raises(BatchPermanentError, match="out of memory"):
        run_tool(["bcftools", "index", "-t", str(vcf)])


def test_an_image_that_cannot_be_pulled_is_permanent_and_says_so(batch_env, tmp_path):
    endpoint, bucket, agent = batch_env
    vcf = write_vcf(tmp_path / "calls.vcf.gz")
    agent.faults = ["pull"]
    with use_batch(make_runner(endpoint, bucket)), pytest.raises(BatchPermanentError,
                                                                  match="image could not be pulled") as err:
        run_tool(["bcftools", "index", "-t", str(vcf)])
    assert "registry.example/genoflows:missing" in str(err.value) and "job definition" in str(err.value)
    assert len(agent.submitted) == 1 and not Path(f"{vcf}.tbi").exists()


def test_lost_host_is_transient_and_a_prefect_retry_succeeds(batch_env, tmp_path, prefect_harness, monkeypatch):
    from prefect import flow, task

    from tasks.runtime import transient_retry_options

    endpoint, bucket, agent = batch_env
    monkeypatch.setenv("GENOFLOWS_RETRY_BASE_DELAY_SECONDS", "0")
    from genoflows.settings import get_settings

    get_settings.cache_clear()
    vcf = write_vcf(tmp_path / "calls.vcf.gz")
    agent.faults = ["host", "ok"]

    @task
    def index(path: str) -> dict:
        return run_tool(["bcftools", "index", "-t", path]).executor

    @flow
    def with_batch() -> dict:
        with use_batch(make_runner(endpoint, bucket)):
            return index.with_options(**transient_retry_options(BatchPermanentError))(str(vcf))

    executor = with_batch()
    get_settings.cache_clear()
    assert len(agent.submitted) == 2 and executor["batch_job_id"]
    assert (tmp_path / "calls.vcf.gz.tbi").exists()
    with pytest.raises(BatchTransientError, match="lost its host"):
        agent.faults = ["host"]
        with use_batch(make_runner(endpoint, bucket)):
            run_tool(["bcftools", "index", "-f", "-t", str(vcf)])


def test_cancellation_terminates_the_job(batch_env, tmp_path):
    endpoint, bucket, agent = batch_env
    stop = threading.Event()
    runner = make_runner(endpoint, bucket, tools={"sleep": BatchResources()})
    threading.Timer(1.5, stop.set).start()
    t0 = time.monotonic()
    with use_batch(runner), pytest.raises(BatchPermanentError, match="cancelled"):
        run_tool(["sleep", "120"], stop=stop)
    assert time.monotonic() - t0 < 30
    jobs = runner.batch.list_jobs(jobQueue="genoflows-tools", jobStatus="FAILED")["jobSummaryList"]
    assert any("cancelled" in (j.get("statusReason") or "") for j in jobs)


def test_throttled_describe_jobs_slows_polling_but_succeeds(batch_env, tmp_path):
    endpoint, bucket, agent = batch_env
    vcf = write_vcf(tmp_path / "calls.vcf.gz")
    agent.throttle_describe(4)
    before = agent.describe_calls
    with use_batch(make_runner(endpoint, bucket)):
        run_tool(["bcftools", "index", "-t", str(vcf)])
    assert agent.describe_calls - before >= 5 and (tmp_path / "calls.vcf.gz.tbi").exists()


@pytest.mark.parametrize("what", ["queue", "definition"])
def test_missing_queue_or_job_definition_is_named(batch_env, tmp_path, what):
    endpoint, bucket, agent = batch_env
    vcf = write_vcf(tmp_path / "calls.vcf.gz")
    kw = {"queue": "no-such-queue"} if what == "queue" else {"definition": "no-such-definition"}
    with use_batch(make_runner(endpoint, bucket, **kw)), pytest.raises(BatchPermanentError, match="no-such-"):
        run_tool(["bcftools", "index", "-t", str(vcf)])
    assert not agent.submitted


def test_credentials_without_submit_job_are_not_retried(batch_env, tmp_path):
    endpoint, bucket, agent = batch_env
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    user = f"no-batch-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*", "logs:*"], "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    import httpx

    vcf = write_vcf(tmp_path / "calls.vcf.gz")
    runner = make_runner(endpoint, bucket, key_id=key["AccessKeyId"], secret=key["SecretAccessKey"])
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        with use_batch(runner), pytest.raises(BatchPermanentError, match="batch:SubmitJob"):
            run_tool(["bcftools", "index", "-t", str(vcf)])
    finally:
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
    assert not agent.submitted
