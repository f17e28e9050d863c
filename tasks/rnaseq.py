"""Prefect tasks for RNA-seq quantification, and the glue that streams runs (of one or several species) through them.

Tasks stay thin: each calls one domain function. Per run there is one download task per file and one quant task,
and the scheduler (plain code, genoflows/rnaseq/stream.py) decides what runs when. Calls to outside services
(ENA, AWS, S3, HTTP mirrors) retry with the project's one policy, `transient_retry_options`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from filelock import FileLock
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from genoflows.fetch import PermanentFetchError
from genoflows.rnaseq import remote_state as remote
from genoflows.rnaseq import sources as src
from genoflows.rnaseq.merge import MergeResult
from genoflows.rnaseq.merge import merge_species as _merge
from genoflows.rnaseq.metadata import MetadataError, Run, RunTable
from genoflows.rnaseq.stages import (
    LocalRun,
    QuantResult,
    SpeciesDirs,
    TruncatedFastq,
    cleanup_run,
    finish_download,
)
from genoflows.rnaseq.stages import download_file as _download_file
from genoflows.rnaseq.stages import quantify_run as _quantify
from genoflows.rnaseq.stream import FileLease, Job, Stopped, StreamReport, StreamScheduler, human_bytes
from genoflows.settings import get_settings
from genoflows.toolrun import ToolError
from genoflows.tools import kallisto
from genoflows.tools.fasterq_dump import SraFormatError
from tasks.runtime import in_prefect_run, run_logger, transient_retry_options

FAILED_EVENT = "genoflows.rnaseq.run.failed"
#: Reserved per file beyond its size: the lock, resume validator and source record fetch keeps beside it.
FILE_OVERHEAD = 4096

# Transient fetch errors and md5 mismatches are retried; 404s, bad files, tool errors and a stopping flow are not.
NOT_RETRYABLE = (PermanentFetchError, TruncatedFastq, SraFormatError, ToolError, Stopped, MetadataError)


@dataclass
class ByteCounter:
    """Bytes downloaded so far, added to from download threads."""

    total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n


def is_machine_wide(exc: BaseException) -> bool:
    """Failures of the machine, not of a run: the disk is full. Every other run would fail the same way."""
    if isinstance(exc, kallisto.TranscriptomeError):  # the index cannot be built: no run can be quantified
        return True
    if isinstance(exc, remote.StateUnwritable):  # the s3:// out_dir refuses writes: no run could be kept
        return True
    text = str(exc)
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk full" in text or "not enough disk" in text


# --- credentials --------------------------------------------------------------------------------------------


def s3_client_for(aws_credentials: Any | None):
    """An S3 client from an AwsCredentials block object (None: settings / the default chain)."""
    from genoflows.fetch import s3_client

    return s3_client(None, aws_credentials)


def fetch_input(uri: str, dest_dir: Path, aws_credentials: Any | None = None, *, refresh: bool = False) -> Path:
    """A local path as is; a URI through `fetch_file` (verified, retried with the one policy) into
    `dest_dir/<hash>/<name>` (validated name), once unless `refresh` (a run table can change between flow runs)."""
    from tasks.fetch import fetch_file

    if "://" not in uri or uri.startswith("file://"):
        path = Path(urlparse(uri).path if uri.startswith("file://") else uri)
        if not path.is_file():
            raise FileNotFoundError(f"{uri}: no such file; give a path or an s3:// / https:// URI")
        return path
    name = uri.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
        name = "input"
    dest = dest_dir / hashlib.sha256(uri.encode()).hexdigest()[:16] / name
    if refresh:
        dest.unlink(missing_ok=True)
    fetch = fetch_file.with_options(**transient_retry_options(PermanentFetchError))
    return fetch(uri, dest, aws_credentials=aws_credentials).path


# --- resolution ------------------------------------------------------------------------------------------------


@dataclass
class ResolveMemo:
    """What earlier attempts of `resolve_runs` settled, so a retry asks only about the runs still open."""

    resolved: dict[str, src.ResolvedRun] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    transient: dict[str, str] = field(default_factory=dict)


@task(cache_policy=NO_CACHE, task_run_name="resolve sources for {species}")
def resolve_runs(runs: list[Run], species: str, order: list[str], memo: ResolveMemo, aws_credentials: Any = None) -> int:
    """Files, sizes and md5s of every run, before any download (so the disk can be reserved). Runs a service could
    not answer for (5xx, 429, an HTML maintenance page) raise SourceTransient so the task retries them alone."""
    s = get_settings()
    endpoints = src.Endpoints(s.ena_base_url, s.sra_odp_base_url, s.ncbi_sdl_url,
                              s3=(lambda: s3_client_for(aws_credentials)) if any(r.uris for r in runs) else None)  # fmt: skip
    todo = [r for r in runs if r.run not in memo.resolved and r.run not in memo.failed]
    resolved, failed, transient = src.resolve_all(todo, order, endpoints)
    memo.resolved.update((r.run.run, r) for r in resolved)
    memo.failed.update(failed)
    memo.transient = dict(transient)
    if transient:
        raise src.SourceTransient(f"{len(transient)} run(s) not resolved yet, e.g. {transient[0][0]}: {transient[0][1]}")
    return len(memo.resolved)


def resolve_species(runs: list[Run], species: str, order: list[str], aws_credentials: Any = None):
    """Submit the resolution (retried with the one policy); returns a callable that waits and gives
    (resolved runs in table order, {run: reason}); what is unanswered after the last retry fails with the
    service's last answer. Species resolve concurrently this way."""
    memo = ResolveMemo()
    task_ = resolve_runs.with_options(**transient_retry_options(src.ResolveError))
    future = task_.submit(runs, species, order, quote(memo), aws_credentials)

    def collect() -> tuple[list[src.ResolvedRun], dict[str, str]]:
        future.wait()
        failed = dict(memo.failed)
        failed.update({run: f"{why} (still failing after retries)" for run, why in memo.transient.items()})
        logger = run_logger()
        for r in memo.resolved.values():
            for note in r.notes:
                logger.warning("%s: %s", r.run.run, note)
        logger.info("%s: %d runs resolved, %d without a source", species, len(memo.resolved), len(failed))
        return [memo.resolved[r.run] for r in runs if r.run in memo.resolved], failed

    return collect


