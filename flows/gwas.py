"""GWAS with regenie from a manifest: inputs checked -> step 1 once -> step 2 per chromosome in parallel ->
merged results per trait -> report (top hits, λGC, Manhattan, QQ) -> published to out_dir.

    manifest (URI | dict) ─ read ─ stage & check every input ─ engine (regenie | genoflows-regenie)
        └─ step 1 (whole genome, once; or the given predictions for startStep 2)
              └─ step 2 × chromosome / --range chunk (own task runs, retried, skipped when done)
                    └─ merge per trait ─ report ─ publish to <out_dir>/<experimentId>/<run-id>/

`watch_manifests` lists new `manifest.json` / `*.manifest.json` objects under a prefix and starts exactly one
`gwas` deployment run per manifest version: the flow-run idempotency key is `bucket/key@ETag`, so two
overlapping watcher runs (or a watcher and an event trigger) get the same run back from the Prefect server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, runtime
from prefect.futures import wait
from prefect_aws import AwsCredentials
from pydantic import Field

from blocks.aws_batch import AwsBatch
from blocks.tool_images import ToolImages
from genoflows.fetch import PermanentFetchError
from genoflows.gwas import storage
from genoflows.gwas.inputs import InputError
from genoflows.gwas.manifest import ManifestError
from genoflows.gwas.merge import require_rows
from genoflows.gwas.plan import plan_units
from genoflows.toolrun import ToolError
from tasks.gwas import (
    ManifestChanged,
    RunLayout,
    create_report_artifacts,
    merge_trait,
    pick_engine,
    publish,
    read_manifest,
    report_trait,
    stage,
    step1,
    step2,
    write_run_record,
)
from tasks.runners import fan_out_runner
from tasks.runtime import run_logger, transient_retry_options
from tasks.tooling import where_tools_run

Engine = Literal["auto", "regenie", "builtin"]


class ChromosomesFailed(RuntimeError):
    """Step 2 failed for some chromosomes after its retries; a rerun of the flow run redoes only those."""


@flow(name="gwas", log_prints=True)
def gwas(
    manifest: Annotated[str | dict, Field(description="Manifest URI (s3://… or a path) or the manifest itself.")],
    engine: Engine = "auto",
    out_dir: str = "gwas-results",
    run_id: Annotated[str | None, Field(description="Reuse a run folder (resume); default: this flow run's id.")] = None,
    max_parallel: Annotated[int, Field(ge=1, le=256, description="Step-2 jobs at once.")] = 4,
    chunk_variants: Annotated[int, Field(ge=1, description="Split chromosomes above this many variants.")] = 2_000_000,
    manifest_etag: Annotated[str | None, Field(description="Run only this manifest version (set by the watcher).")] = None,
    aws_credentials: AwsCredentials | None = None,
    tool_images: Annotated[ToolImages | None, Field(description="Container images per tool, e.g. regenie's.")] = None,
    batch: Annotated[AwsBatch | None, Field(description="Run the block's tools (e.g. genoflows-regenie or regenie) "
                                                        "as AWS Batch jobs.")] = None,
) -> str:
    """Run a GWAS from a manifest; returns where the results are.

    `batch` and `tool_images` apply to every tool call of the run: in the flow's context here, and passed to each
    step-2 task explicitly, because a Dask/Ray worker process does not see the flow's context."""
    log = run_logger()
    with where_tools_run(batch, tool_images):
        m, source = read_manifest.with_options(**transient_retry_options(ManifestError, ManifestChanged))(
            manifest, manifest_etag, aws_credentials)
        layout = RunLayout.for_run(out_dir, m.experiment_id, run_id or str(runtime.flow_run.id))
        log.info("experiment %s from %s -> %s", m.experiment_id, source, layout.uri)
        staged = stage.with_options(**transient_retry_options(InputError, PermanentFetchError, ToolError))(
            m, layout, aws_credentials)
        eng = pick_engine(engine)
        pred = staged.pred_list or step1(eng, staged.regenie, layout, aws_credentials)
        units, notes = plan_units(staged.chromosomes, staged.codes, chunk_variants)
        for note in notes:
            log.warning(note)

        with fan_out_runner(max_parallel) as runner:  # threads by default; Dask/Ray by GENOFLOWS_TASK_RUNNER
            futures = [runner.submit(step2, parameters={"engine": eng, "inp": staged.regenie, "pred": Path(pred),
                                                        "unit": u, "layout": layout,
                                                        "aws_credentials": aws_credentials, "batch": batch,
                                                        "tool_images": tool_images}) for u in units]
            wait(futures)
        status = _status_rows(units, futures, staged.empty_chromosomes, eng)
        failed = sorted({r["chromosome"] for r in status if r["status"] == "failed"})
        if failed:
            create_report_artifacts(m.experiment_id, [], status, layout, aws_credentials)
            reasons = "; ".join(f"{r['chromosome']}: {r['message']}" for r in status if r["status"] == "failed")
            raise ChromosomesFailed(
                f"step 2 failed for chromosome(s) {', '.join(failed)} after retries ({reasons[:1500]}). "
                f"Retry this flow run (or rerun with run_id={layout.uri.rsplit('/', 1)[-1]!r}) to redo only these."
            )

        reports = []
        for trait in staged.regenie.pheno_columns:
            merged, rows = merge_trait(trait, units, layout, staged.names)
            require_rows(trait, rows)
            reports.append(report_trait(trait, merged, layout, eng, m.experiment_id))
        write_run_record(layout, {
            "experimentId": m.experiment_id, "manifest": source, "manifest_etag": manifest_etag,
            "engine": eng.kind, "engine_binary": eng.binary, "engine_version": eng.version, "engine_image": eng.image,
            "start_step": m.start_step, "chromosomes": status,
            "traits": [{k: v for k, v in r.items() if k not in ("manhattan", "qq")} for r in reports],
        })
        uri = publish(layout, aws_credentials)
        create_report_artifacts(m.experiment_id, reports, status, layout, aws_credentials)
        for r in reports:
            log.info("%s: λGC %.3f, %d loci, results %s", r["trait"], r["lambda_gc"], r["loci"],
                     storage.join(uri, f"{r['trait']}.regenie.gz"))
        return uri


