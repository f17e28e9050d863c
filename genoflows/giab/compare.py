"""The local small-variant engine: a record-level GA4GH comparison built on bcftools and pysam.

Used when hap.py is not available (it is Python 2 and ships only as conda/Docker). Both sides are normalised
the same way against the reference (left-align, split multi-allelics, decompose MNPs), then matched on
(chrom, pos, ref, alt) and genotype, and counted the way hap.py counts (shared/specs/giab-benchmarking.md
section 5): TP, FN, FP, FP.gt, FP.al, UNK outside the confident regions, SNP and INDEL, ALL and PASS, into
hap.py's summary.csv. Where and why the numbers can differ from hap.py: docs/giab-local-engine.md.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pysam
from filelock import FileLock

from genoflows.giab.contigs import ContigMismatch, fasta_contigs, harmonise_bed, harmonise_vcf, vcf_contigs
from genoflows.giab.query import InputError, index_path
from genoflows.toolrun import ToolError, run_tool
from genoflows.tools import bcftools
from genoflows.tools.happy import SummaryRow, write_summary

Log = Callable[[str], None]
SNP, INDEL = "SNP", "INDEL"
FILTERS = ("ALL", "PASS")
_TRANSITIONS = {("A", "G"), ("G", "A"), ("C", "T"), ("T", "C")}
ENGINE_NAME = "bcftools"


class ReferenceMismatch(ValueError):
    """REF alleles in a VCF disagree with the reference FASTA: wrong build or wrong reference."""


@dataclass(frozen=True)
class Call:
    """One normalised biallelic record: its allele and genotype as (ALT allele copies, ploidy)."""

    pos: int
    ref: str
    alt: str
    alt_count: int
    ploidy: int
    passed: bool

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.pos, self.ref, self.alt)

    @property
    def vtype(self) -> str:
        return variant_type(self.ref, self.alt)

    @property
    def is_het(self) -> bool:
        return self.alt_count < self.ploidy


def variant_type(ref: str, alt: str) -> str:
    """SNP for a single-base substitution; everything else (indels, complex, leftover MNPs) counts as INDEL."""
    return SNP if len(ref) == 1 and len(alt) == 1 else INDEL


def is_transition(ref: str, alt: str) -> bool:
    return (ref, alt) in _TRANSITIONS


def confident_span(pos: int, ref: str, alt: str) -> tuple[int, int]:
    """0-based half-open reference span that must lie inside a confident region (hap.py trims alleles first).

    Substitutions: their bases. Deletions: the deleted bases (not the padding base). Insertions: both bases
    flanking the insertion point, as hap.py requires.
    """
    if len(ref) == len(alt):
        return pos - 1, pos - 1 + len(ref)
    if len(ref) == 1 and alt[0] == ref:  # insertion after the padding base
        return pos - 1, pos + 1
    if len(alt) == 1 and ref[0] == alt:  # deletion after the padding base
        return pos, pos - 1 + len(ref)
    return pos - 1, pos - 1 + len(ref)


class Regions:
    """Merged confident intervals per contig; `contains` asks whether a span lies inside one interval."""

    def __init__(self, intervals: dict[str, list[tuple[int, int]]]):
        self._starts: dict[str, list[int]] = {}
        self._ends: dict[str, list[int]] = {}
        for chrom, ivs in intervals.items():
            merged: list[list[int]] = []
            for s, e in sorted(ivs):
                if merged and s <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], e)
                else:
                    merged.append([s, e])
            self._starts[chrom] = [m[0] for m in merged]
            self._ends[chrom] = [m[1] for m in merged]

    @classmethod
    def from_bed(cls, bed: Path) -> Regions:
        intervals: dict[str, list[tuple[int, int]]] = defaultdict(list)
        opener = gzip.open if str(bed).endswith(".gz") else open
        with opener(bed, "rt") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip() or line.startswith(("#", "track", "browser")):
                    continue
                parts = line.split("\t")
                try:
                    intervals[parts[0]].append((int(parts[1]), int(parts[2])))
                except (IndexError, ValueError):
                    raise InputError(f"{bed} line {n} is not BED (chrom, start, end): {line.strip()[:80]!r}") from None
        return cls(intervals)

    def contains(self, chrom: str, start: int, end: int) -> bool:
        starts = self._starts.get(chrom)
        if not starts:
            return False
        i = bisect.bisect_right(starts, start) - 1
        return i >= 0 and end <= self._ends[chrom][i]


class _Everywhere(Regions):
    def __init__(self) -> None:
        super().__init__({})

    def contains(self, chrom: str, start: int, end: int) -> bool:
        return True


@dataclass
class Counts:
    """Everything hap.py's summary row needs, for one (type, filter)."""

    truth_total: int = 0
    truth_tp: int = 0
    truth_fn: int = 0
    query_total: int = 0
    query_tp: int = 0
    query_fp: int = 0
    query_unk: int = 0
    fp_gt: int = 0
    fp_al: int = 0
    truth_ti: int = 0
    truth_tv: int = 0
    truth_het: int = 0
    truth_homalt: int = 0
    query_ti: int = 0
    query_tv: int = 0
    query_het: int = 0
    query_homalt: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class SmallResult:
    """What the local engine produced: hap.py-format rows and where the files are."""

    summary_csv: Path
    rows: list[SummaryRow]
    counts: dict[tuple[str, str], Counts]
    details_tsv: Path
    files: list[Path] = field(default_factory=list)