# --- the steps -------------------------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE, task_run_name="kallisto index {transcriptome}")
def build_index(transcriptome: str, aws_credentials: Any = None, index_cache: str | None = None) -> tuple[Path, list[str]]:
    """Fetch the FASTA if remote; build (or reuse) the index cached per FASTA content and kallisto version.

    With an s3:// `index_cache`, an index missing here is fetched from there (verified) instead of built, and
    one built here is stored there. Returns the index and its target ids (in FASTA order), which every
    quantification is checked against. kallisto's output goes to `index.log` beside the index, not the run log."""
    cache = get_settings().cache_dir
    fasta = fetch_input(transcriptome, cache / "transcriptomes", aws_credentials)
    logger = run_logger()
    store = None
    if remote.is_remote(index_cache):
        n_targets = len(kallisto.check_fasta(fasta))
        key = kallisto.index_key(fasta)
        local_dir = cache / "kallisto" / key
        if not (local_dir / "transcripts.idx").exists():
            retried = restore_cached_index.with_options(**remote_retry_options())
            problem = retried(index_cache, key, local_dir, n_targets, aws_credentials)
            if problem:
                logger.warning("cached kallisto index %s; building it again", problem)
            store = problem != ""  # not cached, or a bad entry (replaced)
            if problem == "":
                logger.info("kallisto index %s fetched from %s", key, index_cache)
        if store is None:  # present here: store it unless the cache has it already (cheap: one small GET)
            store = remote.read_json(s3_client_for(aws_credentials),
                                     remote.join(index_cache, key, remote.INDEX_MANIFEST)) is None  # fmt: skip
    index, targets = kallisto.ensure_index(fasta, cache)
    logger.info("kallisto index %s (%d targets; log %s)", index, len(targets), index.parent / "index.log")
    if store:  # a cache that cannot be written costs the next machine a build, not this flow run its index
        stored = store_cached_index.with_options(**remote_retry_options())
        try:
            logger.info("kallisto index stored at %s", stored(index_cache, index.parent.name, index.parent,
                                                             len(targets), aws_credentials))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - reported; the index itself is fine
            logger.warning("kallisto index not stored in %s: %s", index_cache, exc)
    return index, targets


