"""Prefect tasks for RNA-seq quantification, and the glue that streams runs through them.

Tasks stay thin: each calls one domain function. Per run there are two task runs (download, quant), so a
300-run species is ~600 task runs per flow run, and the scheduler (plain code) decides what runs when.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from genoflows.fetch import PermanentFetchError, fetch
from genoflows.rnaseq import sources as src
from genoflows.rnaseq.merge import MergeResult
from genoflows.rnaseq.merge import merge_species as _merge
from genoflows.rnaseq.metadata import Run, RunTable
from genoflows.rnaseq.stages import LocalRun, QuantResult, SpeciesDirs, TruncatedFastq, cleanup_run
from genoflows.rnaseq.stages import download_run as _download
from genoflows.rnaseq.stages import quantify_run as _quantify
from genoflows.rnaseq.stream import Job, Stopped, StreamReport, StreamScheduler, human_bytes
from genoflows.settings import get_settings
from genoflows.toolrun import ToolError
from genoflows.tools import kallisto
from genoflows.tools.fasterq_dump import SraFormatError
from tasks.runtime import in_prefect_run, log_lines, retry_unless, run_logger


@dataclass
class ByteCounter:
    """Bytes downloaded so far, added to from download threads."""

    total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n


# Transient fetch errors and md5 mismatches are retried; 404s, bad files, tool errors and a stopping flow are not.
NOT_RETRYABLE = (PermanentFetchError, TruncatedFastq, SraFormatError, ToolError, Stopped)


def local_input(uri: str, dest_dir: Path, *, refresh: bool = False) -> Path:
    """A local path as is; a URI fetched into `dest_dir/<hash>/<name>` (validated name), once unless `refresh`."""
    if "://" not in uri or uri.startswith("file://"):
        path = Path(urlparse(uri).path if uri.startswith("file://") else uri)
        if not path.is_file():
            raise FileNotFoundError(f"{uri}: no such file; give a path or an s3:// / https:// URI")
        return path
    name = uri.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
        name = "input"
    dest = dest_dir / hashlib.sha256(uri.encode()).hexdigest()[:16] / name
    if refresh:  # a run table can change between flow runs; a transcriptome URI is taken as immutable
        dest.unlink(missing_ok=True)
    return fetch(uri, dest).path


@task(cache_policy=NO_CACHE, task_run_name="resolve sources for {species}")
def resolve_runs(runs: list[Run], species: str, order: list[str]) -> tuple[list[src.ResolvedRun], list[tuple[str, str]]]:
    """Files, sizes and md5s of every run, before any download (so the disk can be reserved)."""
    s = get_settings()
    endpoints = src.Endpoints(s.ena_base_url, s.sra_odp_base_url, s.ncbi_sdl_url)
    resolved, failed = src.resolve_all(runs, order, endpoints)
    logger = run_logger()
    for r in resolved:
        for note in r.notes:
            logger.warning("%s: %s", r.run.run, note)
    logger.info("%s: %d runs resolved, %d without a source", species, len(resolved), len(failed))
    return resolved, failed


@task(cache_policy=NO_CACHE, task_run_name="kallisto index {transcriptome}")
def build_index(transcriptome: str) -> tuple[Path, list[str]]:
    """Fetch the FASTA if remote; build (or reuse) the index cached per FASTA content and kallisto version.

    Returns the index and its target ids (in FASTA order), which every quantification is checked against."""
    cache = get_settings().cache_dir
    fasta = local_input(transcriptome, cache / "transcriptomes")
    index, targets = kallisto.ensure_index(fasta, cache, log=log_lines(), provenance_dir=None)
    run_logger().info("kallisto index %s (%d targets)", index, len(targets))
    return index, targets


@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless(*NOT_RETRYABLE),
    cache_policy=NO_CACHE,
    task_run_name="download {res.run.run}",
)
def download_run(
    res: src.ResolvedRun,
    fastq_root: Path,
    threads: int = 2,
    counter: ByteCounter | None = None,
    stop: threading.Event | None = None,
) -> LocalRun:
    """Fetch and verify one run's reads (retried on transient errors; resumes partial files; ends when `stop` is set)."""
    return _download(res, fastq_root, threads=threads, log=log_lines(), on_bytes=counter.add if counter else None,
                     stop=stop)  # fmt: skip