def _status_rows(units, futures, empty: list[str], eng) -> list[dict]:
    """The old JobStatus table: one row per chromosome (chunks folded in)."""
    rows: dict[str, dict] = {}
    for unit, fut in zip(units, futures, strict=True):
        row = rows.setdefault(unit.chrom, {"chromosome": unit.chrom, "status": "done", "variants": 0, "parts": 0,
                                           "reused": 0, "engine": f"{eng.binary} {eng.version}", "message": ""})
        row["variants"] += unit.n_variants
        row["parts"] += 1
        state = fut.state
        if state.is_completed():
            row["reused"] += bool(fut.result().get("skipped"))
        else:
            row["status"] = "failed"
            try:
                state.result()
            except ToolError as exc:  # the tool's own last words (regenie's ERROR: line), not its argv
                last = next((line.strip() for line in reversed(exc.tail) if line.strip()), "no output")
                row["message"] = f"{exc.tool} exited {exc.returncode}: {last}"[:300]
            except BaseException as exc:  # noqa: BLE001 - the message goes into the status table
                row["message"] = str(exc).splitlines()[0][:300]
    for c in empty:
        rows[c] = {"chromosome": c, "status": "skipped", "variants": 0, "parts": 0, "reused": 0,
                   "engine": "", "message": "zero variants after extract/exclude"}
    return list(rows.values())


def is_manifest_key(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name == "manifest.json" or name.endswith(".manifest.json")


def idempotency_key(uri: str, etag: str) -> str:
    """One gwas run per manifest version: bucket/key plus the object's ETag."""
    return f"gwas-manifest:{uri.removeprefix('s3://')}@{etag}"


@flow(name="watch_manifests", log_prints=True)
def watch_manifests(
    prefix: Annotated[str, Field(description="s3://bucket/prefix (or a local directory) to scan for manifests.")],
    deployment: str = "gwas/gwas",
    engine: Engine = "auto",
    out_dir: str = "gwas-results",
    aws_credentials: AwsCredentials | None = None,
    job_variables_from_manifest: bool = False,
    gwas_parameters: Annotated[dict | None, Field(description="More gwas parameters, e.g. {'max_parallel': 8}.")] = None,
) -> list[dict]:
    """Start one `gwas` deployment run per new manifest version; overlapping watchers cannot double-start."""
    from prefect.deployments import run_deployment

    log = run_logger()
    client = storage.client_for(aws_credentials) if storage.is_s3(prefix) else None
    found = [o for o in storage.list_objects(prefix, client) if is_manifest_key(o.uri)]
    started = []
    for obj in found:
        t0 = datetime.now(UTC) - timedelta(seconds=1)
        key = idempotency_key(obj.uri, obj.etag)
        params = {**(gwas_parameters or {}), "manifest": obj.uri, "manifest_etag": obj.etag, "engine": engine,
                  "out_dir": out_dir}
        if aws_credentials is not None:
            params["aws_credentials"] = aws_credentials
        job_variables = None
        if job_variables_from_manifest:  # ECS/Batch pools: the manifest's vCPUs and memory size the run
            from genoflows.gwas.manifest import load_manifest

            try:
                job_variables = load_manifest(storage.read_text(obj.uri, client), obj.uri).resources.job_variables()
            except ManifestError:
                pass  # the run still starts and fails with the manifest's error, where a person sees it
        fr = run_deployment(name=deployment, parameters=params, idempotency_key=key, timeout=0, as_subflow=False,
                            job_variables=job_variables)
        new = fr.created is not None and fr.created >= t0  # for the log only; the server decides
        log.info("%s %s -> flow run %s (%s)", "started" if new else "already started", obj.uri, fr.name, fr.id)
        started.append({"manifest": obj.uri, "etag": obj.etag, "flow_run_id": str(fr.id), "idempotency_key": key})
    log.info("%d manifest version(s) under %s", len(found), prefix)
    return started
