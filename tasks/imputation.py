"""Prefect tasks of the imputation flow: thin wrappers over genoflows.imputation (retries come from the one
policy, `transient_retry_options`, applied by the flow; permanent errors fail at once)."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from blocks.imputation_server import ImputationServer
from genoflows.imputation import local, outputs, remote, validate
from genoflows.imputation.cloudgene import CloudgeneClient, failure_text
from genoflows.imputation.polling import Clock, PollSchedule
from genoflows.imputation.record import JobRecord, load_record, save_record
from genoflows.imputation.states import Phase
from genoflows.settings import get_settings
from tasks.runtime import run_logger

EVENT_PREFIX = "genoflows.imputation"
PASSWORD_ALPHABET = (
    string.ascii_letters + string.digits + "!@#%*()_+-="
)  # survives the servers' HTML escaping


def client_for(server: ImputationServer) -> CloudgeneClient:
    return CloudgeneClient(
        server.base_url, server.token, server.app_id, timeout=get_settings().http_timeout_seconds
    )


def poll_schedule() -> PollSchedule:
    s = get_settings()
    return PollSchedule(
        initial=s.imputation_poll_initial_seconds,
        factor=s.imputation_poll_factor,
        cap=s.imputation_poll_cap_seconds,
        queued_cap=s.imputation_poll_queued_cap_seconds,
    )


def emit_state(state: str, record: JobRecord, server: str, **payload) -> None:
    """`genoflows.imputation.<state>` with server, job id and flow run, for automations and the UI."""
    from prefect.runtime import flow_run

    emit_event(
        event=f"{EVENT_PREFIX}.{state}",
        resource={
            "prefect.resource.id": f"{EVENT_PREFIX}.job.{record.job_id or record.job_name}",
            "prefect.resource.name": record.job_name,
            "genoflows.imputation.server": server,
        },
        payload={
            "server": server,
            "service": record.service,
            "job_id": record.job_id,
            "job_name": record.job_name,
            "flow_run_id": str(flow_run.id or ""),
            **payload,
        },
    )


def status_history_artifact(record: JobRecord) -> None:
    rows = [{"state": h["state"], "at": h["at"], "detail": h.get("detail", "")} for h in record.history]
    create_table_artifact(
        key=f"imputation-status-{record.job_name.lower()}",
        table=rows or [{"state": "none", "at": "", "detail": ""}],
        description=f"Status history of imputation job {record.job_id or record.job_name} ({record.service})",
    )


@task(persist_result=False, cache_policy=NO_CACHE)  # the password never goes to result storage
def results_password(secret_name: str) -> str:
    """The results password from a Secret block, generated (24 characters) and saved when absent."""
    from prefect.blocks.system import Secret

    try:
        return Secret.load(secret_name).get()
    except ValueError:
        value = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(24))
        try:
            Secret(value=value).save(secret_name)  # never overwrite: another run may already use its password
        except ValueError:  # another flow run saved one first: use that one
            return Secret.load(secret_name).get()
        run_logger().info("generated a results password and saved it as Secret block %r", secret_name)
        return value


@task(task_run_name="stage {uri}")
def stage_input(uri: str, work_dir: Path, aws_credentials=None) -> Path:
    """A local path is used in place; s3:// and https:// inputs are fetched (with their index when published)."""
    from genoflows.fetch import FetchError, fetch, s3_client

    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    client = s3_client(get_settings().s3_endpoint_url, aws_credentials) if uri.startswith("s3://") else None
    dest = Path(work_dir) / "inputs" / name
    fetch(uri, dest, s3_client=client)
    for ext in (".tbi", ".csi"):
        try:
            fetch(uri + ext, Path(str(dest) + ext), s3_client=client)
            break
        except FetchError:
            continue
    return dest


@task
def prepare_inputs(
    paths: list[Path], build: str, for_server: bool, reference_fasta: str | None, split_dir: Path
) -> list[validate.VcfSummary]:
    """Split multi-chromosome files, then validate every per-chromosome file; one file per chromosome overall."""
    per_chrom = [p for path in paths for p in validate.split_by_chromosome(Path(path), split_dir)]
    fasta = Path(reference_fasta) if reference_fasta else None
    summaries = [
        validate.validate_vcf(p, build=build, for_server=for_server, reference_fasta=fasta) for p in per_chrom
    ]
    seen: dict[str, Path] = {}
    for s in summaries:
        if s.chrom in seen:
            raise validate.InputValidationError(
                f"chromosome {s.chrom} is in both {seen[s.chrom].name} and {s.path.name}; give each chromosome once"
            )
        seen[s.chrom] = s.path
    return summaries


