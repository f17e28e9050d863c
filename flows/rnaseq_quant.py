"""RNA-seq quantification flows: one species (`rnaseq_quant`) and several in one stream (`rnaseq_multi_species`).

    metadata + transcriptome ─┬─ resolve every run's files (ENA / AWS / NCBI / given URIs) ─┐
                              └─ build the kallisto index (overlaps the first downloads) ───┤
    stream: files download in parallel (one connection each) under the disk budget ─> kallisto ─> delete
    per species: failed.tsv, merged tables, summary; a Failed state and an event per failed run

Finished runs are never redone; failed and missing ones are retried on the next flow run.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from filelock import FileLock, Timeout
from prefect import flow
from prefect.states import Completed, Failed
from prefect.utilities.annotations import quote
from prefect_aws import AwsCredentials
from pydantic import ByteSize, Field, PositiveFloat, TypeAdapter

from blocks.aws_batch import AwsBatch, batch_for
from genoflows.rnaseq import remote_state as remote
from genoflows.rnaseq.config import ConfigError, load_configs, params_model
from genoflows.rnaseq.metadata import load_runs, species_dirname
from genoflows.rnaseq.stages import SpeciesDirs
from genoflows.rnaseq.state import plan, write_failed
from genoflows.rnaseq.stream import DiskSampler, human_bytes
from genoflows.settings import get_settings
from tasks import rnaseq as t
from tasks.runtime import run_logger

Source = Literal["ena", "aws", "ncbi"]
Positive = Annotated[int, Field(ge=1, le=256)]
#: A size as text ("40GB", "500MB", "1.5TiB") or a number of bytes; shown as text in the run form.
Size = Annotated[int, Field(gt=0)] | Annotated[str, Field(pattern=r"^\s*\d+(\.\d+)?\s*([kKMGTP]i?[bB]|[bB])?\s*$")]


def parse_size(value: int | str) -> int:
    return int(TypeAdapter(ByteSize).validate_python(value))


@flow(name="rnaseq-quant", flow_run_name="{species}", log_prints=True)
def rnaseq_quant(
    metadata: str | list[str],
    species: str,
    transcriptome: str,
    out_dir: str = "data/rnaseq",
    threads: Positive = 2,
    max_downloads: Positive = 4,
    disk_budget: Size = "40GB",
    sources: Annotated[list[Source], Field(min_length=1)] = ["ena", "aws"],  # noqa: B006 - copied per run
    engine: Literal["kallisto"] = "kallisto",
    fragment_length: PositiveFloat | None = None,
    fragment_sd: PositiveFloat | None = None,
    shared_limit: str | None = None,
    aws_credentials: AwsCredentials | None = None,
    index_cache: Annotated[str, Field(pattern=r"^s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/.*)?$")] | None = None,
    batch: AwsBatch | None = None,
) -> dict[str, object]:
    """Quantify one species' SRA/ENA runs with kallisto, streaming downloads under a disk budget.

    Ends Failed (message: how many runs failed, where failed.tsv is) when any run failed, with every finished
    run kept, merged and returned; an event `genoflows.rnaseq.run.failed` is emitted per failed run.

    Args:
        metadata: amalgkit metadata.tsv (path, s3:// or https://) or a list of run accessions.
        species: scientific_name to keep (e.g. "Camponotus floridanus"); also the output folder Genus_species.
        transcriptome: transcript FASTA(.gz) to index (path, s3:// or https://).
        out_dir: where <species>/quant, merged, failed.tsv go: a directory, or s3://bucket/prefix (the state lives
            there; a local scratch copy does the work, each run is uploaded once quantified, a fresh machine resumes).
        threads: cores for kallisto (that many runs quantified at once, -t 1 each).
        max_downloads: download connections (one per file; a paired run's files download in parallel).
        disk_budget: most bytes of FASTQ on disk at once, e.g. "40GB" or "500MB".
        sources: where reads come from, in order: ena (FASTQ.gz), aws (ODP .sra), ncbi (SDL .sra).
        engine: quantifier (kallisto 0.48).
        fragment_length: single-end mean fragment length (-l); default: nominal_length if >= 200, else 200.
        fragment_sd: single-end fragment length sd (-s); default fragment_length / 10.
        shared_limit: name of a disk shared with other flow runs: the budget and download connections become
            Prefect global concurrency limits rnaseq-disk-<name> / rnaseq-downloads-<name> (created from this
            run's values if missing), so all runs together stay within them.
        aws_credentials: AwsCredentials block for s3:// inputs and an s3:// out_dir (None: settings or the default
            AWS chain).
        index_cache: s3://… prefix where kallisto indices are kept by FASTA checksum and kallisto version, so a fresh
            machine fetches instead of building (default with an s3:// out_dir: <out_dir>/kallisto-index-cache).
        batch: run the block's tools (e.g. kallisto) as AWS Batch jobs.
    """
    cfg = {k: v for k, v in locals().items() if k not in SHARED}
    with batch_for(batch):
        return run_species([cfg], budget=parse_size(disk_budget), max_downloads=max_downloads, threads=threads,
                           shared_limit=shared_limit, aws_credentials=aws_credentials, single=True)  # fmt: skip


#: Parameters set once for all species (not in a species entry).
SHARED = ("shared_limit", "aws_credentials", "batch")
#: A species entry of the multi-species YAML: `rnaseq_quant`'s parameters (limits, defaults), less the shared ones.
SpeciesConfig = params_model(rnaseq_quant.fn, "SpeciesConfig", exclude=SHARED)


@flow(name="rnaseq-multi-species", log_prints=True)
def rnaseq_multi_species(
    configs: str | list[str],
    disk_budget: Size | None = None,
    max_downloads: Positive | None = None,
    threads: Positive | None = None,
    shared_limit: str | None = None,
    aws_credentials: AwsCredentials | None = None,
    out_dir: str | None = None,
    batch: AwsBatch | None = None,
) -> dict[str, object]:
    """Quantify several species in one stream: their runs interleave under one disk budget and one connection
    limit, so one species' tail overlaps the next; each keeps its own outputs, index and failed.tsv.

    Ends Failed when any species has failed runs; the message reports per species.

    Args:
        configs: YAML file(s), local or s3:// / https://: one per species, or one with shared keys and a
            `species:` list of entries taking rnaseq_quant's parameters. Relative inputs in a remote config sit
            beside it; a relative out_dir goes under the data directory.
        disk_budget: the one budget for all species, e.g. "200GB" (default: the smallest species' disk_budget).
        max_downloads: download connections for all species (default: the smallest species' max_downloads).
        threads: kallisto cores for all species (default: the smallest species' threads).
        shared_limit: name of a disk shared with other flow runs (Prefect global concurrency limits).
        aws_credentials: AwsCredentials block for s3:// inputs and s3:// out_dirs.
        out_dir: every species' out_dir (overrides the configs'), e.g. s3://lab/rnaseq for a deployment on ECS.
        batch: run the block's tools (e.g. kallisto) as AWS Batch jobs.
    """
    local, origins = [], {}
    for spec in [configs] if isinstance(configs, str) else configs:  # s3:// or https:// configs are fetched first
        if "://" in spec and not spec.startswith("file://"):
            copy = str(t.fetch_input(spec, get_settings().data_dir / "configs", aws_credentials, refresh=True))
            origins[copy] = spec
            spec = copy
        local.append(spec)
    try:
        species = [c.model_dump() for c in load_configs(local, SpeciesConfig, origins,
                                                         remote_out_root=get_settings().data_dir / "rnaseq")]
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    for c in species if out_dir else []:
        c["out_dir"] = out_dir
    budget = parse_size(disk_budget) if disk_budget else min(parse_size(c["disk_budget"]) for c in species)
    with batch_for(batch):
        return run_species(species, budget=budget,
                           max_downloads=max_downloads or min(c["max_downloads"] for c in species),
                           threads=threads or min(c["threads"] for c in species), shared_limit=shared_limit,
                           aws_credentials=aws_credentials, single=False)  # fmt: skip


def run_species(
    cfgs: list[dict[str, Any]],
    *,
    budget: int,
    max_downloads: int,
    threads: int,
    shared_limit: str | None,
    aws_credentials: AwsCredentials | None,
    single: bool,
):
    """The body of both flows: prepare each species, one stream for all, then per-species outputs and the state."""
    t0 = time.monotonic()
    logger = run_logger()
    counter = t.ByteCounter()
    with contextlib.ExitStack() as stack:
        prepared: list[tuple[dict[str, Any], t.SpeciesWork, Any, Any]] = []
        work: list[t.Work] = []
        resolving: list[tuple[t.SpeciesWork, Any]] = []
        for cfg in cfgs:
            sp = species_dirname(cfg["species"])
            store = None  # an s3:// out_dir: the tree lives there, `dirs` is its local scratch copy
            if remote.is_remote(cfg["out_dir"]):
                store = remote.RemoteSpecies.open(cfg["out_dir"], sp, get_settings().data_dir,
                                                  t.s3_client_for(aws_credentials))  # fmt: skip
                dirs = store.dirs
            else:
                dirs = SpeciesDirs(Path(cfg["out_dir"]) / sp)
            where = store.uri if store else str(dirs.root)
            dirs.root.mkdir(parents=True, exist_ok=True)
            try:
                stack.enter_context(FileLock(str(dirs.root / ".flow.lock"), timeout=0))
            except Timeout as exc:
                raise RuntimeError(f"another flow run is working on {dirs.root}; wait for it or use another out_dir") from exc
            meta = cfg["metadata"]
            if not isinstance(meta, list):
                meta = t.fetch_input(meta, dirs.root / ".inputs", aws_credentials, refresh=True)
            table = load_runs(meta, cfg["species"])
            if stale := dirs.prepare():
                logger.warning("removed %d leftovers of an interrupted run: %s", len(stale), stale[:5])
            if store is not None:
                restored, uploaded = t.restore_species.with_options(**t.remote_retry_options())(
                    quote(store), [r.run for r in table.runs])
                logger.info("%s: %d finished runs restored from %s, %d local ones uploaded", sp, len(restored),
                            store.uri, len(uploaded))  # fmt: skip
            todo = plan(table, dirs)
            logger.info("%s: %d runs, %d complete, %d to do, %d skipped", sp, len(table.runs), len(todo.complete),
                        len(todo.todo), len(table.skipped))  # fmt: skip
            index_cache = cfg.get("index_cache") or (remote.default_index_cache(cfg["out_dir"]) if store else None)
            index = t.build_index.submit(cfg["transcriptome"], aws_credentials, index_cache) if todo.todo else None
            length, sd = cfg.get("fragment_length"), cfg.get("fragment_sd")
            fragment = (length, sd or length / 10) if length else None
            w = t.SpeciesWork(sp, dirs, index, fragment, t.RunProgress(sp, len(table.runs), len(todo.complete), counter),
                              remote=store, where=where)  # fmt: skip
            if todo.todo:  # species resolve concurrently (and while their indices build)
                resolving.append((w, t.resolve_species(todo.todo, sp, list(cfg["sources"]), aws_credentials)))
            prepared.append((cfg, w, table, todo))
        for w, collect in resolving:
            resolved, unresolved = collect()
            for run, why in unresolved.items():  # failed before the stream: count them in the progress too
                w.failures[run] = f"resolve: {why}"
                w.progress("failed", run, w.failures[run])
            work += [t.Work(w, r) for r in resolved]
        report = None
        with DiskSampler([w.dirs.fastq for _, w, _, _ in prepared], interval=0.2) as disk:
            if work:
                report = t.stream_runs(work, budget=budget, max_downloads=max_downloads, threads=threads,
                                       counter=counter, shared_limit=shared_limit, aws_credentials=aws_credentials)  # fmt: skip
        fatal = report.fatal if report else None
        for _, w, _, _ in prepared:  # an index that could not be built fails the flow run
            if w.index is not None and not fatal:
                w.index.wait()
                if w.index.state.is_failed():
                    fatal = f"{w.name}: kallisto index: {w.index.state.message}"
        results: dict[str, dict[str, object]] = {}
        lines = []
        unstored: list[str] = []
        for _cfg, w, table, _todo in prepared:
            write_failed(w.dirs, w.failures)
            merged = t.merge_species(w.dirs.root, w.name, table, [r.run for r in table.runs])
            if w.remote is not None:  # merged tables, metadata.tsv, failed.tsv: up at the end
                try:
                    t.upload_species.with_options(**t.remote_retry_options())(
                        quote(w.remote), [p for p in (merged.est_counts, merged.tpm) if p is not None])
                except Exception as exc:  # noqa: BLE001 - the flow run fails with it, the summary still counts
                    unstored.append(f"{w.name}: merged tables / failed.tsv not stored at {w.where} ({exc})")
                    logger.error(unstored[-1])
            summary = {
                "species": w.name,
                "runs": len(table.runs),
                "quantified": len(merged.runs),
                "newly_quantified": len(w.done),
                "failed": len(w.failures),
                "skipped (excluded / not sampled)": len(table.skipped),
                "downloaded": human_bytes(counter.total),
                "disk_budget": human_bytes(budget),
                "disk_high_water (sampled fastq/)": human_bytes(disk.high_water),
                "disk_reserved_high_water": human_bytes(report.reserved_high_water if report else 0),
                "wall_seconds": round(time.monotonic() - t0, 1),
                "failed_tsv": f"{w.where}/failed.tsv" if w.failures else "",
                "out": w.where,
            }
            t.publish_summary(w.name, summary, w.progress.rows)
            logger.info("summary: %s", summary)
            leftovers = {k.split("/", 1)[1]: v for k, v in (report.cleanup_failed if report else {}).items()
                         if k.startswith(w.name + "/")}  # fmt: skip
            if leftovers:
                logger.error("could not delete the FASTQs of %s (still on disk, still in the budget)", leftovers)
            results[w.name] = {**summary, "disk_high_water_bytes": disk.high_water, "failures": dict(w.failures),
                               "not_deleted": leftovers, "max_connections": report.max_connections if report else 0}  # fmt: skip
            line = f"{w.name}: {summary['quantified']} of {len(table.runs)} runs quantified"
            if w.failures:
                line += f", {len(w.failures)} failed (see {w.where}/failed.tsv)"
            lines.append(line)
    data: dict[str, object] = next(iter(results.values())) if single else results
    message = "; ".join(lines)
    if fatal:
        message = f"stopped by a machine-wide failure: {fatal} -- {message}"
    if unstored:
        message = f"{message}; {'; '.join(unstored)}"
    if fatal or unstored or any(w.failures for _, w, _, _ in prepared):  # Python callers get the exception, with the results
        return Failed(message=message, data=RunsFailed(message, data))
    return Completed(message=message, data=data)


class RunsFailed(RuntimeError):
    """Some runs (or the machine) failed; `.results` holds what the flow run would have returned: every
    finished run is kept on disk and merged. Raised by a direct call; `state.result(raise_on_failure=False)`."""

    def __init__(self, message: str, results: dict[str, object]):
        super().__init__(message)
        self.results = results
