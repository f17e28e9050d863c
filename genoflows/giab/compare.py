"""The local small-variant engine: normalise both sides (`normalise.py`), match and count them (`match.py`).

Used when hap.py is not available (it is Python 2 and ships only as conda/Docker). It writes hap.py's summary.csv
and `fp_fn.tsv` (every FN and FP of the ALL view). The counting rules, and where and why the numbers can differ
from hap.py: docs/giab-local-engine.md.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pysam

from genoflows.files import atomic_output, temp_path
from genoflows.giab.contigs import ContigMismatch, bed_contigs, fasta_contigs, rename_plan, vcf_contigs
from genoflows.giab.match import (
    FILTERS,
    INDEL,
    SNP,
    Alleles,
    ContigReader,
    Counts,
    contigs_in_order,
    count_contig,
    details_header,
    dump_calls,
    empty_calls,
    iter_contigs,
)
from genoflows.giab.normalise import ReferenceMismatch, prepare_side
from genoflows.giab.regions import Everywhere, Regions
from genoflows.tools.happy import SummaryRow, write_summary

Log = Callable[[str], None]
ENGINE_NAME = "bcftools"
__all__ = ["ENGINE_NAME", "ReferenceMismatch", "SmallResult", "compare_small", "summary_rows"]


@dataclass
class SmallResult:
    """What the local engine produced: hap.py-format rows, where the files are, and seconds per phase."""

    summary_csv: Path
    rows: list[SummaryRow]
    counts: dict[tuple[str, str], Counts]
    details_tsv: Path
    files: list[Path] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def summary_rows(counts: dict[tuple[str, str], Counts]) -> list[SummaryRow]:
    """hap.py's summary metrics from the counts (doc/happy.md formulas; ratios NaN -> None as hap.py blanks)."""
    rows = []
    for vtype in (INDEL, SNP):
        for flt in FILTERS:
            c = counts[(vtype, flt)]
            recall = _ratio(c.truth_tp, c.truth_tp + c.truth_fn)
            precision = _ratio(c.query_tp, c.query_tp + c.query_fp)
            f1 = (
                _ratio(2 * recall * precision, recall + precision)
                if recall is not None and precision is not None
                else None
            )
            values = {
                "TRUTH.TOTAL": c.truth_total,
                "TRUTH.TP": c.truth_tp,
                "TRUTH.FN": c.truth_fn,
                "QUERY.TOTAL": c.query_total,
                "QUERY.FP": c.query_fp,
                "QUERY.UNK": c.query_unk,
                "FP.gt": c.fp_gt,
                "FP.al": c.fp_al,
                "METRIC.Recall": recall,
                "METRIC.Precision": precision,
                "METRIC.Frac_NA": _ratio(c.query_unk, c.query_total),
                "METRIC.F1_Score": f1,
                "TRUTH.TOTAL.TiTv_ratio": _ratio(c.truth_ti, c.truth_tv) if vtype == SNP else None,
                "QUERY.TOTAL.TiTv_ratio": _ratio(c.query_ti, c.query_tv) if vtype == SNP else None,
                "TRUTH.TOTAL.het_hom_ratio": _ratio(c.truth_het, c.truth_homalt),
                "QUERY.TOTAL.het_hom_ratio": _ratio(c.query_het, c.query_homalt),
            }
            rows.append(SummaryRow(vtype, flt, {k: (float(v) if v is not None else None) for k, v in values.items()}))
    return rows


def confident_regions(bed: Path | None, ref_contigs: list[str], *, log: Log | None = None) -> Regions:
    """The BED as Regions, its contigs renamed to the reference's (regions on contigs it lacks are ignored)."""
    if bed is None:
        return Everywhere()
    mapping, missing = rename_plan(bed_contigs(bed), ref_contigs)
    if log and mapping:
        log(f"confident {Path(bed).name} names contigs differently from the reference; renaming "
            + ", ".join(f"{a}->{b}" for a, b in list(mapping.items())[:4]) + (" ..." if len(mapping) > 4 else ""))
    if log and missing:
        log(f"confident {Path(bed).name}: ignoring regions on contigs absent from the reference: {', '.join(missing[:8])}")
    return Regions.from_bed(bed, rename=mapping)