@task(cache_policy=NO_CACHE, task_run_name="quant {local.resolved.run.run}")
def quant_run(
    local: LocalRun,
    index: Path,
    targets: list[str],
    species_root: Path,
    threads: int = 1,
    fragment: tuple[float, float] | None = None,
    stop: threading.Event | None = None,
) -> QuantResult:
    """kallisto quant into a temp dir, checked against the index's targets, renamed to quant/<run>."""
    return _quantify(local, index, targets, SpeciesDirs(species_root), threads=threads,
                     fragment=fragment, log=log_lines(), stop=stop)  # fmt: skip


@task(cache_policy=NO_CACHE, task_run_name="merge {species}")
def merge_species(species_root: Path, species: str, table: RunTable, runs: list[str]) -> MergeResult:
    return _merge(SpeciesDirs(species_root), species, table, runs)


def artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


class RunProgress:
    """The flow's progress artifact: runs done / total and bytes downloaded, updated as runs finish."""

    def __init__(self, species: str, total: int, already: int, counter: ByteCounter):
        self.species, self.total, self.done, self.failed = species, total, already, 0
        self.counter = counter
        self.rows: list[dict[str, object]] = []
        self._id = None
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            self._id = create_progress_artifact(self._pct(), key=artifact_key("rnaseq-progress", species),
                                                description=self._text())  # fmt: skip

    def _pct(self) -> float:
        return 100.0 * (self.done + self.failed) / self.total if self.total else 100.0

    def _text(self) -> str:
        return (f"{self.species}: {self.done}/{self.total} runs quantified, {self.failed} failed, "
                f"{human_bytes(self.counter.total)} downloaded")  # fmt: skip

    def __call__(self, kind: str, key: str, info: object) -> None:
        logger = run_logger()
        if kind == "quantified" and isinstance(info, QuantResult):
            self.done += 1
            self.rows.append({"run": key, "layout": info.layout, "reads": info.n_processed,
                              "pct_pseudoaligned": info.p_pseudoaligned, "quant_s": info.seconds,
                              "source": info.source, "status": "done"})  # fmt: skip
            logger.info("%s quantified: %d reads, %.1f%% pseudoaligned", key, info.n_processed, info.p_pseudoaligned)
        elif kind == "failed":
            self.failed += 1
            self.rows.append({"run": key, "layout": "", "reads": "", "pct_pseudoaligned": "", "quant_s": "",
                              "source": "", "status": f"failed: {info}"})  # fmt: skip
            logger.error("%s failed: %s", key, info)
        else:
            return
        if self._id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._id, self._pct(), description=self._text())


def stream_runs(
    resolved: list[src.ResolvedRun],
    dirs: SpeciesDirs,
    index: Path,
    targets: list[str],
    *,
    budget: int,
    max_downloads: int,
    threads: int,
    fragment: tuple[float, float] | None,
    progress: RunProgress,
    download_task=download_run,
) -> StreamReport:
    """Run every resolved run through download_run -> quant_run -> delete under the disk budget."""
    quant_workers = max(1, threads)
    stop = threading.Event()  # set by the scheduler when the flow is interrupted or cancelled
    scheduler = StreamScheduler(
        budget_bytes=budget,
        max_downloads=max_downloads,
        quant_workers=quant_workers,
        download=lambda res: download_task(res, dirs.fastq, threads, progress.counter, stop),
        # quote: Prefect would otherwise walk the (maybe 100k-long) target list on every call looking for futures
        quant=lambda res, local: quant_run(local, index, quote(targets), dirs.root, 1, fragment, stop),
        cleanup=lambda res: cleanup_run(dirs.fastq, res.run.run),
        on_event=progress,
        stop=stop,
    )
    return scheduler.run(src_jobs(resolved))


def src_jobs(resolved: list[src.ResolvedRun]) -> list[Job]:
    return [Job(r.run.run, r.reserve_bytes, r) for r in resolved]


def publish_summary(species: str, summary: dict[str, object], rows: list[dict[str, object]]) -> None:
    """Per-species table artifact (run, layout, reads, % pseudoaligned, time) and a markdown summary."""
    if not in_prefect_run():
        return
    if rows:
        create_table_artifact(rows, key=artifact_key("rnaseq-runs", species), description=f"{species}: runs")
    lines = [f"# RNA-seq quantification: {species}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    create_markdown_artifact("\n".join(lines), key=artifact_key("rnaseq-summary", species),
                             description=f"{species}: summary")  # fmt: skip