# --- reading ------------------------------------------------------------------------------------------------


def _alt_slots(rec: pysam.VariantRecord) -> tuple[frozenset[int], int]:
    """Which genotype positions carry the ALT (1/0 -> {0}, 0/1 -> {1}, 1/1 -> {0, 1}), and the ploidy."""
    if not rec.samples:
        return frozenset(), 0
    gt = rec.samples[0].get("GT") or ()
    return frozenset(i for i, a in enumerate(gt) if a == 1), len(gt)


def read_calls(vf: pysam.VariantFile, chrom: str) -> dict[tuple[int, str, str], Call]:
    """The normalised calls on `chrom` that carry the ALT allele, keyed by (pos, ref, alt).

    Symbolic alleles (`<DEL>`) and spanning deletions (`*`) are not small variants and are skipped. Records
    that land on the same key merge by haplotype: a `1/2` MNP whose alleles share a base splits into `1/0` +
    `0/1` of that base, which together are `1/1`; a record repeated on the same haplotype (`0/1` twice) stays
    `0/1`. The merged call counts as PASS only when every part passed.
    """
    calls: dict[tuple[int, str, str], Call] = {}
    slots: dict[tuple[int, str, str], frozenset[int]] = {}
    try:
        records = vf.fetch(chrom)
    except ValueError:
        return calls
    for rec in records:
        if not rec.alts or len(rec.alts) != 1:
            continue
        alt = rec.alts[0].upper()
        if alt.startswith("<") or alt == "*" or "[" in alt or "]" in alt:
            continue
        alt_slots, ploidy = _alt_slots(rec)
        if not alt_slots:
            continue
        filters = list(rec.filter.keys())
        call = Call(rec.pos, rec.ref.upper(), alt, len(alt_slots), ploidy, filters in ([], ["PASS"]))
        prev = calls.get(call.key)
        if prev is not None:
            alt_slots |= slots[call.key]
            ploidy = max(prev.ploidy, call.ploidy)
            call = Call(call.pos, call.ref, alt, len(alt_slots), ploidy, prev.passed and call.passed)
        calls[call.key] = call
        slots[call.key] = alt_slots
    return calls


# --- matching and counting ----------------------------------------------------------------------------------


class _TruthSpans:
    """Reference spans of the truth calls on one contig, to find query calls that overlap a truth variant."""

    def __init__(self, calls: dict[tuple[int, str, str], Call]):
        spans = sorted((c.pos - 1, c.pos - 1 + len(c.ref)) for c in calls.values())
        self._starts = [s for s, _ in spans]
        self._spans = spans
        self._longest = max((e - s for s, e in spans), default=0)

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self._starts, start - self._longest)
        while i < len(self._spans) and self._spans[i][0] < end:
            s, e = self._spans[i]
            if e > start and s < end:
                return True
            i += 1
        return False


