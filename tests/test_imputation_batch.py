"""The local engine with an AWS Batch block: minimac4 (panel compression and imputation) runs as Batch jobs on
moto in server mode, executed by the local agent, its files staged through S3; the flow code is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pysam
import pytest

from flows.imputation import impute
from genoflows.imputation.simulate import make_cohort
from genoflows.testing.batch_agent import batch_block, local_batch
from genoflows.toolrun import read_provenance

pytestmark = pytest.mark.slow


def test_minimac4_per_chromosome_runs_on_batch(
    prefect_harness, settings_env, moto_endpoint, monkeypatch, tmp_path
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # what the job's container talks to
    cohort = make_cohort(
        tmp_path / "c", chroms=("20",), panel_size=80, study_size=20, length=150_000, seed=11
    )
    block = batch_block(moto_endpoint, {"minimac4": (2, 4096)}, prefix="imputation", poll=(0.05, 0.3))
    bucket = block.staging_uri.split("/")[2]
    with local_batch(moto_endpoint) as agent:
        manifest = Path(
            impute(
                inputs=[str(cohort.study["20"])],
                service="local",
                refpanel=str(cohort.panel["20"]),
                out_dir=str(tmp_path / "out"),
                batch=block,
            )
        )
    job_dir = manifest.parent
    # Two Batch jobs (compress the panel, impute chr20), each with the block's resources.
    assert len(agent.submitted) == 2
    assert all({"type": "MEMORY", "value": "4096"} in s["resourceRequirements"] for s in agent.submitted)
    (prov,) = [p for p in read_provenance(job_dir) if p["argv"][0] == "minimac4"]
    assert prov["executor"]["queue"] == "genoflows-tools" and prov["executor"]["batch_job_id"]
    # The outputs came back through S3 into the server layout, verified and indexed.
    with pysam.VariantFile(str(job_dir / "chr20.dose.vcf.gz")) as vf:
        assert len(vf.header.samples) == 20 and sum(1 for _ in vf.fetch("20")) > 0
    names = {f["file"] for f in json.loads(manifest.read_text())["files"]}
    assert {"chr20.dose.vcf.gz", "chr20.dose.vcf.gz.tbi", "chr20.info.gz"} <= names
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    # The compressed panel, the target and its index went up as inputs (minimac4 needs the index).
    staged = [k.split("/")[-1] for k in keys if "/inputs/" in k]
    assert any(n.endswith(".msav") for n in staged)
    assert {"study.chr20.vcf.gz", "study.chr20.vcf.gz.tbi"} <= set(staged)
    assert any("/out/" in k and "chr20.dose" in k for k in keys)  # the dose VCF came down from the job
