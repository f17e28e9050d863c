"""impute against the local Cloudgene server end to end: faults on the way, submit exactly once, resume,
server-side failures surfaced with the server's own text, tokens never leaked."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import zipfile
from pathlib import Path

import pysam
import pytest
from prefect.states import State

from flows.imputation import impute
from genoflows.imputation.record import load_record
from genoflows.testing.artifacts import read_artifacts
from tests.imputation_fixtures import assert_no_token, save_block

pytest_plugins = ["tests.imputation_fixtures"]

pytestmark = pytest.mark.slow


def _events(job_id: str, want: set[str], timeout: float = 30) -> list:
    """Events `genoflows.imputation.*` of one job as the Prefect API stored them (ingestion is asynchronous)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async def read():
        async with get_client() as c:
            page = await c.read_events(
                filter=EventFilter(
                    event=EventNameFilter(prefix=["genoflows.imputation."]),
                    resource=EventResourceFilter(id=[f"genoflows.imputation.job.{job_id}"]),
                ),
                limit=50,
            )
            return page.events

    t0 = time.monotonic()
    while True:
        events = [e for e in asyncio.run(read()) if e.payload.get("job_id") == job_id]
        if want <= {e.event for e in events} or time.monotonic() - t0 > timeout:
            return events
        time.sleep(0.5)


def _run(**kw) -> State:
    return impute(return_state=True, **kw)


def test_faults_then_one_submission_verified_outputs_and_rerun_resumes(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path, caplog
):
    block = save_block(cloudgene, imp_token)
    cloudgene.inject("503", r"/submit/")  # maintenance at submit: wait and retry
    cloudgene.inject("drop", r"/status$")  # connection dropped mid-poll
    cloudgene.inject("500", r"/status$")
    cloudgene.inject("truncate", r"chr_20\.zip")  # a download cut short: fetched again
    out = tmp_path / "out"
    inputs = [str(imp_cohort.study["20"]), str(imp_cohort.study["21"])]
    state = _run(inputs=inputs, service=block, refpanel="apps@hapmap-2", population="eur", out_dir=str(out))
    assert state.is_completed(), state.message
    manifest = Path(state.result())
    doc = json.loads(manifest.read_text())
    job_dir = manifest.parent
    assert cloudgene.submissions == 1
    assert doc["job_id"] in cloudgene.jobs and doc["service"] == block
    names = {f["file"] for f in doc["files"]}
    for n in ("20", "21"):
        assert {f"chr{n}.dose.vcf.gz", f"chr{n}.dose.vcf.gz.tbi", f"chr{n}.info.gz"} <= names
        with pysam.VariantFile(str(job_dir / f"chr{n}.dose.vcf.gz")) as vf:
            assert len(vf.header.samples) == 40 and next(iter(vf.fetch(n))) is not None
    assert cloudgene.download_gets["chr_20.zip"] == 2 and cloudgene.download_gets["chr_21.zip"] == 1
    record = load_record(job_dir)
    assert record.downloads["chr_20.zip"]["gets"] == 2
    states = [h["state"] for h in record.history]
    assert states[0] == "submitted" and states[-2:] == ["success", "downloaded"]
    want = {f"genoflows.imputation.{s}" for s in ("submitted", "running", "success")}
    events = _events(doc["job_id"], want)
    assert want <= {e.event for e in events}
    for e in events:
        assert (
            e.payload["server"]
            and e.payload["flow_run_id"]
            and e.resource.id.startswith("genoflows.imputation.job.")
        )
    history = read_artifacts(f"imputation-status-{record.job_name.lower()}")
    assert history and "success" in str(history[0].data)

    # the same request again: resumes the recorded job, downloads nothing already verified
    gets = dict(cloudgene.download_gets)
    state2 = _run(inputs=inputs, service=block, refpanel="apps@hapmap-2", population="eur", out_dir=str(out))
    assert state2.is_completed(), state2.message
    assert cloudgene.submissions == 1 and cloudgene.download_gets == gets
    assert_no_token(
        imp_token, out, cloudgene.workdir.parent / "data", texts=(caplog.text, str(history[0].data))
    )