@task(cache_policy=NO_CACHE, task_run_name="fetch cached kallisto index {key}")
def restore_cached_index(index_cache: str, key: str, local_dir: Path, n_targets: int, aws_credentials: Any = None):
    """None: not cached; "": fetched and verified into `local_dir`; else why the cached entry was not used."""
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local_dir) + ".lock"), s3_errors(index_cache):  # the lock kallisto.ensure_index builds under
        if (local_dir / "transcripts.idx").exists():
            return ""
        return remote.restore_index(s3_client_for(aws_credentials), index_cache, key, local_dir, k=31,
                                    n_targets=n_targets)  # fmt: skip


@task(cache_policy=NO_CACHE, task_run_name="store kallisto index {key}")
def store_cached_index(index_cache: str, key: str, local_dir: Path, n_targets: int, aws_credentials: Any = None) -> str:
    with s3_errors(index_cache):
        return remote.store_index(s3_client_for(aws_credentials), index_cache, key, local_dir, k=31, n_targets=n_targets)


# --- an s3:// out_dir (genoflows/rnaseq/remote_state.py) ------------------------------------------------------------


@contextlib.contextmanager
def s3_errors(uri: str) -> Iterator[None]:
    """botocore errors as the fetch layer's transient/permanent errors (so the retry policy can tell them apart)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from genoflows.fetch import classify_s3_error

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise classify_s3_error(uri, exc) from exc


@task(cache_policy=NO_CACHE, task_run_name="restore {species.uri}")
def restore_species(species: remote.RemoteSpecies, runs: list[str]) -> tuple[list[str], list[str]]:
    """Finished runs' tables and failed.tsv from S3 into the scratch tree; local complete runs S3 lacks, up."""
    with s3_errors(species.uri):
        return species.restore(runs)


@task(cache_policy=NO_CACHE, task_run_name="upload {run}")
def upload_run(species: remote.RemoteSpecies, run: str) -> bool:
    with s3_errors(species.run_uri(run)):
        return species.upload_run(run)


@task(cache_policy=NO_CACHE, task_run_name="upload {species.uri}")
def upload_species(species: remote.RemoteSpecies, merged: list[Path]) -> list[str]:
    with s3_errors(species.uri):
        return species.upload_outputs(merged)


def remote_retry_options() -> dict:
    """The one retry policy; what cannot change on a retry (a bad manifest, access denied, a bad name) fails now."""
    return transient_retry_options(PermanentFetchError, ValueError)


def keep_on_s3(species: remote.RemoteSpecies, run: str) -> None:
    """Upload a just-quantified run (retried). If it cannot be stored, the local result is removed too, so the
    scratch tree never claims a run S3 does not have: the run fails now and is redone by the next flow run."""
    try:
        upload_run.with_options(**remote_retry_options())(quote(species), run)
    except Exception as exc:
        shutil.rmtree(species.dirs.quant_dir(run), ignore_errors=True)
        # access denied, no such bucket: every run would fail the same way, so the stream stops (machine-wide)
        kind = remote.StateUnwritable if isinstance(exc, PermanentFetchError) else remote.RemoteStateError
        raise kind(f"quantified, but could not be stored at {species.run_uri(run)}/ ({exc}); "
                   "it will be quantified again by the next flow run") from exc  # fmt: skip


