"""RNA-seq with its state on S3 (an s3:// out_dir, moto in server mode) and kallisto on AWS Batch (moto's Batch
with a local agent that runs each job as a real process), against the local ENA-like server.

A "fresh task" is what a new ECS task is: a new, empty data directory (the scratch copy) and cache directory,
and a new Prefect flow run; only S3 carries over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest

from genoflows.rnaseq.remote_state import MANIFEST, RemoteSpecies
from genoflows.settings import get_settings
from genoflows.testing import rnaseq_world as sim
from genoflows.testing.rnaseq_world import ena_server
from tests.test_rnaseq_flow import RETRY_ENV, build_world, read_tsv, run_flow

pytestmark = pytest.mark.slow
SPECIES = "Apis mellifera"
SP = "Apis_mellifera"
RUNS = {"SRR7000001": {}, "SRR7000002": {"layout": "single"}, "SRR7000003": {"n": 2000}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rnaseq_remote")
    (root / "srv").mkdir()
    tx = sim.make_transcriptome(root / "transcripts.fa", n_genes=20, seed=7)
    with ena_server(root / "srv") as server:
        build_world(root, server, tx, RUNS)
        yield root, server, tx


@pytest.fixture
def task_env(world, monkeypatch, tmp_path):
    """Settings of one machine; call it again for a fresh task (new empty data and cache directories)."""
    root, server, _ = world

    def fresh(name: str) -> Path:
        for k, v in {**RETRY_ENV, "GENOFLOWS_ENA_BASE_URL": server.base_url,
                     "GENOFLOWS_DATA_DIR": str(tmp_path / name / "data"),
                     "GENOFLOWS_CACHE_DIR": str(tmp_path / name / "cache")}.items():  # fmt: skip
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        return tmp_path / name

    yield fresh
    get_settings.cache_clear()


def credentials(endpoint: str):
    from prefect_aws import AwsClientParameters, AwsCredentials

    creds = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                           aws_client_parameters=AwsClientParameters(endpoint_url=endpoint))  # fmt: skip
    creds.save(f"rnaseq-remote-{uuid.uuid4().hex[:8]}")
    return creds


def objects(s3, bucket: str, prefix: str) -> dict[str, tuple[str, object]]:
    """key (relative to prefix) -> (ETag, LastModified)."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix):]] = (o["ETag"], o["LastModified"])
    return out