@task
def submit_job(
    server: ImputationServer, record_dir: Path, files: list[Path], params: dict[str, str], resubmit: bool
) -> JobRecord:
    record = load_record(record_dir)
    with client_for(server) as client:
        from prefect.runtime import flow_run

        result = remote.ensure_submitted(
            client, record, record_dir, files, params, resubmit=resubmit, run_id=str(flow_run.id or "")
        )
    logger = run_logger()
    if result.submitted_now:
        logger.info("submitted job %s (%s) to %s", result.record.job_id, result.record.job_name, client.host)
        emit_state("submitted", result.record, client.host)
    else:
        logger.info(
            "resuming job %s (%s) on %s: not submitted again",
            result.record.job_id,
            result.record.job_name,
            client.host,
        )
    return result.record


@task
def wait_for_job(server: ImputationServer, record_dir: Path) -> dict:
    record = load_record(record_dir)
    logger = run_logger()
    with client_for(server) as client:

        def changed(name: str, phase: Phase, job: dict) -> None:
            extra = {"state_code": job.get("state"), "position_in_queue": job.get("positionInQueue")}
            if phase in (Phase.FAILED, Phase.CANCELED):
                extra["message"] = failure_text(job)
            logger.info("job %s is %s (state %s)", record.job_id, name, job.get("state"))
            emit_state(name, record, client.host, **extra)

        try:
            return remote.wait_for_job(
                client, record, record_dir, schedule=poll_schedule(), clock=Clock(), on_change=changed
            )
        finally:
            status_history_artifact(load_record(record_dir))


@task
def download_results(server: ImputationServer, record_dir: Path, job: dict, password: str) -> list[Path]:
    record = load_record(record_dir)
    with client_for(server) as client:
        job = client.status(record.job_id)  # fresh listing: downloads left change with every GET
        remote.raise_unless_success(client, record, job)
        return remote.download_results(
            client, job, record, record_dir, record_dir / "downloads", password, log=run_logger().info
        )


@task
def unpack_results(downloaded: list[Path], job_dir: Path, password: str, aes: bool) -> list[Path]:
    zips = [p for p in downloaded if p.suffix == ".zip"]
    return remote.unpack_and_verify(zips, job_dir, password, aes=aes) + [
        p for p in downloaded if p.suffix != ".zip"
    ]


@task
def publish_outputs(job_dir: Path, files: list[Path], out_dir: str, meta: dict, aws_credentials=None) -> str:
    """Write the manifest; with an s3:// out_dir upload the verified files first and list their URIs."""
    files = [f for f in files if f.exists()]
    if outputs.is_s3(out_dir):
        from genoflows.fetch import s3_client

        prefix = f"{out_dir.rstrip('/')}/{job_dir.name}"
        s3 = s3_client(get_settings().s3_endpoint_url, aws_credentials)
        uris = outputs.upload_files(job_dir, files, prefix, s3)
        manifest = outputs.write_manifest(job_dir, files, meta, uris)
        outputs.upload_files(job_dir, [manifest, job_dir / "imputation-job.json"], prefix, s3)
        return f"{prefix}/{outputs.MANIFEST}"
    return str(outputs.write_manifest(job_dir, files, meta))


@task
def compress_panel(panel: Path) -> Path:
    return local.compressed_panel(Path(panel), get_settings().cache_dir, log=run_logger().info)


@task(task_run_name="minimac4 chr{chrom}")
def impute_chromosome(
    target: Path, panel: Path, msav: Path, chrom: str, job_dir: Path, r2_filter: float, phased: bool
) -> list[Path]:
    """Impute one chromosome locally (pre-phasing with shapeit4 first when the input is unphased)."""
    n = validate.chromosome_number(chrom)
    done = [job_dir / f"chr{n}.dose.vcf.gz", job_dir / f"chr{n}.dose.vcf.gz.tbi", job_dir / f"chr{n}.info.gz"]
    if all(p.exists() for p in done):
        remote.verify_vcf(done[0])
        run_logger().info("chr%s already imputed in %s; kept", n, job_dir)
        return done
    log = run_logger().info
    if not phased:
        work = job_dir / ".phasing"
        work.mkdir(parents=True, exist_ok=True)
        target = local.prephase(Path(target), Path(panel), chrom, work, log=log)
    return local.impute_chromosome(Path(target), Path(msav), chrom, job_dir, r2_filter=r2_filter, log=log)


@task
def cancel_remote(server: ImputationServer, job_id: str) -> str:
    with client_for(server) as client:
        job = client.cancel(job_id)
    return client.phase(job)[0]


# --- the account's concurrent-job limit as a Prefect global concurrency limit (issue 12, "Shared limits") ------
ACCOUNT_LIMIT_PREFIX = "imputation-account-"
SLOT_LEASE_SECONDS = (
    60.0  # the shortest lease Prefect grants; renewed in the background while the job is active
)


def account_limit_name(block_name: str) -> str:
    return f"{ACCOUNT_LIMIT_PREFIX}{block_name}"


