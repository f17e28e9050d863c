"""Prefect tasks of the GIAB benchmark: each one calls domain code in `genoflows.giab` and reports to the run.

Downloads go through `tasks.fetch.fetch_file` (retries with backoff, none on 4xx/AccessDenied, progress
artifact); tool output goes to the run log through `tasks.runtime.log_lines`. The lab's S3 credentials arrive
as a prefect-aws `AwsCredentials` block object (a block-typed flow parameter), never as a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from genoflows.fetch import s3_client
from genoflows.giab import catalogue, references, small, source, sv
from genoflows.giab.metrics import headline_table, metrics_rows, slug, write_metrics_csv
from genoflows.giab.query import ensure_indexed, variant_sites
from genoflows.settings import get_settings
from tasks.fetch import fetch_file, fetch_retry_options
from tasks.runtime import log_lines, run_logger
from tasks.tooling import where_tools_run  # shared with the GWAS step-2 task (gwas-batch, issue 12)

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials

    from blocks.aws_batch import AwsBatch
    from blocks.tool_images import ToolImages

@dataclass
class ReferenceBundle:
    """Local paths of what a benchmark needs, all verified and indexed."""

    fasta: Path
    small: references.LocalTruth | None = None
    sv: references.LocalTruth | None = None
    downloaded: list[str] = field(default_factory=list)


def _fetch(uri: str, dest: Path, aws_credentials: AwsCredentials | None, **kwargs):
    """The fetch task under the project's retry policy, with the lab's S3 credentials, if any."""
    return fetch_file.with_options(**fetch_retry_options())(uri, dest, aws_credentials=aws_credentials, **kwargs)


def _fetcher_with(aws_credentials: AwsCredentials | None):
    """references.bring's download callable: the retrying fetch task, with the lab's S3 credentials if any."""

    def fetcher(uri: str, dest: Path, **kwargs):  # md5=, sha256=, size=, kind=, missing_ok=
        return _fetch(uri, dest, aws_credentials, **kwargs)

    return fetcher


@task(cache_policy=NO_CACHE, task_run_name="ensure references {build}")
def ensure_references(
    build: str,
    genome: str | None,
    variant_types: list[str],
    truth_vcf: str | None = None,
    truth_bed: str | None = None,
    aws_credentials: AwsCredentials | None = None,
) -> ReferenceBundle:
    """Truth VCF/TBI/BED and the reference FASTA(+.fai) in the reference cache; a second run downloads nothing."""
    s = get_settings()
    root = Path(s.reference_dir)
    log = log_lines()
    prov = root / "provenance"
    fasta_remote = catalogue.reference_fasta(build, s.reference_fasta_urls)
    downloaded: list[str] = []
    _fetcher = _fetcher_with(aws_credentials)
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


@task(cache_policy=NO_CACHE, task_run_name="locate inputs of {sample_id}")
def locate_inputs(
    source_uri: str,
    sample_id: str,
    variant_types: list[str],
    file: str | None = None,
    aws_credentials: AwsCredentials | None = None,
) -> dict[str, source.LabInput]:
    """The sample's input file per variant type, with its version (nothing is downloaded). The S3 listing is
    retried by boto3."""
    client = None
    if source_uri.startswith("s3://"):
        client = s3_client(None, aws_credentials)
    found = {}
    for kind in variant_types:
        wanted = file if kind == "small" or variant_types == ["sv"] else None
        found[kind] = source.find_input(source_uri, sample_id, kind=kind, file=wanted, s3_client=client)  # type: ignore[arg-type]
        f = found[kind]
        run_logger().info("%s input for %s: %s (%d bytes, %s)%s", kind, sample_id, f.uri, f.size, f.version,
                          "" if f.index_uri else "; no index next to it")
    return found


@task(cache_policy=NO_CACHE, task_run_name="stage {found.name}")
def stage_query(found: source.LabInput, dest_dir: Path, aws_credentials: AwsCredentials | None = None) -> Path:
    """Bring the input (and its index) into this run's own input directory, index it if needed.

    No retries of its own: the downloads are fetch_file tasks that retry themselves, and retrying around them
    multiplied the attempts (a 503 was tried up to 15 times).
    """
    dest = Path(dest_dir) / found.name
    _fetch(found.uri, dest, aws_credentials, size=found.size)
    if found.index_is_stale:
        run_logger().warning("%s is older than %s (the data was uploaded again, the index not): not using it, "
                             "indexing the new data instead", found.index_name, found.name)
    elif found.index_uri and found.index_name:
        _fetch(found.index_uri, Path(dest_dir) / found.index_name, aws_credentials)
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
    engine: str,
    truth: references.LocalTruth,
    query: Path,
    fasta: Path,
    out_dir: Path,
    build: str | None = None,
    batch: AwsBatch | None = None,
    tool_images: ToolImages | None = None,
) -> small.SmallOutcome:
    """hap.py or the local engine, as chosen by the flow (`small.choose_engine`)."""
    log = log_lines()
    kw = {"confident_bed": truth.bed, "build": build, "log": log, "provenance_dir": Path(out_dir)}
    with where_tools_run(batch, tool_images):
        if engine == "happy":
            return small.run_happy(truth.vcf, query, fasta, out_dir, **kw)
        return small.run_local(truth.vcf, query, fasta, out_dir, cache_dir=get_settings().cache_dir, **kw)


@task(cache_policy=NO_CACHE, task_run_name="benchmark structural variants")
def benchmark_sv(
    truth: references.LocalTruth,
    query: Path,
    fasta: Path,
    out_dir: Path,
    batch: AwsBatch | None = None,
    tool_images: ToolImages | None = None,
) -> sv.SvResult:
    """truvari bench, all calls and PASS calls."""
    with where_tools_run(batch, tool_images):
        return sv.run_truvari(
            truth.vcf, query, fasta, out_dir, include_bed=truth.bed, log=log_lines(), provenance_dir=Path(out_dir)
        )


@task(cache_policy=NO_CACHE, task_run_name="write metrics of {sample_id}")
def write_metrics(
    sample_id: str,
    genome: str,
    build: str,
    out_dir: Path,
    small_result: small.SmallOutcome | None = None,
    sv_result: sv.SvResult | None = None,
) -> list[dict]:
    """metrics.csv in the run directory; returns its rows for the artifacts."""
    rows = metrics_rows(sample_id, genome, build, small_result, sv_result)
    path = write_metrics_csv(rows, Path(out_dir) / "metrics.csv")
    run_logger().info("metrics of %s written (%d rows) to %s", sample_id, len(rows), path.name)
    return rows


@task(cache_policy=NO_CACHE, task_run_name="publish metrics of {sample_id}")
def publish(sample_id: str, genome: str, build: str, run_dir: Path, rows: list[dict], where: str | None = None) -> None:
    """A table artifact of the headline metrics and a markdown artifact listing the finished run's files."""
    run_dir = Path(run_dir)
    key = slug(sample_id)
    create_table_artifact(
        key=f"giab-{key}-metrics",
        table=headline_table(rows),
        description=f"GIAB benchmark of {sample_id} ({genome}, {build}): headline metrics",
    )
    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and "work" not in p.relative_to(run_dir).parts
                   and not p.name.startswith("."))
    listing = "\n".join(f"| `{p.relative_to(run_dir)}` | {p.stat().st_size:,} |" for p in files)
    create_markdown_artifact(
        key=f"giab-{key}-files",
        markdown=f"# GIAB benchmark outputs of {sample_id}\n\nUnder `{where or run_dir.resolve()}`:\n\n| file | bytes |\n|---|---|\n"
        f"{listing}\n",
        description=f"Files written for {sample_id}",
    )