def body(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_s3_out_dir_resumes_exactly_on_a_fresh_task(prefect_harness, world, task_env, moto_endpoint):
    """First task: one run's file answers 404 until its retries are used up, so it fails; the two others are
    quantified and on S3 at once (manifest last), the index is cached on S3, failed.tsv names the failure. A fresh
    task (empty disk, new flow run) downloads nothing of the finished runs from ENA, rewrites none of their
    objects, fetches the index instead of building it, quantifies the failed run, and removes failed.tsv. What is
    on S3 then equals a run into a local directory, file for file."""
    from flows.rnaseq_quant import rnaseq_quant

    root, server, _ = world
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"lab-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    creds = credentials(moto_endpoint)
    out = f"s3://{bucket}/rnaseq"
    prefix = f"rnaseq/{SP}/"
    p = {"metadata": str(root / "metadata.tsv"), "species": SPECIES, "transcriptome": str(root / "transcripts.fa"),
         "out_dir": out, "disk_budget": "5MB", "max_downloads": 3, "sources": ["ena"], "aws_credentials": creds}  # fmt: skip

    first = task_env("task1")
    server.add_fault("SRR7000003_1", "404", times=1)  # a 404 is not retried: the run fails
    state, summary = run_flow(rnaseq_quant, **p)
    assert state.is_failed() and state.message.endswith(f"2 of 3 runs quantified, 1 failed (see {out}/{SP}/failed.tsv)")
    assert summary["failed_tsv"] == f"{out}/{SP}/failed.tsv"
    before = objects(s3, bucket, prefix)
    for run in ("SRR7000001", "SRR7000002"):
        assert {f"quant/{run}/{n}" for n in ("abundance.tsv", "run_info.json", "tools.log", MANIFEST)} <= set(before)
        info = body(s3, bucket, f"{prefix}quant/{run}/run_info.json").decode()  # names S3, not the scratch copy
        assert str(first / "data") not in info and f"-o {out}/{SP}/quant/{run} " in info
    assert not any(k.startswith("quant/SRR7000003/") for k in before)
    assert [r["run"] for r in read_tsv_bytes(body(s3, bucket, f"{prefix}failed.tsv"))] == ["SRR7000003"]
    index_logs = list((first / "cache" / "kallisto").glob("*/index.log"))
    assert len(index_logs) == 1
    key = index_logs[0].parent.name
    assert set(objects(s3, bucket, f"rnaseq/kallisto-index-cache/{key}/")) == {"transcripts.idx", "index.log",
                                                                                 "index.json"}  # fmt: skip

    fresh = task_env("task2")  # a new ECS task: nothing on its disk
    n_requests = len(server.requests)
    state, summary = run_flow(rnaseq_quant, **p)
    assert state.is_completed(), state.message
    assert summary["quantified"] == 3 and summary["newly_quantified"] == 1 and not summary["failures"]
    new = server.requests[n_requests:]
    assert new and not [r for r in new if "SRR7000001" in r.path or "SRR7000002" in r.path]
    after = objects(s3, bucket, prefix)
    assert {k: v for k, v in after.items() if k.startswith("quant/SRR700000") and "SRR7000003" not in k} == \
        {k: v for k, v in before.items() if k.startswith("quant/")}  # finished work: not one object rewritten
    assert "failed.tsv" not in after and f"quant/SRR7000003/{MANIFEST}" in after
    restored = fresh / "cache" / "kallisto" / key
    assert (restored / "index.log").read_bytes() == index_logs[0].read_bytes()  # fetched, not built again

    task_env("local")
    local_out = fresh.parent / "local-out"
    state, _ = run_flow(rnaseq_quant, **{**p, "out_dir": str(local_out), "aws_credentials": None})
    assert state.is_completed(), state.message
    sp = local_out / SP
    local_files = {f.relative_to(sp).as_posix() for f in sp.rglob("*") if f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(sp).parts) and "fastq" not in f.parts}  # fmt: skip
    assert {k for k in after if not k.endswith(MANIFEST)} == local_files
    for rel in local_files:
        if rel.endswith(".tsv"):  # tables: byte for byte (logs and run_info name their own times and places)
            assert body(s3, bucket, prefix + rel) == (sp / rel).read_bytes(), rel
    assert len(read_tsv(sp / "merged" / f"{SP}_tpm.tsv")[0]) == 4


def test_a_killed_task_loses_only_the_runs_in_flight(prefect_harness, world, task_env, moto_endpoint, monkeypatch):
    """A task quantifying into s3:// is killed (SIGKILL, as ECS stops a task) as soon as its first run is on S3.
    That run was uploaded when it was quantified, not at the end: a fresh task (the ECS nightly deployment's call,
    rnaseq_multi_species with out_dir overriding the config's) restores it without a request to ENA, rewrites none
    of its objects, and quantifies only the others. Credentials and endpoint come from the settings (no block)."""
    from prefect.settings import PREFECT_API_URL

    from flows.rnaseq_quant import rnaseq_multi_species

    root, server, _ = world
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"lab-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    prefix = f"rnaseq/{SP}/quant/"
    monkeypatch.setenv("GENOFLOWS_S3_ENDPOINT_URL", moto_endpoint)
    killed = task_env("killed")
    killed.mkdir(parents=True)
    p = {"metadata": str(root / "metadata.tsv"), "species": SPECIES, "transcriptome": str(root / "transcripts.fa"),
         "out_dir": f"s3://{bucket}/rnaseq", "disk_budget": "5MB", "max_downloads": 1, "sources": ["ena"]}  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(Path(__file__).parents[1])}
    code = f"from flows.rnaseq_quant import rnaseq_quant; rnaseq_quant(**{p!r})"
    server.bandwidth = 100_000  # per connection: ~1 s per file
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[1],
                                stdout=subprocess.DEVNULL, stderr=open(killed / "flow.log", "wb"))  # noqa: SIM115  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not [k for k in objects(s3, bucket, prefix) if k.endswith(MANIFEST)]:
                assert proc.poll() is None, (killed / "flow.log").read_text()[-3000:]
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    finally:
        server.bandwidth = None
    on_s3 = objects(s3, bucket, prefix)
    done = {k.split("/")[0] for k in on_s3 if k.endswith(MANIFEST)}
    on_s3 = {k: v for k, v in on_s3.items() if k.split("/")[0] in done}
    assert 1 <= len(done) < 3, "the flow finished before it was killed"

    fresh = task_env("fresh")  # the nightly ECS deployment's call: the multi-species flow, out_dir overridden
    fresh.mkdir(parents=True)
    (fresh / "species.yaml").write_text(f"transcriptome: {root / 'transcripts.fa'}\nout_dir: elsewhere\n"
                                        f"sources: [ena]\nspecies:\n  - {{species: {SPECIES}, metadata: {root / 'metadata.tsv'}}}\n")  # fmt: skip
    n_requests = len(server.requests)
    state, results = run_flow(rnaseq_multi_species, configs=str(fresh / "species.yaml"), out_dir=p["out_dir"],
                              max_downloads=1)  # fmt: skip
    assert state.is_completed(), state.message
    summary = results[SP]
    assert summary["quantified"] == 3 and summary["newly_quantified"] == 3 - len(done)
    assert summary["out"] == f"{p['out_dir']}/{SP}" and not (fresh / "elsewhere").exists()
    assert not [r for r in server.requests[n_requests:] if any(run in r.path for run in done)]
    after = objects(s3, bucket, prefix)
    assert {k: v for k, v in after.items() if k.split("/")[0] in done} == on_s3  # not one object rewritten