def test_s3_out_dir_aes_zips_and_resubmit(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path, moto_endpoint, monkeypatch
):
    """The S3 side goes through the flow's AwsCredentials block (no AWS variables in the environment), for the
    outputs and for imputation_accuracy reading them back with a truth VCF from the bucket."""
    import boto3
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from flows.imputation import imputation_accuracy
    from genoflows.settings import get_settings

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "GENOFLOWS_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    get_settings.cache_clear()
    creds = AwsCredentials(aws_access_key_id="lab", aws_secret_access_key="lab-secret", region_name="us-east-1",
                           aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint))
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="t",
                      aws_secret_access_key="t")
    s3.create_bucket(Bucket="imputed")
    block = save_block(cloudgene, imp_token)
    kw = dict(
        inputs=[str(imp_cohort.study["20"])],
        service=block,
        refpanel="apps@hapmap-2",
        out_dir="s3://imputed/lab",
        aes_encryption=True,
        aws_credentials=creds,
    )
    state = _run(**kw)
    assert state.is_completed(), state.message
    uri = state.result()
    assert uri.startswith("s3://imputed/lab/gf-") and uri.endswith("/imputation.json")
    doc = json.loads(s3.get_object(Bucket="imputed", Key=uri[len("s3://imputed/") :])["Body"].read())
    by_name = {f["file"]: f for f in doc["files"]}
    dose = by_name["chr20.dose.vcf.gz"]
    body = s3.get_object(Bucket="imputed", Key=dose["uri"][len("s3://imputed/") :])["Body"].read()
    assert len(body) == dose["bytes"] and hashlib.sha256(body).hexdigest() == dose["sha256"]
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "chr20.dose.vcf.gz").write_bytes(body)
    s3.upload_file(str(imp_cohort.truth["20"]), "imputed", "truth/chr20.vcf.gz")
    from_s3 = imputation_accuracy(uri.rsplit("/", 1)[0], {"20": "s3://imputed/truth/chr20.vcf.gz"},
                                  aws_credentials=creds)
    assert from_s3 == imputation_accuracy(str(tmp_path / "local"), {"20": str(imp_cohort.truth["20"])})
    (job,) = cloudgene.jobs.values()
    assert "aesEncryption" in job.params
    assert (
        zipfile.ZipFile(job.files[next(iter(job.files))]["path"]).infolist()[0].compress_type == 99
    )  # WinZip AES

    assert _run(**kw, resubmit=True).is_completed()
    assert cloudgene.submissions == 2
    names = sorted(j.name for j in cloudgene.jobs.values())
    assert names[0] + "-r1" == names[1]


def test_server_failed_job_surfaces_server_text(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path
):
    block = save_block(cloudgene, imp_token)
    state = _run(
        inputs=[str(imp_cohort.study["20"])],
        service=block,
        refpanel="apps@hapmap-2",
        population="xyz",
        out_dir=str(tmp_path / "o"),
    )
    assert state.is_failed()
    assert "Population 'xyz' is not supported by reference panel 'hapmap-2'" in state.message
    (job,) = cloudgene.jobs.values()
    failed = [
        e
        for e in _events(job.id, {"genoflows.imputation.failed"})
        if e.event == "genoflows.imputation.failed"
    ]
    assert failed and "Population 'xyz'" in failed[0].payload["message"]
    assert cloudgene.submissions == 1  # a failed job is not retried by resubmitting


def test_unknown_refpanel_fails_without_steps(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path
):
    block = save_block(cloudgene, imp_token)
    state = _run(
        inputs=[str(imp_cohort.study["20"])],
        service=block,
        refpanel="apps@no-such-panel",
        out_dir=str(tmp_path / "o"),
    )
    assert state.is_failed() and "admin log" in state.message and cloudgene.submissions == 1


def test_bad_token_is_permanent_and_never_printed(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path, caplog
):
    wrong = imp_token[::-1]
    block = save_block(cloudgene, wrong)
    state = _run(
        inputs=[str(imp_cohort.study["20"])],
        service=block,
        refpanel="apps@hapmap-2",
        out_dir=str(tmp_path / "o"),
    )
    assert state.is_failed() and "401" in state.message and "token" in state.message
    assert cloudgene.submissions == 0
    assert_no_token(wrong, tmp_path / "o", texts=(caplog.text, state.message))