def ensure_account_limit(name: str, limit: int) -> None:
    """Create the global concurrency limit, or set it to the block's `max_concurrent_jobs` when it differs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
                return
            except ObjectAlreadyExists:  # another flow run created it first
                current = client.read_global_concurrency_limit_by_name(name)
        if current.limit != limit or not current.active:
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
            )


def release_account_slot(record_dir: Path) -> None:
    """A run killed while its job was active left its slot leased (the ephemeral API never expires leases, a
    server only after the lease runs out). The rerun resumes that very job, so it releases the old lease first
    and takes a slot of its own: one job, one slot."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    record = load_record(record_dir)
    if record is None or not record.slot_lease:
        return
    log = run_logger()
    with get_client(sync_client=True) as client:
        try:
            client.release_concurrency_slots_with_lease(UUID(record.slot_lease))
            log.info("released the account slot held for %s", record.job_name)
        except ObjectNotFound:
            pass  # expired and revoked meanwhile
    record.slot_lease = None
    save_record(record_dir, record)


def _current_lease_id() -> str | None:
    """The lease `concurrency()` just took (Prefect records it in the run's ConcurrencyContext for cleanup)."""
    from prefect.concurrency.context import ConcurrencyContext

    ctx = ConcurrencyContext.get()
    return str(ctx.cleanup_lease_ids[-1]) if ctx is not None and ctx.cleanup_lease_ids else None


@contextmanager
def account_slot(block_name: str, max_jobs: int | None, record_dir: Path) -> Iterator[None]:
    """Hold one slot of `imputation-account-<block name>` while this run's remote job is active (submit to
    downloaded), so flow runs together never have more jobs on the account than it allows. The lease id is
    kept in the job record so a rerun after a crash can hand the slot over (see release_account_slot)."""
    if not max_jobs:
        yield
        return
    from prefect.concurrency.sync import concurrency

    name = account_limit_name(block_name)
    ensure_account_limit(name, max_jobs)
    release_account_slot(record_dir)
    logger = run_logger()
    logger.info("waiting for a slot of %s (%d concurrent jobs per account)", name, max_jobs)
    with concurrency(
        name, occupy=1, lease_duration=SLOT_LEASE_SECONDS, strict=True, raise_on_lease_renewal_failure=False
    ):
        record = load_record(record_dir)
        record.slot_lease = _current_lease_id()
        save_record(record_dir, record)
        logger.info("holding a slot of %s", name)
        try:
            yield
        finally:
            record = load_record(record_dir)
            record.slot_lease = None
            save_record(record_dir, record)


def write_active(staging: Path, flow_run_id: str, record_dir: Path) -> None:
    """Remember which job this flow run drives, for the cancellation hook."""
    d = staging / ".active"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{flow_run_id}.json").write_text(json.dumps({"record_dir": str(record_dir)}))


def read_active(staging: Path, flow_run_id: str) -> JobRecord | None:
    p = staging / ".active" / f"{flow_run_id}.json"
    if not p.exists():
        return None
    return load_record(Path(json.loads(p.read_text())["record_dir"]))


__all__ = ["save_record"]


@task
def accuracy_table(dose_vcfs: dict[str, Path], truth_vcfs: dict[str, Path]) -> list[dict]:
    """r² of dosages vs true genotypes by MAF bin (and minimac4's Rsq beside it), as a table artifact."""
    import pandas as pd

    from genoflows.imputation.accuracy import by_maf_bin, per_site

    sites = pd.concat([per_site(Path(dose_vcfs[c]), Path(truth_vcfs[c])) for c in dose_vcfs])
    table = by_maf_bin(sites)
    common = sites[(~sites["typed"]) & sites["r2"].notna() & (sites["maf"] > 0.05)]
    rows = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        for r in table.to_dict("records")
    ]
    rows.append(
        {
            "maf_bin": ">5% (common)",
            "sites": len(common),
            "mean_r2": round(float(common["r2"].mean()), 4),
            "mean_rsq": round(float(common["rsq"].mean()), 4),
            "rsq_vs_r2_corr": None,
        }
    )
    create_table_artifact(
        key="imputation-accuracy",
        table=rows,
        description="Imputation r² vs true genotypes by minor-allele-frequency bin (untyped sites)",
    )
    return rows


# --- GA4GH WES route: one workflow run per chromosome, tagged with the job name (the submit-once key) ---------
def wes_client(server: ImputationServer):
    from genoflows.imputation.wes import WesClient

    return WesClient(server.base_url, server.token, timeout=get_settings().http_timeout_seconds)