@task(cache_policy=NO_CACHE, task_run_name="download {res.run.run} file {i}")
def download_file(res: src.ResolvedRun, i: int, fastq_root: Path, lease: FileLease, counter: ByteCounter,
                  aws_credentials: Any = None) -> Path:  # fmt: skip
    """Fetch and verify one file (one attempt; Prefect retries it without holding a connection meanwhile)."""
    client = s3_client_for(aws_credentials) if res.files[i].uri.startswith("s3://") else None
    return _download_file(res, i, fastq_root, lease=lease, on_bytes=counter.add, s3_client=client)


@task(cache_policy=NO_CACHE, task_run_name="quant {res.run.run}")
def quant_run(
    res: src.ResolvedRun,
    paths: list[Path],
    index: Any,  # a future of build_index, or its (index, targets)
    species_root: Path,
    threads: int = 1,
    fragment: tuple[float, float] | None = None,
    stop: threading.Event | None = None,
) -> QuantResult:
    """Convert/verify the downloaded reads, then kallisto quant into a temp dir, checked against the index's
    targets, renamed to quant/<run> (kallisto's full output kept there as tools.log)."""
    local: LocalRun = finish_download(res, paths, threads=threads, stop=stop)
    idx, targets = index.result() if hasattr(index, "result") else index  # built while the first runs downloaded
    return _quantify(local, idx, targets, SpeciesDirs(species_root), threads=1, fragment=fragment, stop=stop)


@task(cache_policy=NO_CACHE, task_run_name="merge {species}")
def merge_species(species_root: Path, species: str, table: RunTable, runs: list[str]) -> MergeResult:
    return _merge(SpeciesDirs(species_root), species, table, runs)


def artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


# --- what a person sees ------------------------------------------------------------------------------------------


class RunProgress:
    """A species' progress artifact and log: one line per run (quantified or failed), updated as runs finish."""

    def __init__(self, species: str, total: int, already: int, counter: ByteCounter):
        self.species, self.total, self.done, self.failed = species, total, already, 0
        self.counter = counter
        self.rows: list[dict[str, object]] = []
        self._id = None
        self._lock = threading.Lock()
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            self._id = create_progress_artifact(self._pct(), key=artifact_key("rnaseq-progress", species),
                                                description=self._text())  # fmt: skip

    def _pct(self) -> float:
        return 100.0 * (self.done + self.failed) / self.total if self.total else 100.0

    def _text(self) -> str:
        return (f"{self.species}: {self.done}/{self.total} runs quantified, {self.failed} failed, "
                f"{human_bytes(self.counter.total)} downloaded")  # fmt: skip

    def __call__(self, kind: str, run: str, info: object) -> None:
        logger = run_logger()
        with self._lock:
            if kind == "quantified" and isinstance(info, QuantResult):
                self.done += 1
                self.rows.append({"run": run, "layout": info.layout, "reads": info.n_processed,
                                  "pct_pseudoaligned": info.p_pseudoaligned, "quant_s": info.seconds,
                                  "source": info.source, "status": "done", "notes": "; ".join(info.notes)})  # fmt: skip
                logger.info("%s/%s quantified: %d %s, %.1f%% pseudoaligned, %.1f s%s", self.species, run,
                            info.n_processed, "pairs" if info.layout == "paired" else "reads", info.p_pseudoaligned,
                            info.seconds, f" (note: {'; '.join(info.notes)})" if info.notes else "")  # fmt: skip
            elif kind == "failed":
                self.failed += 1
                self.rows.append({"run": run, "layout": "", "reads": "", "pct_pseudoaligned": "", "quant_s": "",
                                  "source": "", "status": f"failed: {info}", "notes": ""})  # fmt: skip
                logger.error("%s/%s failed: %s", self.species, run, info)
                emit_run_failed(self.species, run, str(info))
            else:
                return
            if self._id is not None:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._id, self._pct(), description=self._text())


