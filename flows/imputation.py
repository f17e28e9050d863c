"""impute: genotype VCFs -> validated per chromosome -> a Cloudgene server, a GA4GH WES service or local
minimac4 -> verified, indexed dose VCFs in `<out_dir>/<job name>/` with an `imputation.json` manifest.

    from flows.imputation import impute
    impute(inputs=["s3://lab/array/chip.vcf.gz"], service="mis2", refpanel="apps@1000g-phase-3-v5",
           build="hg19", population="eur", out_dir="s3://lab/imputed")

Submit once: the submission key (inputs' sha256, parameters, server) names the remote job and is recorded in
out_dir before the submit call; a rerun resumes the same job. Cancelling the run cancels the remote job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_aws import AwsCredentials

from blocks.aws_batch import AwsBatch, batch_for
from blocks.imputation_server import ImputationServer
from genoflows.fetch import PermanentFetchError
from genoflows.imputation import outputs, remote
from genoflows.imputation.errors import InputValidationError, PermanentImputationError
from genoflows.imputation.record import JobRecord, job_name_for, load_record, save_record, submission_key
from genoflows.imputation.validate import chromosome_number
from genoflows.settings import get_settings
from tasks import imputation as t
from tasks.runtime import transient_retry_options

SERVER_R2_FILTERS = {0.0, 0.001, 0.1, 0.2, 0.3}


def _load_server(name: str) -> ImputationServer:
    try:
        return ImputationServer.load(name)
    except ValueError:
        raise InputValidationError(
            f"service={name!r}: no imputation-server block with that name; save one (see docs/imputation.md) "
            f"or use service='local'"
        ) from None


def _on_cancellation(flow, flow_run, state) -> None:
    """Cancelling the Prefect run cancels the remote job it drives (best effort, logged)."""
    params = flow_run.parameters
    if params.get("service", "local") == "local":
        return
    staging = outputs.staging_dir(params.get("out_dir", "imputation-output"), get_settings().data_dir)
    record = t.read_active(staging, str(flow_run.id))
    if record is None or not record.job_id:
        return
    server = ImputationServer.load(params["service"])
    if server.kind == "wes":
        for run_id in record.runs.values():
            state_name = t.cancel_wes_run.fn(server, run_id)
    else:
        state_name = t.cancel_remote.fn(server, record.job_id)
    record.note_state(state_name, "cancelled with the Prefect flow run")
    save_record(staging / record.job_name, record)
    t.release_account_slot(staging / record.job_name)  # the job is no longer active on the account
    t.emit_state("canceled", record, server.base_url, reason="flow run cancelled")


def _on_failure(flow, flow_run, state) -> None:
    """A failed run emits `genoflows.imputation.failed` with its message (automations notify on it)."""
    params = flow_run.parameters
    staging = outputs.staging_dir(params.get("out_dir", "imputation-output"), get_settings().data_dir)
    record = t.read_active(staging, str(flow_run.id))
    if record is None:
        record = JobRecord(
            key="",
            job_name="not-submitted",
            service=params.get("service", "?"),
            server="",
            params={},
            inputs={},
        )
    t.emit_state("failed", record, record.server, message=(state.message or "")[:2000])


@flow(
    name="impute",
    flow_run_name="impute-{service}",
    task_runner=ThreadPoolTaskRunner(max_workers=4),
    on_cancellation=[_on_cancellation],
    on_failure=[_on_failure],
    validate_parameters=True,
)
def impute(
    inputs: list[str],
    service: str = "local",
    refpanel: str = "apps@1000g-phase-3-v5",
    build: Literal["hg19", "hg38"] = "hg19",
    phasing: Literal["eagle", "beagle", "no_phasing"] = "eagle",
    population: str = "off",
    r2_filter: float = 0.0,
    mode: Literal["imputation", "qconly"] = "imputation",
    password_secret: str = "genoflows-imputation-password",
    out_dir: str = "imputation-output",
    resubmit: bool = False,
    aes_encryption: bool = False,
    reference_fasta: str | None = None,
    batch: AwsBatch | None = None,
    aws_credentials: AwsCredentials | None = None,
) -> str:
    """Impute genotype VCFs on a server, a WES service or this machine; returns the manifest's path or URI.

    Args:
        inputs: Input VCF URIs (s3://, https:// or local paths), bgzipped and indexed: one per chromosome,
            or one multi-chromosome file that is split per chromosome.
        service: Name of a saved imputation-server block (Cloudgene or WES), or `local` for minimac4 here.
        refpanel: Server: the reference panel id (e.g. `apps@1000g-phase-3-v5`, `apps@h3africa-v6hc-s@1.0.0`,
            `apps@topmed-r3`). Local: path of the panel VCF or .msav, with `{chrom}` for per-chromosome files.
        build: Genome build of the inputs: hg19 (chromosomes without `chr`) or hg38 (with `chr`).
        phasing: Server-side phasing: eagle, beagle or no_phasing (inputs must then be phased).
        population: Population for the server's frequency check (e.g. eur, afr, all), or `off`.
        r2_filter: Drop imputed variants with estimated r² below this (servers accept 0, 0.001, 0.1, 0.2, 0.3).
        mode: `imputation`, or `qconly` for the server's quality control only.
        password_secret: Name of the Secret block holding the results password; generated and saved when absent.
        out_dir: Local directory or s3:// prefix; results go to `<out_dir>/<job name>/`.
        resubmit: Submit again even though a job for the same inputs and parameters exists.
        aes_encryption: Ask the server for AES-256 zips instead of ZipCrypto.
        reference_fasta: Optional reference FASTA (indexed): REF alleles are checked against it before submission.
        batch: An AWS Batch block: the tools it lists (e.g. minimac4, shapeit4) run as Batch jobs, one per
            chromosome, their files moving through its S3 staging prefix. Empty: every tool runs here.
        aws_credentials: AWS credentials block for s3:// inputs and an s3:// out_dir (default: the standard
            credential chain).
    """
    with batch_for(batch):  # the tools the block lists (e.g. minimac4) run as AWS Batch jobs
        settings = get_settings()
        staging = outputs.staging_dir(out_dir, settings.data_dir)
        stage = t.stage_input.with_options(
            **transient_retry_options(PermanentImputationError, PermanentFetchError)
        )
        staged = [stage(u, staging, aws_credentials) for u in inputs]
        summaries = t.prepare_inputs(staged, build, service != "local", reference_fasta, staging / ".split")
        params = {
            "refpanel": refpanel,
            "build": build,
            "phasing": phasing,
            "population": population,
            "r2Filter": str(r2_filter if r2_filter else 0),
            "mode": mode,
        }
        if aes_encryption:
            params["aesEncryption"] = "yes"
        server = None if service == "local" else _load_server(service)
        if server is not None and server.kind == "cloudgene" and r2_filter not in SERVER_R2_FILTERS:
            raise InputValidationError(
                f"r2_filter={r2_filter}: Cloudgene servers accept only {sorted(SERVER_R2_FILTERS)}"
            )
        server_id = (
            "local" if server is None else f"{server.kind}:{server.base_url.rstrip('/')}:{server.app_id}"
        )
        checksums = {Path(p).name: remote.sha256_of(Path(p)) for p in staged}
        key = submission_key(checksums, params, server_id)
        job_name = job_name_for(key)
        job_dir = staging / job_name
        record = load_record(job_dir) or JobRecord(
            key=key, job_name=job_name, service=service, server=server_id, params=params, inputs=checksums
        )
        save_record(job_dir, record)
        from prefect.runtime import flow_run

        t.write_active(staging, str(flow_run.id), job_dir)
        if server is None:
            files, meta = _run_local(summaries, refpanel, job_dir, r2_filter, phasing)
        elif server.kind == "cloudgene":
            files, meta = _run_cloudgene(
                server,
                service,
                job_dir,
                [s.path for s in summaries],
                params,
                resubmit,
                password_secret,
                aes_encryption,
            )
        else:
            with t.account_slot(service, server.max_concurrent_jobs, job_dir):
                # An s3:// or https:// input used as given (not split) goes to the service as its URL.
                remote_uris = {str(p): u for p, u in zip(staged, inputs, strict=True) if "://" in u}
                files, meta = _run_wes(server, job_dir, summaries, refpanel, resubmit, remote_uris)
        record = load_record(job_dir)
        manifest = t.publish_outputs(
            job_dir,
            files,
            out_dir,
            {
                "job_name": job_name,
                "service": service,
                "server": server_id,
                "job_id": record.job_id,
                "submission_key": key,
                "parameters": params,
                **meta,
            },
            aws_credentials,
        )
        t.emit_state("success", record, server_id, manifest=manifest)
        return manifest


def _run_cloudgene(
    server, block_name, job_dir, files, params, resubmit, password_secret, aes
) -> tuple[list[Path], dict]:
    retry = transient_retry_options(PermanentImputationError)
    password = t.results_password(password_secret)
    downloaded = None if resubmit else remote.finished_downloads(load_record(job_dir), job_dir / "downloads")
    if downloaded is None:
        # One account slot from submit (or resume) until the results are downloaded.
        with t.account_slot(block_name, server.max_concurrent_jobs, job_dir):
            t.submit_job.with_options(**retry)(
                server, job_dir, files, {**params, "password": password}, resubmit
            )
            job = t.wait_for_job.with_options(**retry)(server, job_dir)
            downloaded = t.download_results.with_options(**retry)(server, job_dir, job, password)
    files = t.unpack_results(downloaded, job_dir, password, aes)
    record = load_record(job_dir)
    return files, {"job_id": record.job_id, "tool_versions": {"server_application": record.application}}


def _run_local(summaries, refpanel, job_dir, r2_filter, phasing) -> tuple[list[Path], dict]:
    from genoflows.imputation.local import panel_for
    from genoflows.toolrun import tool_version

    futures = []
    for s in summaries:
        panel = panel_for(refpanel, s.chrom)
        if not s.phased and phasing == "no_phasing":
            raise InputValidationError(
                f"{s.path.name}: unphased genotypes with phasing='no_phasing'; phase them or choose eagle"
            )
        needs_phasing = not s.phased and phasing != "no_phasing"
        msav = t.compress_panel.submit(panel)  # panels are looked up / compressed in parallel, not one by one
        futures.append(
            t.impute_chromosome.submit(s.path, panel, msav, s.chrom, job_dir, r2_filter, not needs_phasing)
        )
    files = [p for f in futures for p in f.result()]
    versions = {"minimac4": tool_version("minimac4")}
    if any(not s.phased for s in summaries):
        versions["shapeit4"] = tool_version("shapeit4")
    return files, {"tool_versions": versions, "chromosomes": [chromosome_number(s.chrom) for s in summaries]}


def _run_wes(server, job_dir, summaries, refpanel, resubmit, remote_uris) -> tuple[list[Path], dict]:
    retry = transient_retry_options(PermanentImputationError)
    record = t.submit_wes_runs.with_options(**retry)(
        server, job_dir, summaries, refpanel, resubmit, remote_uris
    )
    t.wait_wes_runs.with_options(**retry)(server, job_dir)
    files = t.collect_wes_outputs.with_options(**retry)(server, job_dir)
    return files, {"job_id": record.job_id, "tool_versions": {"wes_runs": record.runs}}


@flow(name="cancel_imputation")
def cancel_imputation(service: str, job_id: str) -> str:
    """Cancel a remote imputation job by its id.

    Args:
        service: Name of the imputation-server block the job was submitted to.
        job_id: The server's job id (e.g. job-20251007-100803-710) or WES run id.
    """
    server = ImputationServer.load(service)
    if server.kind == "wes":
        return t.cancel_wes_run(server, job_id)
    return t.cancel_remote(server, job_id)


@flow(name="imputation_accuracy")
def imputation_accuracy(
    job_dir: str, truth_vcfs: dict[str, str], aws_credentials: AwsCredentials | None = None
) -> list[dict]:
    """Imputation r² against known genotypes, by allele-frequency bin (a table artifact).

    Args:
        job_dir: A finished imputation's directory or s3:// prefix (holding chr<N>.dose.vcf.gz).
        truth_vcfs: Chromosome number -> VCF (path, s3:// or https://) of the true genotypes of the same samples.
        aws_credentials: AWS credentials block for s3:// locations (default: the standard credential chain).
    """
    work = Path(get_settings().data_dir) / "imputation-accuracy"
    stage = t.stage_input.with_options(**transient_retry_options(PermanentImputationError, PermanentFetchError))
    doses, truths = {}, {}
    for c, truth in truth_vcfs.items():  # remote files are fetched and verified; local ones are read in place
        dose = f"{job_dir.rstrip('/')}/chr{chromosome_number(c)}.dose.vcf.gz"
        doses[c] = stage(dose, work / "dose", aws_credentials)
        truths[c] = stage(truth, work / f"truth-{chromosome_number(c)}", aws_credentials)
    return t.accuracy_table(doses, truths)