def read_tsv_bytes(data: bytes) -> list[dict[str, str]]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(data.decode()), delimiter="\t"))


def test_a_tampered_object_on_s3_is_not_trusted(moto_endpoint, tmp_path):
    """A finished run whose abundance.tsv was changed on S3 after its manifest: the restore refuses it (sha256)
    and leaves no partial run behind; a cached index with a wrong header is reported, to be rebuilt."""
    from genoflows.fetch import ChecksumMismatch
    from genoflows.rnaseq.remote_state import check_index_header, restore_index, store_index

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"lab-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    a = RemoteSpecies.open(f"s3://{bucket}/out", SP, tmp_path / "a", s3)
    run_dir = a.dirs.quant_dir("SRR1")
    run_dir.mkdir(parents=True)
    (run_dir / "abundance.tsv").write_text("target_id\tlength\teff_length\test_counts\ttpm\nt1\t100\t50\t3\t1e6\n")
    (run_dir / "run_info.json").write_text('{"n_targets": 1, "n_processed": 3, "n_pseudoaligned": 3, '
                                           '"p_pseudoaligned": 100.0, "call": "kallisto quant -i x.idx"}')  # fmt: skip
    assert a.upload_run("SRR1") and not a.upload_run("SRR1")  # the second time: already there, not rewritten
    s3.put_object(Bucket=bucket, Key=f"out/{SP}/quant/SRR1/abundance.tsv",
                  Body=b"target_id\tlength\teff_length\test_counts\ttpm\nt1\t100\t50\t4\t1e6\n")  # fmt: skip
    b = RemoteSpecies.open(f"s3://{bucket}/out", SP, tmp_path / "b", s3)
    with pytest.raises(ChecksumMismatch, match=f"SRR1 on S3 fails its check: .*sha256.*delete s3://{bucket}/out/{SP}/quant/SRR1/"):
        b.restore(["SRR1"])
    assert not b.dirs.is_complete("SRR1") and not list(b.dirs.quant.iterdir())

    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "transcripts.idx").write_bytes((10).to_bytes(8, "little") + (31).to_bytes(4, "little") + (5).to_bytes(4, "little"))
    check_index_header(idx / "transcripts.idx", k=31, n_targets=5)
    store_index(s3, f"s3://{bucket}/cache", "key1", idx, k=31, n_targets=5)
    assert restore_index(s3, f"s3://{bucket}/cache", "key1", tmp_path / "c", k=31, n_targets=5) == ""
    problem = restore_index(s3, f"s3://{bucket}/cache", "key1", tmp_path / "d", k=31, n_targets=6)
    assert problem and "6 targets" in problem and not (tmp_path / "d" / "transcripts.idx").exists()
    assert restore_index(s3, f"s3://{bucket}/cache", "key2", tmp_path / "e", k=31, n_targets=5) is None