def count_contig(
    chrom: str,
    truth: dict[tuple[int, str, str], Call],
    query: dict[tuple[int, str, str], Call],
    regions: Regions,
    counts: dict[tuple[str, str], Counts],
    details: list[tuple] | None = None,
) -> None:
    """Add one contig's decisions to `counts` for both the ALL and the PASS view of the query.

    GA4GH genotype-level rules: same allele and genotype -> TP; same allele, other genotype -> truth FN +
    query FP counted as FP.gt; no allele match -> FN / FP, the FP counted as FP.al when it overlaps a truth
    variant. Confident regions apply after matching: truth outside is ignored, query outside is UNK.
    """
    spans = _TruthSpans(truth)
    for flt in FILTERS:
        view = query if flt == "ALL" else {k: c for k, c in query.items() if c.passed}
        for key, t in truth.items():
            if not regions.contains(chrom, *confident_span(*key)):
                continue
            row = counts[(t.vtype, flt)]
            row.truth_total += 1
            _tally_class(row, t, "truth")
            q = view.get(key)
            if q is not None and (q.alt_count, q.ploidy) == (t.alt_count, t.ploidy):
                row.truth_tp += 1
            else:
                row.truth_fn += 1
                if details is not None and flt == "ALL":
                    details.append((chrom, t.pos, t.ref, t.alt, t.vtype, "TRUTH", "FN", "gt" if q else "", ""))
        for key, q in view.items():
            row = counts[(q.vtype, flt)]
            row.query_total += 1
            _tally_class(row, q, "query")
            if not regions.contains(chrom, *confident_span(*key)):
                row.query_unk += 1
                continue
            t = truth.get(key)
            if t is not None and (q.alt_count, q.ploidy) == (t.alt_count, t.ploidy):
                row.query_tp += 1
                continue
            row.query_fp += 1
            if t is not None:
                row.fp_gt += 1
                kind = "gt"
            elif spans.overlaps(q.pos - 1, q.pos - 1 + len(q.ref)):
                row.fp_al += 1
                kind = "al"
            else:
                kind = ""
            if details is not None and flt == "ALL":
                details.append((chrom, q.pos, q.ref, q.alt, q.vtype, "QUERY", "FP", kind, "PASS" if q.passed else "FILTERED"))


def _tally_class(row: Counts, call: Call, side: str) -> None:
    if call.vtype == SNP:
        attr = "ti" if is_transition(call.ref, call.alt) else "tv"
        setattr(row, f"{side}_{attr}", getattr(row, f"{side}_{attr}") + 1)
    attr = "het" if call.is_het else "homalt"
    setattr(row, f"{side}_{attr}", getattr(row, f"{side}_{attr}") + 1)


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


# --- normalisation ------------------------------------------------------------------------------------------