# An s3:// out_dir (ecs-all, issue 12): the domain code is genoflows/giab/publish.py; these tasks run it under the
# project's retry policy (`transient_retry_options`, applied by the flow at call time) with the lab's credentials.
@task(cache_policy=NO_CACHE, task_run_name="look for run {key} of {sample_id} on S3")
def finished_on_s3(out_uri: str, sample_id: str, key: str, aws_credentials: AwsCredentials | None = None) -> str | None:
    """The s3:// URI of the finished run's metrics.csv when the run key's manifest is on S3, else None."""
    from genoflows.giab.publish import RemoteRun

    remote = RemoteRun.of(out_uri, sample_id, key, s3_client(None, aws_credentials))
    return remote.metrics_uri() if remote.finished() is not None else None


@task(cache_policy=NO_CACHE, task_run_name="upload run {key} of {sample_id} to S3")
def upload_run(run_dir: Path, out_uri: str, sample_id: str, key: str,
               aws_credentials: AwsCredentials | None = None) -> str:
    """Publish the finished local run directory under `<out_uri>/<sample_id>/run-<key>/` (verified files, then
    the manifest, only if absent); the s3:// URI of its metrics.csv."""
    from genoflows.giab.publish import RemoteRun

    remote = RemoteRun.of(out_uri, sample_id, key, s3_client(None, aws_credentials))
    manifest, wrote = remote.upload(Path(run_dir), key)
    n, size = len(manifest["files"]), sum(f["size"] for f in manifest["files"].values())
    run_logger().info("%s: %s", remote.uri, f"uploaded {n} files ({size:,} bytes), manifest last" if wrote else
                      "a run with the same key finished on S3 first; it stands, nothing was overwritten")
    return remote.metrics_uri()