def test_kallisto_runs_as_batch_jobs_with_the_batch_block(prefect_harness, world, task_env, moto_endpoint,
                                                           monkeypatch):  # fmt: skip
    """With an AwsBatch block listing kallisto, the index build and the quantification (called from the stream's
    worker threads) are Batch jobs, run by the local agent; the result is the one kallisto gives here."""

    from flows.rnaseq_quant import rnaseq_quant
    from genoflows.testing.batch_agent import batch_block, local_batch
    from genoflows.toolrun import read_provenance, run_tool
    from genoflows.tools.kallisto import quant_argv, read_abundance

    root, server, _ = world
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # the job's container talks to moto
    block = batch_block(moto_endpoint, {"kallisto": (1, 2048)}, poll=(0.05, 0.3))
    block.save(f"rnaseq-batch-{time.monotonic_ns()}")
    base = task_env("batch")
    p = {"metadata": ["SRR7000001"], "species": SPECIES, "transcriptome": str(root / "transcripts.fa"),
         "disk_budget": "5MB", "sources": ["ena"]}  # fmt: skip
    with local_batch(moto_endpoint) as agent:
        state, summary = run_flow(rnaseq_quant, **p, out_dir=str(base / "batch-out"), batch=block)
    assert state.is_completed(), state.message
    commands = [" ".join(s["command"]) for s in agent.submitted]
    assert len(commands) == 2 and all("genoflows.batch_entry" in c for c in commands)
    quant = base / "batch-out" / SP / "quant" / "SRR7000001"
    prov = [r for r in read_provenance(quant) if r["tool"] == "kallisto"]
    assert prov and prov[-1]["executor"]["queue"] == "genoflows-tools" and prov[-1]["executor"]["batch_job_id"]
    assert summary["quantified"] == 1 and (quant / "tools.log").is_file()  # the job's output, as a local call's
    # kallisto run by hand here on the same files and index gives the same table
    index = next((base / "cache" / "kallisto").glob("*/transcripts.idx"))
    fastqs = sorted((root / "gen").glob("SRR7000001_[12].fastq.gz"))
    run_tool(quant_argv(index, base / "by-hand", fastqs, "paired"))
    assert read_abundance(quant / "abundance.tsv") == read_abundance(base / "by-hand" / "abundance.tsv")
    # one more run into the Batch run's tree, quantified here: both merge (run_info.json names the host's index)
    state, summary = run_flow(rnaseq_quant, **{**p, "metadata": ["SRR7000001", "SRR7000002"]},
                              out_dir=str(base / "batch-out"))  # fmt: skip
    assert state.is_completed(), state.message
    assert summary["quantified"] == 2 and summary["newly_quantified"] == 1


def test_credentials_that_cannot_write_stop_the_stream(prefect_harness, world, task_env, moto_endpoint):
    """Credentials that may read the bucket but not write it (IAM enforced by moto): a run that cannot be stored is
    a machine-wide failure (no run could be kept; admissions stop), the flow run ends Failed naming access denied,
    with its summary (the end-of-run upload fails too, and is named rather than raised); nothing on S3 claims a run
    is finished."""
    import json

    import httpx
    from prefect_aws import AwsClientParameters, AwsCredentials

    from flows.rnaseq_quant import rnaseq_quant

    root, _, _ = world
    task_env("read-only")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"lab-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    user = f"read-only-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                                                      "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}  # fmt: skip
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    creds = AwsCredentials(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                           region_name="us-east-1", aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint))  # fmt: skip
    creds.save(f"rnaseq-read-only-{uuid.uuid4().hex[:8]}")
    p = {"metadata": str(root / "metadata.tsv"), "species": SPECIES, "transcriptome": str(root / "transcripts.fa"),
         "out_dir": f"s3://{bucket}/rnaseq", "disk_budget": "5MB", "max_downloads": 1, "sources": ["ena"],
         "aws_credentials": creds}  # fmt: skip
    httpx.post(f"{moto_endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        state, summary = run_flow(rnaseq_quant, **p)
    finally:
        httpx.post(f"{moto_endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
    assert state.is_failed() and "machine-wide failure" in state.message and "access denied" in state.message
    assert summary["quantified"] == 0 and len(summary["failures"]) == 3
    assert not objects(s3, bucket, "rnaseq/")