def normalise(
    vcf: Path,
    reference: Path,
    dst: Path,
    *,
    label: str,
    work_dir: Path,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> Path:
    """bcftools: split multi-allelics and left-align (`norm -f -m -any`), decompose MNPs (`norm -a`), sort, index.

    A REF allele that disagrees with the reference stops with ReferenceMismatch naming the file.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    split = work_dir / f".{label}.split.bcf"
    atoms = work_dir / f".{label}.atoms.bcf"
    tmp = dst.with_name(f".{dst.name}.tmp.vcf.gz")
    try:
        run_tool(bcftools.norm_argv(vcf, split, reference), log=log, provenance_dir=provenance_dir)
        run_tool(bcftools.atomize_argv(split, atoms, reference), log=log, provenance_dir=provenance_dir)
    except ToolError as exc:
        detail = " ".join(exc.tail).strip()
        if "mismatch" in detail.lower() or "REF_SEQ" in detail:
            raise ReferenceMismatch(
                f"{label} {vcf}: REF alleles disagree with the reference {reference} ({detail[-300:]}). The "
                f"{label} was probably called on another genome build or reference: benchmark it against the "
                f"matching build."
            ) from exc
        raise
    sort_tmp = work_dir / f".{label}.sort"
    sort_tmp.mkdir(exist_ok=True)
    run_tool(bcftools.sort_argv(atoms, tmp, sort_tmp), log=log, provenance_dir=provenance_dir)
    run_tool(bcftools.index_argv(tmp), log=log, provenance_dir=provenance_dir)
    Path(f"{tmp}.tbi").replace(f"{dst}.tbi")
    tmp.replace(dst)
    for p in (split, atoms):
        p.unlink(missing_ok=True)
    shutil.rmtree(sort_tmp, ignore_errors=True)
    return dst


def _cached_truth(truth: Path, reference: Path, cache_dir: Path) -> Path:
    """Where the normalised truth for this truth+reference pair is cached (normalising GIAB takes minutes)."""
    key_src = "|".join(
        f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (Path(truth), Path(reference))
    )
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    name = Path(truth).name.removesuffix(".vcf.gz")
    return cache_dir / "giab-normalised" / key / f"{name}.norm.vcf.gz"


def _require_index(vcf: Path, label: str) -> None:
    if index_path(vcf) is None:
        raise InputError(f"{label} {vcf} has no .tbi/.csi index next to it: index it with `tabix -p vcf {vcf}`")


def prepare_side(
    vcf: Path,
    reference: Path,
    ref_contigs: list[str],
    *,
    label: str,
    work_dir: Path,
    cache_dir: Path | None = None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> Path:
    """Rename contigs to the reference's if needed, then normalise (cached for the truth when cache_dir is set)."""
    _require_index(vcf, label)
    if cache_dir is not None:
        dst = _cached_truth(vcf, reference, cache_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(dst.parent / f".{dst.name}.lock")):
            if dst.exists() and Path(f"{dst}.tbi").exists():
                if log:
                    log(f"{label}: using the normalised copy cached at {dst}")
                return dst
            renamed = harmonise_vcf(vcf, ref_contigs, label=label, work_dir=work_dir, log=log, provenance_dir=provenance_dir)
            return normalise(renamed, reference, dst, label=label, work_dir=work_dir, log=log, provenance_dir=provenance_dir)
    renamed = harmonise_vcf(vcf, ref_contigs, label=label, work_dir=work_dir, log=log, provenance_dir=provenance_dir)
    return normalise(
        renamed, reference, work_dir / f"{label}.norm.vcf.gz", label=label, work_dir=work_dir, log=log,
        provenance_dir=provenance_dir,
    )


# --- the engine ---------------------------------------------------------------------------------------------

DETAIL_COLUMNS = ("chrom", "pos", "ref", "alt", "type", "side", "decision", "mismatch", "query_filter")


def compare_small(
    truth_vcf: Path,
    query_vcf: Path,
    reference: Path,
    out_dir: Path,
    *,
    confident_bed: Path | None,
    cache_dir: Path | None = None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> SmallResult:
    """Benchmark `query_vcf` (variant sites, indexed) against `truth_vcf` within `confident_bed`.

    Writes `<out_dir>/summary.csv` (hap.py's format) and `<out_dir>/fp_fn.tsv` (every FN and FP, ALL view).
    """
    out_dir = Path(out_dir)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    ref_contigs = fasta_contigs(reference)
    kw = {"work_dir": work, "log": log, "provenance_dir": provenance_dir}
    truth_norm = prepare_side(truth_vcf, reference, ref_contigs, label="truth", cache_dir=cache_dir, **kw)
    query_norm = prepare_side(query_vcf, reference, ref_contigs, label="query", **kw)

    truth_contigs, query_contigs = vcf_contigs(truth_norm), vcf_contigs(query_norm)
    if query_contigs and not set(query_contigs) & set(truth_contigs):
        raise ContigMismatch(
            f"query {query_vcf} shares no contig with truth {truth_vcf} (query: {', '.join(query_contigs[:5])}; "
            f"truth: {', '.join(truth_contigs[:5])}): nothing could match; check the sample and the genome build"
        )
    if confident_bed is not None:
        bed = harmonise_bed(confident_bed, ref_contigs, label="confident", work_dir=work, log=log)
        regions: Regions = Regions.from_bed(bed)
    else:
        regions = _Everywhere()

    counts: dict[tuple[str, str], Counts] = defaultdict(Counts)
    details: list[tuple] = []
    order = {c: i for i, c in enumerate(ref_contigs)}
    contigs = sorted(set(truth_contigs) | set(query_contigs), key=lambda c: order.get(c, len(order)))
    with pysam.VariantFile(str(truth_norm)) as tvf, pysam.VariantFile(str(query_norm)) as qvf:
        for chrom in contigs:
            # hap.py uses only PASS (or `.`) truth records unless --usefiltered-truth: a FILTERed truth record
            # is not part of the benchmark, neither as a truth variant nor as a local match for FP.al.
            truth = {k: c for k, c in read_calls(tvf, chrom).items() if c.passed}
            count_contig(chrom, truth, read_calls(qvf, chrom), regions, counts, details)

    rows = summary_rows(counts)
    summary = write_summary(rows, out_dir / "summary.csv")
    details_path = _write_details(details, out_dir / "fp_fn.tsv")
    if log:
        for r in rows:
            if r.filter == "PASS":
                v = r.values
                log(
                    f"local engine {r.type} PASS: TP {v['TRUTH.TP']:.0f} FN {v['TRUTH.FN']:.0f} "
                    f"FP {v['QUERY.FP']:.0f} UNK {v['QUERY.UNK']:.0f} recall {_fmt(v['METRIC.Recall'])} "
                    f"precision {_fmt(v['METRIC.Precision'])}"
                )
    return SmallResult(summary, rows, dict(counts), details_path, files=[summary, details_path])


def _fmt(value: float | None) -> str:
    return "NA" if value is None else f"{value:.4f}"


def _write_details(details: list[tuple], path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write("\t".join(DETAIL_COLUMNS) + "\n")
        for row in details:
            fh.write("\t".join(str(x) for x in row) + "\n")
    tmp.replace(path)
    return path