def emit_run_failed(species: str, run: str, reason: str) -> None:
    """A Prefect event per failed run, for automations (`genoflows.rnaseq.run.failed`), tied to the flow run."""
    if not in_prefect_run():
        return
    from prefect.context import FlowRunContext
    from prefect.events import emit_event

    related = []
    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None:
        related.append({"prefect.resource.id": f"prefect.flow-run.{ctx.flow_run.id}",
                        "prefect.resource.role": "flow-run", "prefect.resource.name": ctx.flow_run.name})  # fmt: skip
    emit_event(FAILED_EVENT, resource={"prefect.resource.id": f"genoflows.rnaseq.run.{species}.{run}",
                                       "prefect.resource.name": run, "genoflows.species": species},
               related=related, payload={"species": species, "run": run, "reason": reason[:2000]})  # fmt: skip


def publish_summary(species: str, summary: dict[str, object], rows: list[dict[str, object]]) -> None:
    """Per-species table artifact (run, layout, reads, % pseudoaligned, time, notes) and a markdown summary."""
    if not in_prefect_run():
        return
    if rows:
        create_table_artifact(rows, key=artifact_key("rnaseq-runs", species), description=f"{species}: runs")
    lines = [f"# RNA-seq quantification: {species}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    create_markdown_artifact("\n".join(lines), key=artifact_key("rnaseq-summary", species),
                             description=f"{species}: summary")  # fmt: skip


# --- limits shared by several flow runs (Prefect global concurrency limits) ---------------------------------------