def _wes_input(path_or_uri: str, attachments: dict, secondary: tuple[str, ...] = ()) -> dict:
    """A CWL File for a WES run: s3:// and http(s):// pass as URLs the service fetches; a local file is sent as
    a `workflow_attachment` (with its index) and named relative to the run's attachment directory, because a
    remote service cannot read this machine's paths."""
    if "://" in path_or_uri:
        return {"class": "File", "location": path_or_uri}
    path = Path(path_or_uri)
    name = f"inputs/{path.name}"
    attachments[name] = path
    for ext in secondary:
        attachments[name + ext] = Path(str(path) + ext)
    return {"class": "File", "location": name}


@task
def submit_wes_runs(
    server: ImputationServer,
    record_dir: Path,
    summaries: list[validate.VcfSummary],
    refpanel: str,
    resubmit: bool,
    remote_uris: dict[str, str] | None = None,
) -> JobRecord:
    """Submit each chromosome not yet recorded, after looking for a run already tagged with its name.

    `remote_uris`: local staged copy -> the s3:// or https:// URI it came from; such inputs (validated here)
    are given to the service as URLs instead of being uploaded again."""
    from genoflows.imputation import wes

    record = load_record(record_dir)
    if resubmit and record.runs:
        record.attempt += 1
        record.runs, record.job_id = {}, None
        save_record(record_dir, record)
    logger = run_logger()
    with wes_client(server) as client:
        for s in summaries:
            n = validate.chromosome_number(s.chrom)
            if n in record.runs:
                continue
            tag = f"{record.job_name}-a{record.attempt}-chr{n}"
            run_id = client.find_run(tag)
            if run_id is None:
                panel = refpanel.replace("{chrom}", n)
                if "://" not in panel and not panel.endswith(".msav"):
                    panel = str(local.compressed_panel(Path(panel), get_settings().cache_dir))
                workflow_url = server.app_id if server.app_id.endswith(".cwl") else wes.WORKFLOW_FILE
                attachments: dict = (
                    {wes.WORKFLOW_FILE: wes.MINIMAC4_CWL} if workflow_url == wes.WORKFLOW_FILE else {}
                )
                params = {
                    "reference": _wes_input(panel, attachments),
                    "target": _wes_input(
                        (remote_uris or {}).get(str(s.path), str(s.path)), attachments, secondary=(".tbi",)
                    ),
                    "chrom": n,
                }
                run_id = client.submit(
                    workflow_url,
                    params,
                    attachments=attachments,
                    tags={wes.TAG: tag},
                    workflow_type=server.workflow_type,
                    workflow_type_version=server.workflow_type_version,
                )
                logger.info("submitted WES run %s for chr%s to %s", run_id, n, client.host)
            else:
                logger.info("found WES run %s for chr%s on %s: not submitted again", run_id, n, client.host)
            record.runs[n] = run_id
            record.job_id = ",".join(record.runs.values())
            record.note_state("submitted", f"chr{n}: {run_id}")
            save_record(record_dir, record)
    return record


@task
def wait_wes_runs(server: ImputationServer, record_dir: Path) -> None:
    from genoflows.imputation.errors import ServerJobFailed
    from genoflows.imputation.polling import wait_until_terminal

    record = load_record(record_dir)
    with wes_client(server) as client:
        for n, run_id in sorted(record.runs.items()):

            def changed(name: str, phase: Phase, n: str = n, run_id: str = run_id) -> None:
                record.note_state(name, f"chr{n}: {run_id}")
                save_record(record_dir, record)
                emit_state(name, record, client.host, run_id=run_id, chromosome=n)

            name, phase = wait_until_terminal(
                lambda run_id=run_id: client.status(run_id), schedule=poll_schedule(), on_change=changed
            )
            if phase is not Phase.SUCCESS:
                log = client.run_log(run_id).get("run_log") or {}
                raise ServerJobFailed(
                    f"WES run {run_id} (chr{n}) on {client.host} ended {name}: "
                    f"exit code {log.get('exit_code')}; stderr: {str(log.get('stderr'))[-500:]}"
                )
    status_history_artifact(load_record(record_dir))


@task
def collect_wes_outputs(server: ImputationServer, record_dir: Path) -> list[Path]:
    """Fetch each run's dose VCF and info file into the server layout, verify and index the VCFs."""
    record = load_record(record_dir)
    files = []
    with wes_client(server) as client:
        for n, run_id in sorted(record.runs.items()):
            outputs_ = client.run_log(run_id).get("outputs") or {}
            for key, name in (("dose", f"chr{n}.dose.vcf.gz"), ("info", f"chr{n}.info.gz")):
                if key not in outputs_:
                    raise remote.CorruptDownload(f"WES run {run_id} lists no '{key}' output")
                dest = client.fetch_output(outputs_[key], record_dir / name)
                files.append(dest)
                if key == "dose":
                    files.append(remote.verify_vcf(dest))
    return files


@task
def cancel_wes_run(server: ImputationServer, run_id: str) -> str:
    with wes_client(server) as client:
        client.cancel(run_id)
        return client.status(run_id)[0]
