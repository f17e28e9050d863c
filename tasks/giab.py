"""Prefect tasks of the GIAB benchmark: each one calls domain code in `genoflows.giab` and reports to the run.

Downloads go through `tasks.fetch.fetch_file` (retries with backoff, none on 4xx/AccessDenied, progress
artifact); tool output goes to the run log through `tasks.runtime.log_lines`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from genoflows.fetch import s3_client
from genoflows.giab import catalogue, references, small, source, sv
from genoflows.giab.query import ensure_indexed, variant_sites
from genoflows.settings import get_settings
from genoflows.tools import happy, truvari
from tasks.fetch import fetch_file, fetch_retry_options
from tasks.runtime import log_lines, run_logger

METRICS_COLUMNS = ["sample", "genome", "build", "engine", "type", "filter", "metric", "value"]
HEADLINE = {
    "small": ["METRIC.Recall", "METRIC.Precision", "METRIC.F1_Score", "TRUTH.TP", "TRUTH.FN", "QUERY.FP"],
    "sv": ["recall", "precision", "f1", "TP-base", "FN", "FP"],
}


@dataclass
class ReferenceBundle:
    """Local paths of what a benchmark needs, all verified and indexed."""

    fasta: Path
    small: references.LocalTruth | None = None
    sv: references.LocalTruth | None = None
    downloaded: list[str] = field(default_factory=list)


def _fetcher_with(aws_credentials_block: str | None):
    """references.bring's download callable: the retrying fetch task, with the lab's S3 credentials if any."""

    def fetcher(uri: str, dest: Path, **kwargs):  # md5=, sha256=, size=, kind= (fetch-trust: retry policy now)
        return fetch_file.with_options(**fetch_retry_options())(uri, dest, aws_credentials=aws_credentials_block, **kwargs)

    return fetcher


@task(cache_policy=NO_CACHE, task_run_name="ensure references {build}")
def ensure_references(
    build: str,
    genome: str | None,
    variant_types: list[str],
    truth_vcf: str | None = None,
    truth_bed: str | None = None,
    aws_credentials_block: str | None = None,
) -> ReferenceBundle:
    """Truth VCF/TBI/BED and the reference FASTA(+.fai) in the reference cache; a second run downloads nothing."""
    s = get_settings()
    root = Path(s.reference_dir)
    log = log_lines()
    prov = root / "provenance"
    fasta_remote = catalogue.reference_fasta(build, s.reference_fasta_urls)
    downloaded: list[str] = []
    _fetcher = _fetcher_with(aws_credentials_block)
    fasta = references.fasta_ready(fasta_remote.relpath, root)
    if fasta is None:
        got = references.bring(fasta_remote, root, _fetcher, log=log)
        downloaded += [got.path.name] if got.downloaded else []
        fasta = references.indexed_fasta(got.path, log=log)
    bundle = ReferenceBundle(fasta=fasta)
    for kind in variant_types:
        if truth_vcf:
            spec = catalogue.custom_truth(truth_vcf, truth_bed)
        elif genome is None:
            raise ValueError("no GIAB genome and no truth given")  # the flow checks this before any task
        else:
            spec = (catalogue.small_truth if kind == "small" else catalogue.sv_truth)(genome, build, s.giab_base_url)
        local, got = references.bring_truth(spec, root, _fetcher, log=log, provenance_dir=prov)
        downloaded += [g.path.name for g in got if g.downloaded]
        setattr(bundle, kind, local)
    bundle.downloaded = downloaded
    run_logger().info(
        "references for %s ready under %s (%s)", build, root,
        f"downloaded {', '.join(downloaded)}" if downloaded else "all cached, nothing downloaded",
    )
    return bundle


def _drop_indexes_older_than(data: Path) -> None:
    """Remove a .tbi/.csi staged or built for an earlier version of `data` (re-fetched since), so it is fetched
    or built again. Indexes are always written after their data, so an older one belongs to other content;
    comparing times also covers a run killed between re-fetching the data and replacing its index."""
    for index in (Path(f"{data}.tbi"), Path(f"{data}.csi")):
        if index.exists() and index.stat().st_mtime_ns < data.stat().st_mtime_ns:
            index.unlink()


@task(cache_policy=NO_CACHE, task_run_name="stage {kind} input of {sample_id}")
def stage_query(
    source_uri: str,
    sample_id: str,
    dest_dir: Path,
    kind: str = "small",
    file: str | None = None,
    aws_credentials_block: str | None = None,
) -> Path:
    """Find the sample's file in the source, bring it (and its index) next to the outputs, index if needed.

    No retries of its own: the downloads are fetch_file tasks that retry themselves, and retrying around them
    multiplied the attempts (a 503 was tried up to 15 times). The S3 listing is retried by boto3.
    """
    client = s3_client(None, aws_credentials_block) if source_uri.startswith("s3://") else None
    found = source.find_input(source_uri, sample_id, kind=kind, file=file, s3_client=client)
    log = run_logger()
    log.info("%s input for %s: %s (%d bytes)%s", kind, sample_id, found.uri, found.size,
             "" if found.index_uri else "; no index next to it")
    dest = Path(dest_dir) / found.name
    _fetcher_with(aws_credentials_block)(found.uri, dest, size=found.size)
    _drop_indexes_older_than(dest)
    if found.index_uri and found.index_name:
        _fetcher_with(aws_credentials_block)(found.index_uri, Path(dest_dir) / found.index_name)
    ensure_indexed(dest, log=log_lines(), provenance_dir=Path(dest_dir).parent)
    return dest


@task(cache_policy=NO_CACHE, task_run_name="prepare query {staged.name}")
def prepare_query(staged: Path, sample_id: str, out_dir: Path) -> Path:
    """gVCF -> variant sites of the sample (reference blocks dropped, <NON_REF> trimmed), indexed."""
    name = re.sub(r"(\.g)?\.vcf\.gz$|\.gvcf\.gz$", "", staged.name)
    dst = Path(out_dir) / f"{name}.variants.vcf.gz"
    return variant_sites(staged, dst, sample_id=sample_id, log=log_lines(), provenance_dir=Path(out_dir).parent)


@task(cache_policy=NO_CACHE, task_run_name="benchmark small variants ({engine})")
def benchmark_small(
    engine: str, truth: references.LocalTruth, query: Path, fasta: Path, out_dir: Path
) -> small.SmallOutcome:
    """hap.py or the local engine, chosen by `engine` (auto: hap.py when it can run here)."""
    chosen = small.choose_engine(engine)  # type: ignore[arg-type]
    log = log_lines()
    run_logger().info("small-variant engine: %s (requested %s)", chosen, engine)
    kw = {"confident_bed": truth.bed, "log": log, "provenance_dir": Path(out_dir)}
    if chosen == "happy":
        return small.run_happy(truth.vcf, query, fasta, out_dir, **kw)
    return small.run_local(truth.vcf, query, fasta, out_dir, cache_dir=get_settings().cache_dir, **kw)


@task(cache_policy=NO_CACHE, task_run_name="benchmark structural variants")
def benchmark_sv(truth: references.LocalTruth, query: Path, fasta: Path, out_dir: Path) -> sv.SvResult:
    """truvari bench, all calls and PASS calls."""
    return sv.run_truvari(
        truth.vcf, query, fasta, out_dir, include_bed=truth.bed, log=log_lines(), provenance_dir=Path(out_dir)
    )


def metrics_rows(
    sample_id: str, genome: str, build: str, small_result: small.SmallOutcome | None, sv_result: sv.SvResult | None
) -> list[dict]:
    """The long-format metrics table: one row per (engine, type, filter, metric)."""
    rows = []
    base = {"sample": sample_id, "genome": genome, "build": build}
    if small_result is not None:
        for r in small_result.rows:
            for metric in happy.METRIC_COLUMNS:
                if metric in r.values:
                    rows.append({**base, "engine": small_result.engine, "type": r.type, "filter": r.filter,
                                 "metric": metric, "value": r.values[metric]})
    if sv_result is not None:
        for flt, metrics in sv_result.metrics.items():
            for metric, value in metrics.items():
                rows.append({**base, "engine": sv.ENGINE_NAME, "type": "SV", "filter": flt, "metric": metric,
                             "value": value})
    return rows


def _typed(metric: str, value: float | None) -> int | float | None:
    """Counts as integers, everything else as floats; None stays None (an undefined metric)."""
    if value is None:
        return None
    return int(value) if metric in happy.COUNT_COLUMNS or metric in truvari.COUNT_KEYS else float(value)


def write_metrics_csv(rows: list[dict], path: Path) -> Path:
    """metrics.csv (temp name, then rename); empty cells where a metric is undefined."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            value = _typed(row["metric"], row["value"])
            writer.writerow({**row, "value": "" if value is None else repr(value)})
    tmp.replace(path)
    return path


