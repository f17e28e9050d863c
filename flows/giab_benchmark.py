"""giab_benchmark: a lab's calls for a GIAB sample -> truth fetched and verified -> hap.py/local engine/truvari -> metrics.

    from flows.giab_benchmark import giab_benchmark
    giab_benchmark(sample_id="NA24143_Lib3_Rep1", source="s3://lab-bucket/run42")

Each run lands in its own `<out_dir>/<sample_id>/run-<key>/` (key: input versions, truth, engine, build): the staged
input, each engine's own files, `metrics.csv` (long format), `provenance.jsonl` and `run.json`. Finished runs are
never overwritten: the same inputs again are reported up to date, a changed input gets a new run directory.
An `s3://` out_dir: the run is computed in a local scratch directory, then published to the same layout on S3
with a manifest written last (genoflows/giab/publish.py); a rerun looks for that manifest before any download.
Unknown samples without `truth`, and SV requests with no truth set, fail before any download.

With both variant types the small-variant and the SV comparison run at the same time, on the configured task
runner (`tasks.runners.fan_out_runner`: threads, or a Dask/Ray cluster by `GENOFLOWS_TASK_RUNNER`). An `AwsBatch`
block (`batch`) sends the tools it lists (e.g. truvari, hap.py) to AWS Batch, on threads and on Dask alike.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect_aws import AwsCredentials
from pydantic import BaseModel, Field

from blocks.aws_batch import AwsBatch, batch_for
from blocks.tool_images import ToolImages
from genoflows.giab import catalogue, runs, small
from genoflows.giab import publish as s3_publish
from genoflows.giab.samples import check_safe_name, find_genome, resolve_genome
from genoflows.settings import get_settings
from tasks.giab import (
    benchmark_small,
    benchmark_sv,
    ensure_references,
    finished_on_s3,
    locate_inputs,
    prepare_query,
    publish,
    stage_query,
    upload_run,
    write_metrics,
)
from tasks.runners import fan_out_runner
from tasks.runtime import transient_retry_options


class TruthSet(BaseModel):
    """Your own truth set, for samples that are not GIAB (or to override the GIAB release)."""

    vcf: str = Field(description="URI of the truth VCF (bgzipped; `<vcf>.tbi` is used when present)")
    bed: str | None = Field(None, description="URI of the confident-region BED; omit to count everywhere")


def check_request(
    sample_id: str, build: str, variant_types: list[str], truth: TruthSet | None, file: str | None = None
) -> str | None:
    """Fail before any work: the GIAB genome of the sample (None with a custom truth), or a clear error.

    sample_id and file become path components under out_dir, so they must be plain names.
    """
    check_safe_name(sample_id, "sample_id")
    if file is not None:
        check_safe_name(file, "file")
    if not variant_types:
        raise ValueError("variant_types is empty: choose 'small', 'sv' or both")
    if truth is not None:
        return find_genome(sample_id)
    hg = resolve_genome(sample_id)
    if "sv" in variant_types:
        catalogue.sv_truth(hg, build, get_settings().giab_base_url)
    return hg


@flow(name="giab_benchmark", flow_run_name="{sample_id}", validate_parameters=True)
def giab_benchmark(
    sample_id: str,
    source: str,
    file: str | None = None,
    build: Literal["GRCh38", "GRCh37"] = "GRCh38",
    variant_types: list[Literal["small", "sv"]] = ["small"],  # noqa: B006 - Prefect copies parameters per run
    engine: Literal["auto", "happy", "bcftools"] = "auto",
    truth: TruthSet | None = None,
    out_dir: str | Path | None = None,
    aws_credentials: AwsCredentials | None = None,
    tool_images: ToolImages | None = None,
    batch: AwsBatch | None = None,
) -> Path | str:
    """Benchmark one sample's calls against its truth set; returns the path (s3:// URI) of metrics.csv.

    Args:
        sample_id: The lab's sample id, e.g. NA24143_Lib3_Rep1 (-> HG004); NA and HG ids, any suffix. Letters,
            digits, '.', '_' and '-' only (it names the output directory).
        source: s3://bucket/prefix or a local directory holding the sample's VCF/gVCF (+ index).
        file: File name in `source` (no directories) to use when several files match the sample.
        build: Genome build of the calls and of the truth set.
        variant_types: small (hap.py or the local engine) and/or sv (truvari; GIAB HG002 Tier1 v0.6 on GRCh37,
            CMRG v1.00 on GRCh38).
        engine: auto = hap.py when it can run here (on PATH, or an image with a working container engine), else
            the local bcftools engine; the run log says which and why.
        truth: Your own truth VCF + BED (URIs), for samples that are not GIAB.
        out_dir: Results root, a directory or an s3://bucket/prefix; each run writes <out_dir>/<sample_id>/run-<key>/
            (default <data_dir>/giab). A rerun with the same inputs, truth and engine finds its finished run and does
            nothing. With s3:// the run is computed in local scratch and uploaded, its manifest last (on ECS).
        aws_credentials: A prefect-aws AwsCredentials block for s3:// URIs (default: the environment's).
        tool_images: A ToolImages block (e.g. hap.py in its official image).
        batch: An AwsBatch block: the tools it lists (e.g. truvari, hap.py) run as AWS Batch jobs.
    """
    hg = check_request(sample_id, build, list(variant_types), truth, file)
    remote_out = str(out_dir).rstrip("/") if s3_publish.is_remote(out_dir) else None
    if remote_out is not None:
        sample_dir = s3_publish.scratch_dir(remote_out, get_settings().data_dir) / sample_id
    else:
        sample_dir = Path(out_dir or get_settings().data_dir / "giab") / sample_id
    logger = get_run_logger()
    with tool_images.applied() if tool_images is not None else nullcontext(), batch_for(batch):
        inputs = locate_inputs(source, sample_id, list(variant_types), file, aws_credentials)
        chosen = None
        if "small" in variant_types:
            chosen, why = small.choose_engine(engine)
            logger.info("small-variant engine: %s (requested %s): %s", chosen, engine, why)
        identity = runs.identity(
            sample_id, hg, build, list(variant_types), chosen, inputs, truth.vcf if truth else None,
            truth.bed if truth else None,
        )
        key = runs.run_key(identity)
        if remote_out is not None and (done_uri := _s3_task(finished_on_s3)(remote_out, sample_id, key,
                                                                          aws_credentials)):
            logger.info("%s is up to date: run %s on S3 has the same inputs, truth and engine; nothing to do",
                        sample_id, done_uri.rsplit("/", 1)[0])
            return done_uri
        done = runs.finished(sample_dir, key)
        if done is not None and remote_out is not None:  # finished here, not uploaded (a killed task): upload it
            metrics_uri = _s3_task(upload_run)(done, remote_out, sample_id, key, aws_credentials)
            s3_publish.drop_scratch(done)
            return metrics_uri
        if done is not None:
            logger.info("%s is up to date: run %s has the same inputs, truth and engine; nothing to do", sample_id,
                        done)
            return done / "metrics.csv"
        run = runs.start(sample_dir, key)
        try:
            refs = ensure_references(
                build, hg, list(variant_types), truth.vcf if truth else None, truth.bed if truth else None,
                aws_credentials,
            )
            comparisons = {}
            if "small" in variant_types:
                staged = stage_query(inputs["small"], run / "input", aws_credentials)
                query = prepare_query(staged, sample_id, run / "query")
                comparisons["small"] = (benchmark_small, {"engine": chosen, "truth": refs.small, "query": query,
                                                          "fasta": refs.fasta, "out_dir": run, "build": build})
            if "sv" in variant_types:
                staged_sv = stage_query(inputs["sv"], run / "input", aws_credentials)
                comparisons["sv"] = (benchmark_sv, {"truth": refs.sv, "query": staged_sv, "fasta": refs.fasta,
                                                    "out_dir": run})
            results = compare_concurrently(comparisons, batch, tool_images)
            rows = write_metrics(sample_id, hg or "custom", build, run, results.get("small"), results.get("sv"))
        except BaseException:
            runs.discard(run)
            raise
        final = runs.finish(run, sample_dir, key, identity)
    if remote_out is not None:
        metrics_uri = _s3_task(upload_run)(final, remote_out, sample_id, key, aws_credentials)
        publish(sample_id, hg or "custom", build, final, rows, where=metrics_uri.rsplit("/", 1)[0])
        s3_publish.drop_scratch(final)  # on S3 now; a process worker's disk does not fill with scratch runs
        logger.info("%s benchmarked: %s", sample_id, metrics_uri)
        return metrics_uri
    publish(sample_id, hg or "custom", build, final, rows)
    logger.info("%s benchmarked: %s", sample_id, final)
    return final / "metrics.csv"


def _s3_task(t):
    """An S3 task of the flow under the project's retry policy (not retried: a permanent S3 error, a bad
    manifest)."""
    from genoflows.fetch import PermanentFetchError

    return t.with_options(**transient_retry_options(PermanentFetchError))


def compare_concurrently(comparisons: dict, batch: AwsBatch | None, tool_images: ToolImages | None) -> dict:
    """Run the comparisons (name -> (task, parameters)) at the same time on the fan-out runner; their results by
    name. The blocks go to each task explicitly: a Dask/Ray worker does not see the flow's context. The first
    failure is raised after all have finished, so no comparison is left running in the run directory."""
    with fan_out_runner(max(1, len(comparisons))) as runner:
        futures = {name: runner.submit(t, parameters={**params, "batch": batch, "tool_images": tool_images})
                   for name, (t, params) in comparisons.items()}
        wait(list(futures.values()))
        return {name: future.result() for name, future in futures.items()}