class PrefectLimit:
    """A Prefect global concurrency limit used as a non-blocking counting semaphore (disk bytes, or connections).

    Created with `limit` when missing; when it exists, its own limit counts (several flow runs share it). Slots are
    held under leases renewed in the background, so a crashed flow run's bytes come back when its leases expire."""

    LEASE_SECONDS = 300.0

    def __init__(self, name: str, limit: int):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

        self.name = name
        with get_client(sync_client=True) as client:
            try:
                self.limit = client.read_global_concurrency_limit_by_name(name).limit
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=int(limit)))
                except ObjectAlreadyExists:
                    pass
                self.limit = client.read_global_concurrency_limit_by_name(name).limit
        self._leases: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._renew, name=f"lease-{name}", daemon=True).start()

    def try_acquire(self, n: int):
        from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
        from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

        if n > self.limit:
            raise ValueError(f"{n} slots asked of global concurrency limit {self.name!r}, which holds {self.limit}")
        try:
            resp = acquire_concurrency_slots_with_lease([self.name], n, max_retries=0, strict=True,
                                                        lease_duration=self.LEASE_SECONDS, suppress_warnings=True)  # fmt: skip
        except ConcurrencySlotAcquisitionError as exc:
            if "423" in str(exc) or "Locked" in str(exc):
                return None
            raise
        with self._lock:
            self._leases.add(resp.lease_id)
        return resp.lease_id

    def release(self, lease) -> None:
        from prefect.concurrency._sync import release_concurrency_slots_with_lease

        with self._lock:
            self._leases.discard(lease)
        release_concurrency_slots_with_lease(lease)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot (a connection) while the body runs; waits until one is free."""
        from prefect.concurrency.sync import concurrency

        with concurrency(self.name, occupy=1, strict=True):
            yield

    def _renew(self) -> None:
        from prefect.client.orchestration import get_client

        while not self._stop.wait(self.LEASE_SECONDS / 4):
            with self._lock:
                leases = list(self._leases)
            if not leases:
                continue
            with get_client(sync_client=True) as client:
                for lease in leases:
                    with contextlib.suppress(Exception):  # a lease released meanwhile
                        client.renew_concurrency_lease(lease, lease_duration=self.LEASE_SECONDS)

    def close(self) -> None:
        self._stop.set()


# --- one stream for one or several species -------------------------------------------------------------------------


@dataclass
class SpeciesWork:
    """One species inside a stream: where its outputs go, its index (a future while it builds), its counters."""

    name: str
    dirs: SpeciesDirs
    index: Any  # the build_index future
    fragment: tuple[float, float] | None
    progress: RunProgress
    failures: dict[str, str] = field(default_factory=dict)
    done: dict[str, QuantResult] = field(default_factory=dict)
    remote: remote.RemoteSpecies | None = None  # an s3:// out_dir: each quantified run is uploaded at once
    where: str = ""  # the species' tree as the user knows it (the s3:// URI or the local directory)


@dataclass(frozen=True)
class Work:
    species: SpeciesWork
    res: src.ResolvedRun


def quant_and_keep(w: Work, paths: list[Path], threads: int, stop: threading.Event) -> QuantResult:
    """quant_run, then (s3:// out_dir) the run's outputs to S3 before the run counts as quantified."""
    result = quant_run(w.res, paths, quote(w.species.index), w.species.dirs.root, threads, w.species.fragment,
                       quote(stop))  # fmt: skip
    index = w.species.index.result() if hasattr(w.species.index, "result") else w.species.index
    record_host_index(w.species.dirs.quant_dir(w.res.run.run), index[0])
    if w.species.remote is not None:
        keep_on_s3(w.species.remote, w.res.run.run)
    return result


def record_host_index(quant_dir: Path, index: Path) -> None:
    """run_info.json names the index kallisto was given; on AWS Batch that is the job's staged copy. Name the
    index here instead, as a local call does: the merge tells runs of different indices apart by its path."""
    info = quant_dir / "run_info.json"
    given = kallisto.parse_run_info(info).index
    if given and given != str(index):
        text = info.read_text()
        tmp = info.with_name(f".{info.name}.tmp")
        tmp.write_text(text.replace(given, str(index)))
        tmp.replace(info)


def stream_runs(
    work: list[Work],
    *,
    budget: int,
    max_downloads: int,
    threads: int,
    counter: ByteCounter,
    shared_limit: str | None = None,
    aws_credentials: Any = None,
) -> StreamReport:
    """Every resolved run of every species through download_file (per file) -> quant_run -> delete, under one disk
    budget and one connection limit (Prefect global concurrency limits when `shared_limit` names a shared disk)."""
    stop = threading.Event()  # set by the scheduler when the flow is interrupted or cancelled
    download = download_file.with_options(**transient_retry_options(*NOT_RETRYABLE))
    shared_budget = shared_conns = None
    if shared_limit:
        shared_budget = PrefectLimit(f"rnaseq-disk-{shared_limit}", budget)
        shared_conns = PrefectLimit(f"rnaseq-downloads-{shared_limit}", max_downloads)
        run_logger().info("shared limits: %s (%s) and %s (%d connections)", shared_budget.name,
                          human_bytes(shared_budget.limit), shared_conns.name, shared_conns.limit)  # fmt: skip
        budget = min(budget, shared_budget.limit)  # a run bigger than the shared budget fails alone, up front

    def on_event(kind: str, key: str, info: object) -> None:
        sp, run = key.split("/", 1)
        w = by_species[sp]
        if kind == "failed":
            w.failures[run] = str(info)
        elif kind == "quantified" and isinstance(info, QuantResult):
            w.done[run] = info
        w.progress(kind, run, info)

    by_species = {w.species.name: w.species for w in work}
    scheduler = StreamScheduler(
        budget_bytes=budget,
        max_downloads=max_downloads,
        quant_workers=max(1, threads),
        download=lambda w, i, lease: download(w.res, i, w.species.dirs.fastq, quote(lease), quote(counter),
                                              aws_credentials),  # fmt: skip
        quant=lambda w, paths: quant_and_keep(w, paths, threads, stop),
        cleanup=lambda w: cleanup_run(w.species.dirs.fastq, w.res.run.run),
        on_event=on_event,
        stop=stop,
        shared_budget=shared_budget,
        shared_slot=shared_conns.slot if shared_conns else None,
        fatal=is_machine_wide,
    )
    jobs = [Job(f"{w.species.name}/{w.res.run.run}", w.res.reserve_bytes + FILE_OVERHEAD * len(w.res.files), w,
                tuple((f.size or 0) + FILE_OVERHEAD for f in w.res.files)) for w in work]  # fmt: skip
    try:
        return scheduler.run(jobs)
    finally:
        for lim in (shared_budget, shared_conns):
            if lim is not None:
                lim.close()
