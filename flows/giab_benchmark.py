"""giab_benchmark: a lab's calls for a GIAB sample -> truth fetched and verified -> hap.py/local engine/truvari -> metrics.

    from flows.giab_benchmark import giab_benchmark
    giab_benchmark(sample_id="NA24143_Lib3_Rep1", source="s3://lab-bucket/run42")

Outputs land in `<out_dir>/<sample_id>/`: the staged input, each engine's own files, `metrics.csv` (long format)
and `provenance.jsonl`. Unknown samples without `truth`, and SV requests with no truth set, fail before any download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, Field

from blocks.tool_images import using_tool_images
from genoflows.giab import catalogue
from genoflows.giab.samples import check_safe_name, find_genome, resolve_genome
from genoflows.settings import get_settings
from tasks.giab import benchmark_small, benchmark_sv, ensure_references, export, prepare_query, stage_query


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
    out_dir: Path | None = None,
    aws_credentials_block: str | None = None,
    tool_images_block: str | None = None,
) -> Path:
    """Benchmark one sample's calls against its truth set; returns the path of metrics.csv.

    Args:
        sample_id: The lab's sample id, e.g. NA24143_Lib3_Rep1 (-> HG004); NA and HG ids, any suffix. Letters,
            digits, '.', '_' and '-' only (it names the output directory).
        source: s3://bucket/prefix or a local directory holding the sample's VCF/gVCF (+ index).
        file: File name in `source` (no directories) to use when several files match the sample.
        build: Genome build of the calls and of the truth set.
        variant_types: small (hap.py or the local engine) and/or sv (truvari; GIAB has HG002 GRCh37 only).
        engine: auto = hap.py when on PATH or configured as an image, else the local bcftools engine.
        truth: Your own truth VCF + BED (URIs), for samples that are not GIAB.
        out_dir: Results root; the run writes to <out_dir>/<sample_id>/ (default <data_dir>/giab).
        aws_credentials_block: Name of a saved prefect-aws AwsCredentials block for s3:// URIs.
        tool_images_block: Name of a saved ToolImages block (e.g. hap.py in its official image).
    """
    hg = check_request(sample_id, build, list(variant_types), truth, file)
    sample_dir = Path(out_dir or get_settings().data_dir / "giab") / sample_id
    with using_tool_images(tool_images_block):
        refs = ensure_references(
            build, hg, list(variant_types), truth.vcf if truth else None, truth.bed if truth else None,
            aws_credentials_block,
        )
        small_result = sv_result = None
        if "small" in variant_types:
            staged = stage_query(source, sample_id, sample_dir / "input", "small", file, aws_credentials_block)
            query = prepare_query(staged, sample_id, sample_dir / "query")
            small_result = benchmark_small(engine, refs.small, query, refs.fasta, sample_dir)
        if "sv" in variant_types:
            sv_file = file if variant_types == ["sv"] else None
            staged_sv = stage_query(source, sample_id, sample_dir / "input", "sv", sv_file, aws_credentials_block)
            sv_result = benchmark_sv(refs.sv, staged_sv, refs.fasta, sample_dir)
    return export(sample_id, hg or "custom", build, sample_dir, small_result, sv_result)