def test_concurrent_job_limit_waits_for_a_slot(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path, monkeypatch
):
    from genoflows.settings import get_settings

    monkeypatch.setenv(
        "GENOFLOWS_RETRY_ATTEMPTS", "40"
    )  # up to ~8 s of 0.2-s waits: longer than the other job
    get_settings.cache_clear()
    block = save_block(cloudgene, imp_token)
    cloudgene.max_active_jobs = 1
    from genoflows.imputation.cloudgene import CloudgeneClient

    with CloudgeneClient(
        cloudgene.base_url, imp_token, "imputationserver2"
    ) as c:  # another job of the same user
        c.submit([imp_cohort.study["21"]], {"refpanel": "hapmap-2"}, "other-job")
    state = _run(
        inputs=[str(imp_cohort.study["20"])],
        service=block,
        refpanel="apps@hapmap-2",
        out_dir=str(tmp_path / "o"),
    )
    assert state.is_completed(), state.message
    assert cloudgene.submissions == 2


def test_two_flow_runs_share_the_account_limit(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path
):
    """Two flow runs at once on one account with max_concurrent_jobs=1: the server (which would take 2) never
    sees more than one active job of this token, and both runs finish."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.client.orchestration import get_client

    block = save_block(cloudgene, imp_token, max_concurrent_jobs=1)
    assert cloudgene.max_active_jobs == 2
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(
                _run,
                inputs=[str(imp_cohort.study[c])],
                service=block,
                refpanel="apps@hapmap-2",
                out_dir=str(tmp_path / "o"),
            )
            for c in ("20", "21")
        ]
        states = [f.result() for f in futures]
    assert all(s.is_completed() for s in states), [s.message for s in states]
    assert cloudgene.submissions == 2 and cloudgene.max_simultaneous_jobs("lab") == 1
    with get_client(sync_client=True) as c:
        gcl = c.read_global_concurrency_limit_by_name(f"imputation-account-{block}")
    assert gcl.limit == 1 and gcl.active_slots == 0


def test_download_limit_exhausted_says_so(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path
):
    block = save_block(cloudgene, imp_token)
    cloudgene.max_downloads = 2
    cloudgene.inject("truncate", r"chr_20\.zip", times=5)
    state = _run(
        inputs=[str(imp_cohort.study["20"])],
        service=block,
        refpanel="apps@hapmap-2",
        out_dir=str(tmp_path / "o"),
    )
    assert state.is_failed()
    assert "no downloads left" in state.message
    assert cloudgene.download_gets["chr_20.zip"] == 2  # never a GET the server would refuse


def test_retired_results(prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path):
    block = save_block(cloudgene, imp_token)
    kw = dict(
        inputs=[str(imp_cohort.study["20"])],
        service=block,
        refpanel="apps@hapmap-2",
        out_dir=str(tmp_path / "o"),
    )
    done = dict(kw, inputs=[str(imp_cohort.study["21"])])
    assert _run(**done).is_completed()  # a job fully downloaded ...
    for job in cloudgene.jobs.values():
        cloudgene.retire(job.id)  # ... whose results the server has since deleted
    gets, statuses = dict(cloudgene.download_gets), cloudgene.status_requests
    state = _run(**done)
    assert state.is_completed(), state.message  # needs the server no more
    assert cloudgene.download_gets == gets and cloudgene.status_requests == statuses
    cloudgene.inject("drop", r"/share/results/", times=50)  # the download never gets through ...
    state = _run(**kw)
    assert state.is_failed()
    cloudgene.faults.clear()
    for job in cloudgene.jobs.values():
        cloudgene.retire(job.id)  # ... and 7 days later the results are gone
    state = _run(**kw)
    assert state.is_failed() and "retired" in state.message and cloudgene.submissions == 2


def test_zip_entry_escaping_the_output_dir_is_refused(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path
):
    block = save_block(cloudgene, imp_token)
    cloudgene.evil_zip = True  # the result zip carries ../../escaped.txt
    out = tmp_path / "deep" / "out"
    state = _run(
        inputs=[str(imp_cohort.study["20"])], service=block, refpanel="apps@hapmap-2", out_dir=str(out)
    )
    assert state.is_failed() and "outside" in state.message and "refusing" in state.message
    assert not list(tmp_path.rglob("escaped.txt")) and not list(out.rglob("chr20.dose.vcf.gz"))
    assert cloudgene.download_gets["chr_20.zip"] == 1  # a permanent problem: not downloaded again