def _first_sample(vcf: Path) -> str | None:
    with pysam.VariantFile(str(vcf)) as vf:
        samples = list(vf.header.samples)
    return samples[0] if len(samples) > 1 else None


def compare_small(
    truth_vcf: Path,
    query_vcf: Path,
    reference: Path,
    out_dir: Path,
    *,
    confident_bed: Path | None,
    cache_dir: Path | None = None,
    build: str | None = None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> SmallResult:
    """Benchmark `query_vcf` (variant sites, indexed) against `truth_vcf` within `confident_bed`.

    Writes `<out_dir>/summary.csv` (hap.py's format) and `<out_dir>/fp_fn.tsv` (every FN and FP, ALL view).
    `build` is the build the run asked for, checked against `##assembly` lines when the reference's own contig
    lengths do not say which build it is.
    """
    out_dir = Path(out_dir)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    regions = confident_regions(confident_bed, ref_contigs := fasta_contigs(reference), log=log)
    kw = {"work_dir": work, "log": log, "provenance_dir": provenance_dir, "build": build}
    truth_norm = prepare_side(truth_vcf, reference, ref_contigs, label="truth", cache_dir=cache_dir, **kw)
    phases["normalise truth"] = time.monotonic() - t0
    t0 = time.monotonic()
    query_norm = prepare_side(query_vcf, reference, ref_contigs, label="query", **kw)
    phases["normalise query"] = time.monotonic() - t0

    t0 = time.monotonic()
    truth_contigs, query_contigs = vcf_contigs(truth_norm), vcf_contigs(query_norm)
    if query_contigs and not set(query_contigs) & set(truth_contigs):
        raise ContigMismatch(
            f"query {query_vcf} shares no contig with truth {truth_vcf} (query: {', '.join(query_contigs[:5])}; "
            f"truth: {', '.join(truth_contigs[:5])}): nothing could match; check the sample and the genome build"
        )
    counts: dict[tuple[str, str], Counts] = defaultdict(Counts)
    details_path = out_dir / "fp_fn.tsv"
    dumps = {side: temp_path(work / f"{side}.calls.tsv") for side in ("truth", "query")}  # unique, removed below
    try:
        # Both sides' fields at once (two bcftools processes, one per core), then one contig at a time.
        with ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(dump_calls, vcf, dumps[side], sample=_first_sample(vcf), log=log,
                                provenance_dir=provenance_dir)
                    for side, vcf in (("truth", truth_norm), ("query", query_norm))]
            for job in jobs:
                job.result()
        alleles = Alleles()
        readers = {side: ContigReader(iter_contigs(dumps[side], alleles), lambda: alleles.table()["small"])
                   for side in dumps}
        with atomic_output(details_path) as details_tmp, open(details_tmp, "w") as details:
            details.write(details_header())
            for chrom in contigs_in_order(set(truth_contigs) | set(query_contigs), ref_contigs):
                truth = readers["truth"].get(chrom) if chrom in truth_contigs else empty_calls()
                query = readers["query"].get(chrom) if chrom in query_contigs else empty_calls()
                # hap.py uses only PASS (or `.`) truth records unless --usefiltered-truth: a FILTERed truth record
                # is not part of the benchmark, neither as a truth variant nor as a local match for FP.al.
                count_contig(chrom, truth.take(truth.passed), query, regions, counts, alleles, alleles.table(), details)
    finally:
        for dump in dumps.values():
            dump.unlink(missing_ok=True)
    phases["match and count"] = time.monotonic() - t0

    rows = summary_rows(counts)
    summary = write_summary(rows, out_dir / "summary.csv")
    if log:
        for r in rows:
            if r.filter == "PASS":
                v = r.values
                log(
                    f"local engine {r.type} PASS: TP {v['TRUTH.TP']:.0f} FN {v['TRUTH.FN']:.0f} "
                    f"FP {v['QUERY.FP']:.0f} UNK {v['QUERY.UNK']:.0f} recall {_fmt(v['METRIC.Recall'])} "
                    f"precision {_fmt(v['METRIC.Precision'])}"
                )
    return SmallResult(summary, rows, dict(counts), details_path, files=[summary, details_path], phases=phases)


def _fmt(value: float | None) -> str:
    return "NA" if value is None else f"{value:.4f}"