def headline_table(rows: list[dict]) -> list[dict]:
    """One row per (engine, type, filter) with the headline metrics, for the table artifact."""
    table: dict[tuple, dict] = {}
    for r in rows:
        if r["metric"] not in HEADLINE["sv" if r["type"] == "SV" else "small"]:
            continue
        key = (r["engine"], r["type"], r["filter"])
        value = _typed(r["metric"], r["value"])
        entry = table.setdefault(key, {"engine": key[0], "type": key[1], "filter": key[2]})
        entry[r["metric"]] = "" if value is None else round(value, 4) if isinstance(value, float) else value
    return list(table.values())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "sample"


@task(cache_policy=NO_CACHE, task_run_name="export metrics of {sample_id}")
def export(
    sample_id: str,
    genome: str,
    build: str,
    out_dir: Path,
    small_result: small.SmallOutcome | None = None,
    sv_result: sv.SvResult | None = None,
) -> Path:
    """metrics.csv, a table artifact of the headline metrics and a markdown artifact listing the files."""
    out_dir = Path(out_dir)
    rows = metrics_rows(sample_id, genome, build, small_result, sv_result)
    metrics_csv = write_metrics_csv(rows, out_dir / "metrics.csv")
    slug = _slug(sample_id)
    create_table_artifact(
        key=f"giab-{slug}-metrics",
        table=headline_table(rows),
        description=f"GIAB benchmark of {sample_id} ({genome}, {build}): headline metrics",
    )
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and "work" not in p.relative_to(out_dir).parts
                   and not p.name.startswith("."))
    listing = "\n".join(f"| `{p.relative_to(out_dir)}` | {p.stat().st_size:,} |" for p in files)
    create_markdown_artifact(
        key=f"giab-{slug}-files",
        markdown=f"# GIAB benchmark outputs of {sample_id}\n\nUnder `{out_dir.resolve()}`:\n\n| file | bytes |\n|---|---|\n"
        f"{listing}\n",
        description=f"Files written for {sample_id}",
    )
    run_logger().info("metrics of %s written to %s (%d rows)", sample_id, metrics_csv, len(rows))
    return metrics_csv
