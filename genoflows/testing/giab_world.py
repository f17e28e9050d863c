"""A small, seeded GIAB world for the demo and the tests, with the answers known by construction.

It writes a random reference genome (contigs 1 and 2, `chr`-prefixed for GRCh38), per GIAB genome a truth VCF +
confident BED and a lab gVCF with planted differences (missed calls, false positives inside and outside the BED,
genotype and allele errors, FILTERed calls, a right-shifted indel on each side, multi-allelic sites, an MNP, a
multi-allelic MNP whose alleles share a base),
and an SV truth/query pair for truvari. Every planted event records what hap.py's summary must count for it,
so `GenomeWorld.expected` is the exact answer per type and filter - computed from the plan, not by running
the engine under test.

`build_world` lays the files out as a GIAB `release/` mirror (NCBI names, md5sum files) plus a lab directory;
`upload_lab_files` copies the lab directory to an S3 bucket.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pysam

from genoflows.giab.catalogue import small_truth, sv_truth

BASES = "ACGT"
_TRANSITION = {"A": "G", "G": "A", "C": "T", "T": "C"}
CONTIG_LENGTHS = {"1": 120_000, "2": 80_000}
# Confident regions per contig (0-based half-open); the gap on contig 1 and the tail of contig 2 are outside.
CONFIDENT = {"1": [(1_000, 50_000), (55_000, 110_000)], "2": [(1_000, 75_000)]}
OUTSIDE = {"1": (50_300, 54_700), "2": (75_300, 79_000)}
# Engineered repeats where an indel has several equivalent positions (1-based position of the anchor base).
HOMOPOLYMER_A6 = ("1", 10_050)  # C AAAAAA G: deleting one A can be written at 10050 (left) or 10055 (right)
HOMOPOLYMER_T4 = ("1", 10_350)  # C TTTT G: inserting a T can be written at 10350 (left) or 10354 (right)
SV_CONFIDENT = {"1": [(1_000, 70_000), (80_000, 119_000)]}
REFERENCE_NAMES = {
    "GRCh38": "GCA_000001405.15_GRCh38_no_alt_analysis_set.fasta.gz",
    "GRCh37": "hs37d5.fa.gz",
}
DEMO_SAMPLES = {"HG002": "NA24385_Lib1_Rep1", "HG004": "NA24143_Lib3_Rep1"}

COUNT_KEYS = ("TRUTH.TOTAL", "TRUTH.TP", "TRUTH.FN", "QUERY.TOTAL", "QUERY.FP", "QUERY.UNK", "FP.gt", "FP.al")
CLASS_KEYS = tuple(f"{side}.TOTAL.{k}" for side in ("TRUTH", "QUERY") for k in ("ti", "tv", "het", "homalt"))


def contig_name(base: str, build: str) -> str:
    """GRCh38 files say chr1, GRCh37 (hs37d5) ones say 1."""
    return f"chr{base}" if build == "GRCh38" else base


# --- reference ----------------------------------------------------------------------------------------------


def make_reference(seed: int = 7) -> dict[str, str]:
    """Random contigs `1`, `2` with two engineered repeats for the left-alignment cases."""
    rng = random.Random(f"reference-{seed}")
    seqs = {name: [rng.choice(BASES) for _ in range(n)] for name, n in CONTIG_LENGTHS.items()}
    chrom, pos = HOMOPOLYMER_A6
    seqs[chrom][pos - 1 : pos + 7] = list("CAAAAAAG")
    chrom, pos = HOMOPOLYMER_T4
    seqs[chrom][pos - 1 : pos + 5] = list("CTTTTG")
    return {name: "".join(s) for name, s in seqs.items()}


def write_fasta(seqs: dict[str, str], path: Path, build: str) -> Path:
    """FASTA (60 columns) with build-specific contig names, gzipped when `path` ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(
        f">{contig_name(n, build)}\n" + "".join(s[i : i + 60] + "\n" for i in range(0, len(s), 60))
        for n, s in seqs.items()
    )
    if str(path).endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
            fh.write(text.encode())  # mtime=0: rebuilding the world gives the same bytes
    else:
        path.write_text(text)
        pysam.faidx(str(path))
    return path


# --- planted events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    """One VCF record before contig naming: base contig name, 1-based position, alleles, genotype, filter."""

    chrom: str
    pos: int
    ref: str
    alts: tuple[str, ...]
    gt: str
    filter: str = "PASS"


class Expected:
    """hap.py summary counts per (type, filter), accumulated event by event."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], dict[str, int]] = {
            (t, f): dict.fromkeys(COUNT_KEYS + CLASS_KEYS, 0) for t in ("SNP", "INDEL") for f in ("ALL", "PASS")
        }

    def _add(self, vtype: str, filters: tuple[str, ...], key: str, n: int = 1) -> None:
        for f in filters:
            self.counts[(vtype, f)][key] += n

    def _classes(self, side: str, vtype: str, het: bool, ti: bool | None, filters: tuple[str, ...]) -> None:
        if vtype == "SNP":
            self._add(vtype, filters, f"{side}.TOTAL.{'ti' if ti else 'tv'}")
        self._add(vtype, filters, f"{side}.TOTAL.{'het' if het else 'homalt'}")

    def truth(self, vtype: str, het: bool, ti: bool | None, decision: str, query_passed: bool = True) -> None:
        """A truth variant inside the confident regions: TP or FN (a TP matched by a filtered call is FN in PASS)."""
        both = ("ALL", "PASS")
        self._add(vtype, both, "TRUTH.TOTAL")
        self._classes("TRUTH", vtype, het, ti, both)
        if decision == "TP":
            self._add(vtype, ("ALL",), "TRUTH.TP")
            self._add(vtype, ("PASS",), "TRUTH.TP" if query_passed else "TRUTH.FN")
        else:
            self._add(vtype, both, "TRUTH.FN")

    def query(self, vtype: str, het: bool, ti: bool | None, decision: str, passed: bool = True) -> None:
        """A query call: TP, FP, FP.gt, FP.al or UNK; filtered calls count in ALL only."""
        filters = ("ALL", "PASS") if passed else ("ALL",)
        self._add(vtype, filters, "QUERY.TOTAL")
        self._classes("QUERY", vtype, het, ti, filters)
        if decision == "UNK":
            self._add(vtype, filters, "QUERY.UNK")
        elif decision.startswith("FP"):
            self._add(vtype, filters, "QUERY.FP")
            if decision in ("FP.gt", "FP.al"):
                self._add(vtype, filters, decision)


@dataclass
class GenomeWorld:
    """Truth and lab records of one genome, and the summary counts they must produce."""

    hg: str
    sample_id: str
    truth: list[Rec] = field(default_factory=list)
    query: list[Rec] = field(default_factory=list)
    expected: Expected = field(default_factory=Expected)
    events: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class _Planner:
    """Places events on free slots, 300 bp apart, so no two events interact."""

    def __init__(self, seqs: dict[str, str], rng: random.Random, world: GenomeWorld):
        self.seqs, self.rng, self.world = seqs, rng, world
        reserved = {HOMOPOLYMER_A6, HOMOPOLYMER_T4}
        self.inside = [
            (c, p)
            for c, ivs in CONFIDENT.items()
            for s, e in ivs
            for p in range(s + 1_000, e - 1_000, 300)
            if all(c != rc or abs(p - rp) > 150 for rc, rp in reserved)
        ]
        self.outside = [(c, p) for c, (s, e) in OUTSIDE.items() for p in range(s, e, 300)]
        rng.shuffle(self.inside)
        rng.shuffle(self.outside)

    def slot(self, outside: bool = False, ok=lambda c, p: True) -> tuple[str, int]:
        pool = self.outside if outside else self.inside
        for i, (c, p) in enumerate(pool):
            if ok(c, p):
                return pool.pop(i)
        raise RuntimeError("demo world ran out of slots")

    def base(self, c: str, p: int) -> str:
        return self.seqs[c][p - 1]

    def snp_alt(self, ref: str, transition: bool | None = None) -> tuple[str, bool]:
        ti = self.rng.random() < 0.67 if transition is None else transition
        alt = _TRANSITION[ref] if ti else self.rng.choice([b for b in BASES if b not in (ref, _TRANSITION[ref])])
        return alt, ti

    def insertion(self, c: str, p: int) -> tuple[str, str]:
        """A left-aligned insertion after base p: the inserted sequence must not end with the anchor base."""
        anchor = self.base(c, p)
        n = self.rng.randint(1, 6)
        seq = [self.rng.choice(BASES) for _ in range(n - 1)] + [self.rng.choice([b for b in BASES if b != anchor])]
        return anchor, anchor + "".join(seq)

    def deletion(self, c: str, p: int) -> tuple[str, str] | None:
        """A left-aligned deletion after base p (its last deleted base differs from the anchor), or None."""
        s = self.seqs[c]
        for n in self.rng.sample(range(1, 7), 6):
            if s[p - 1] != s[p + n - 1]:
                return s[p - 1 : p + n], s[p - 1]
        return None

    def indel(self, c: str, p: int) -> tuple[str, str]:
        return self.deletion(c, p) or self.insertion(c, p) if self.rng.random() < 0.5 else self.insertion(c, p)


def _gt(het: bool) -> str:
    return "0/1" if het else "1/1"


def plan_genome(seqs: dict[str, str], hg: str, sample_id: str, seed: int = 7) -> GenomeWorld:
    """Plant the events for one genome; `world.expected` is what a correct benchmark must count."""
    rng = random.Random(f"{hg}-{seed}")
    w = GenomeWorld(hg, sample_id)
    plan = _Planner(seqs, rng, w)
    exp = w.expected

    def snp_event(kind: str, n: int, *, het: bool | None = None, outside: bool = False) -> None:
        for _ in range(n):
            c, p = plan.slot(outside)
            ref = plan.base(c, p)
            alt, ti = plan.snp_alt(ref)
            h = rng.random() < 0.6 if het is None else het
            _apply(kind, w, exp, c, p, ref, alt, "SNP", h, ti, rng, plan)

    def indel_event(kind: str, n: int, *, het: bool | None = None, outside: bool = False) -> None:
        for _ in range(n):
            c, p = plan.slot(outside)
            ref, alt = plan.indel(c, p)
            h = rng.random() < 0.6 if het is None else het
            _apply(kind, w, exp, c, p, ref, alt, "INDEL", h, None, rng, plan)

    snp_event("tp", 60)
    indel_event("tp", 14)
    snp_event("tp_filtered", 3)
    indel_event("tp_filtered", 1)
    snp_event("fn", 5)
    indel_event("fn", 3)
    snp_event("fp", 4)
    indel_event("fp", 2)
    snp_event("fp_filtered", 2)
    snp_event("gt_error", 3, het=True)
    indel_event("gt_error", 1, het=False)
    snp_event("al_error", 2)
    snp_event("unk", 3, outside=True)
    indel_event("unk", 1, outside=True)
    snp_event("truth_outside_called", 2, outside=True)
    snp_event("truth_outside_missed", 2, outside=True)
    _special_events(w, exp, plan, rng)
    w.truth.sort(key=lambda r: (r.chrom, r.pos))
    w.query.sort(key=lambda r: (r.chrom, r.pos))
    return w


def _apply(kind, w, exp, c, p, ref, alt, vtype, het, ti, rng, plan) -> None:
    """Write the records of one simple event and book its expected counts."""
    w.events[f"{vtype}:{kind}"] += 1
    if kind == "tp":
        w.truth.append(Rec(c, p, ref, (alt,), _gt(het)))
        w.query.append(Rec(c, p, ref, (alt,), _gt(het), rng.choice(["PASS", "."])))
        exp.truth(vtype, het, ti, "TP")
        exp.query(vtype, het, ti, "TP")
    elif kind == "tp_filtered":
        w.truth.append(Rec(c, p, ref, (alt,), _gt(het)))
        w.query.append(Rec(c, p, ref, (alt,), _gt(het), "LowQual"))
        exp.truth(vtype, het, ti, "TP", query_passed=False)
        exp.query(vtype, het, ti, "TP", passed=False)
    elif kind == "fn":
        w.truth.append(Rec(c, p, ref, (alt,), _gt(het)))
        exp.truth(vtype, het, ti, "FN")
    elif kind in ("fp", "fp_filtered"):
        passed = kind == "fp"
        w.query.append(Rec(c, p, ref, (alt,), _gt(het), "PASS" if passed else "LowQual"))
        exp.query(vtype, het, ti, "FP", passed=passed)
    elif kind == "gt_error":  # same allele, other zygosity
        w.truth.append(Rec(c, p, ref, (alt,), _gt(het)))
        w.query.append(Rec(c, p, ref, (alt,), _gt(not het)))
        exp.truth(vtype, het, ti, "FN")
        exp.query(vtype, not het, ti, "FP.gt")
    elif kind == "al_error":  # same position, other ALT allele
        other, ti2 = plan.snp_alt(ref, transition=not ti)
        w.truth.append(Rec(c, p, ref, (alt,), _gt(het)))
        w.query.append(Rec(c, p, ref, (other,), _gt(het)))
        exp.truth(vtype, het, ti, "FN")
        exp.query(vtype, het, ti2, "FP.al")
    elif kind == "unk":  # a query call outside the confident regions
        w.query.append(Rec(c, p, ref, (alt,), _gt(het)))
        exp.query(vtype, het, ti, "UNK")
    elif kind == "truth_outside_called":  # truth outside is ignored, the matching call is UNK
        w.truth.append(Rec(c, p, ref, (alt,), _gt(het)))
        w.query.append(Rec(c, p, ref, (alt,), _gt(het)))
        exp.query(vtype, het, ti, "UNK")
    elif kind == "truth_outside_missed":
        w.truth.append(Rec(c, p, ref, (alt,), _gt(het)))
    else:
        raise ValueError(kind)


def _special_events(w: GenomeWorld, exp: Expected, plan: _Planner, rng: random.Random) -> None:
    """Representation cases: right-shifted indels, multi-allelic sites, MNPs against SNPs."""
    # Truth writes the A6 deletion right-shifted; the query left-aligned. Same variant after normalisation.
    c, p = HOMOPOLYMER_A6
    w.truth.append(Rec(c, p + 5, "AA", ("A",), "0/1"))
    w.query.append(Rec(c, p, "CA", ("C",), "0/1"))
    exp.truth("INDEL", True, None, "TP")
    exp.query("INDEL", True, None, "TP")
    # The query writes the T4 insertion right-shifted; the truth left-aligned.
    c, p = HOMOPOLYMER_T4
    w.truth.append(Rec(c, p, "C", ("CT",), "1/1"))
    w.query.append(Rec(c, p + 4, "T", ("TT",), "1/1"))
    exp.truth("INDEL", False, None, "TP")
    exp.query("INDEL", False, None, "TP")
    # Multi-allelic SNP 1/2 on both sides: split into two het SNPs, both TP.
    c, p = plan.slot()
    ref = plan.base(c, p)
    a1, ti1 = plan.snp_alt(ref, transition=True)
    a2, ti2 = plan.snp_alt(ref, transition=False)
    for side in (w.truth, w.query):
        side.append(Rec(c, p, ref, (a1, a2), "1/2"))
    for alt_ti in (ti1, ti2):
        exp.truth("SNP", True, alt_ti, "TP")
        exp.query("SNP", True, alt_ti, "TP")
    # Multi-allelic XY -> X (deletion), ZY (a SNP once trimmed): one INDEL and one SNP, both TP.
    c, p = plan.slot(ok=lambda c, p: plan.seqs[c][p - 1] != plan.seqs[c][p])
    x, y = plan.seqs[c][p - 1], plan.seqs[c][p]
    z, ti = plan.snp_alt(x)
    for side in (w.truth, w.query):
        side.append(Rec(c, p, x + y, (x, z + y), "1/2"))
    exp.truth("INDEL", True, None, "TP")
    exp.query("INDEL", True, None, "TP")
    exp.truth("SNP", True, ti, "TP")
    exp.query("SNP", True, ti, "TP")
    # Two adjacent het SNPs in the truth, one MNP record in the query: decomposition makes them TP.
    c, p = plan.slot()
    r1, r2 = plan.seqs[c][p - 1], plan.seqs[c][p]
    (b1, t1), (b2, t2) = plan.snp_alt(r1), plan.snp_alt(r2)
    w.truth += [Rec(c, p, r1, (b1,), "0/1"), Rec(c, p + 1, r2, (b2,), "0/1")]
    w.query.append(Rec(c, p, r1 + r2, (b1 + b2,), "0/1"))
    for t in (t1, t2):
        exp.truth("SNP", True, t, "TP")
        exp.query("SNP", True, t, "TP")
    # A 1/2 MNP whose two alleles share their first base: truth X>B1 1/1 + Y>B2 0/1, query XY>B1Y,B1B2 1/2.
    # Both haplotypes carry B1 and one carries B2: a hom SNP and a het SNP, both TP.
    c, p = plan.slot()
    r1, r2 = plan.seqs[c][p - 1], plan.seqs[c][p]
    (b1, t1), (b2, t2) = plan.snp_alt(r1), plan.snp_alt(r2)
    w.truth += [Rec(c, p, r1, (b1,), "1/1"), Rec(c, p + 1, r2, (b2,), "0/1")]
    w.query.append(Rec(c, p, r1 + r2, (b1 + r2, b1 + b2), "1/2"))
    for het, t in ((False, t1), (True, t2)):
        exp.truth("SNP", het, t, "TP")
        exp.query("SNP", het, t, "TP")
    w.events.update({"INDEL:right_shifted": 2, "SNP:multiallelic": 1, "MIXED:multiallelic": 1, "SNP:mnp": 1,
                     "SNP:mnp_multiallelic": 1})


# --- writing VCFs -------------------------------------------------------------------------------------------

_TRUTH_HEADER = """##fileformat=VCFv4.2
##FILTER=<ID=PASS,Description="All filters passed">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=PS,Number=1,Type=Integer,Description="Phase set">
##source=genoflows-demo (GIAB NISTv4.2.1 layout)
"""
_GVCF_HEADER = """##fileformat=VCFv4.2
##ALT=<ID=NON_REF,Description="Represents any possible alternative allele not already represented at this location by REF and ALT">
##FILTER=<ID=PASS,Description="All filters passed">
##FILTER=<ID=LowQual,Description="Low quality">
##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths for the ref and alt alleles in the order listed">
##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Approximate read depth">
##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype Quality">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=MIN_DP,Number=1,Type=Integer,Description="Minimum DP observed within the GVCF block">
##GVCFBlock0-20=minGQ=0(inclusive),maxGQ=20(exclusive)
##GVCFBlock20-99=minGQ=20(inclusive),maxGQ=99(exclusive)
##INFO=<ID=END,Number=1,Type=Integer,Description="Stop position of the interval">
##source=HaplotypeCaller (genoflows demo)
"""


def _contig_lines(build: str, extra: tuple[tuple[str, int], ...] = ()) -> str:
    lines = [f"##contig=<ID={contig_name(n, build)},length={ln}>\n" for n, ln in CONTIG_LENGTHS.items()]
    return "".join(lines) + "".join(f"##contig=<ID={n},length={ln}>\n" for n, ln in extra)


def _bgzip_index(text: str, dst: Path) -> Path:
    """Write VCF text as BGZF + .tbi at `dst` (a .vcf.gz path)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    plain = dst.with_name(dst.name.removesuffix(".gz"))
    plain.write_text(text)
    pysam.tabix_index(str(plain), preset="vcf", force=True)  # writes plain.gz (+ .tbi), removes plain
    return dst


def write_truth_vcf(world: GenomeWorld, build: str, dst: Path) -> Path:
    body = "".join(
        f"{contig_name(r.chrom, build)}\t{r.pos}\t.\t{r.ref}\t{','.join(r.alts)}\t50\tPASS\t.\tGT\t{r.gt}\n"
        for r in world.truth
    )
    header = _TRUTH_HEADER + _contig_lines(build) + f"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{world.hg}\n"
    return _bgzip_index(header + body, dst)


def write_confident_bed(build: str, dst: Path, regions: dict[str, list[tuple[int, int]]] = CONFIDENT) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(f"{contig_name(c, build)}\t{s}\t{e}\n" for c, ivs in regions.items() for s, e in ivs))
    return dst


def write_lab_gvcf(world: GenomeWorld, seqs: dict[str, str], build: str, dst: Path, seed: int = 7) -> Path:
    """A HaplotypeCaller-style gVCF: reference blocks (<NON_REF>, END=) between the planted calls."""
    rng = random.Random(f"gvcf-{world.hg}-{seed}")
    by_chrom: dict[str, list[Rec]] = defaultdict(list)
    for r in world.query:
        by_chrom[r.chrom].append(r)
    lines: list[str] = []
    for chrom, length in CONTIG_LENGTHS.items():
        name = contig_name(chrom, build)
        cur = 1
        for r in sorted(by_chrom.get(chrom, []), key=lambda r: r.pos) + [None]:
            stop = (r.pos - 1) if r else length
            while cur <= stop:  # reference blocks of up to 5 kb, one no-call block now and then
                end = min(stop, cur + rng.randint(200, 5_000))
                gt, gq = ("./.", 0) if rng.random() < 0.03 else ("0/0", rng.choice([15, 30, 60, 99]))
                lines.append(
                    f"{name}\t{cur}\t.\t{seqs[chrom][cur - 1]}\t<NON_REF>\t.\t.\tEND={end}\tGT:DP:GQ:MIN_DP\t"
                    f"{gt}:30:{gq}:25\n"
                )
                cur = end + 1
            if r is None:
                break
            n_alleles = len(r.alts) + 2
            ad = ",".join(str(rng.randint(5, 20)) for _ in range(n_alleles))
            lines.append(
                f"{name}\t{r.pos}\t.\t{r.ref}\t{','.join(r.alts)},<NON_REF>\t{rng.randint(30, 900)}.0\t{r.filter}\t.\t"
                f"GT:AD:DP:GQ\t{r.gt}:{ad}:30:{rng.randint(20, 99)}\n"
            )
            cur = r.pos + len(r.ref)
    extra = (("chrM" if build == "GRCh38" else "MT", 16_569),)  # declared, no records: must not disturb anything
    header = _GVCF_HEADER + _contig_lines(build, extra) + f"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{world.sample_id}\n"
    return _bgzip_index(header + "".join(lines), dst)


# --- structural variants ------------------------------------------------------------------------------------


@dataclass
class SvWorld:
    """Base (truth) and comparison SVs, with what `truvari bench` must report with and without --passonly."""

    base: list[Rec]
    comp: list[Rec]
    expected_all: dict[str, int]
    expected_pass: dict[str, int]


def plan_svs(seqs: dict[str, str], seed: int = 7) -> SvWorld:
    """Sequence-resolved SVs on contig 1, 8 kb apart, sizes chosen so unrelated calls cannot match."""
    rng = random.Random(f"sv-{seed}")
    s = seqs["1"]

    def dele(p: int, n: int) -> tuple[str, str]:
        return s[p - 1 : p + n], s[p - 1]

    def ins(p: int, n: int) -> tuple[str, str]:
        return s[p - 1], s[p - 1] + "".join(rng.choice(BASES) for _ in range(n))

    base: list[Rec] = []
    comp: list[Rec] = []
    r, a = dele(8_000, 300)  # TP, genotypes agree
    base.append(Rec("1", 8_000, r, (a,), "0/1"))
    comp.append(Rec("1", 8_000, r, (a,), "0/1"))
    r, a = ins(16_000, 200)  # TP, genotype differs (hom in truth, het called)
    base.append(Rec("1", 16_000, r, (a,), "1/1"))
    comp.append(Rec("1", 16_000, r, (a,), "0/1"))
    r, a = dele(24_000, 1_000)  # FN: missed
    base.append(Rec("1", 24_000, r, (a,), "0/1"))
    r, a = ins(34_000, 400)  # TP
    base.append(Rec("1", 34_000, r, (a,), "0/1"))
    comp.append(Rec("1", 34_000, r, (a,), "0/1"))
    r, a = dele(42_000, 150)  # TP, but the call is FILTERed: FN with --passonly
    base.append(Rec("1", 42_000, r, (a,), "0/1"))
    comp.append(Rec("1", 42_000, r, (a,), "0/1", "LowQual"))
    r, a = dele(52_000, 600)  # FP: not in the truth
    comp.append(Rec("1", 52_000, r, (a,), "0/1"))
    r, a = dele(72_000, 2_000)  # truth outside the SV BED (70-80 kb gap): ignored
    base.append(Rec("1", 72_000, r, (a,), "0/1"))
    r, a = ins(77_000, 250)  # call outside the SV BED: ignored
    comp.append(Rec("1", 77_000, r, (a,), "0/1"))
    exp_all = {"TP-base": 4, "TP-comp": 4, "FP": 1, "FN": 1, "base cnt": 5, "comp cnt": 5, "TP-comp_TP-gt": 3, "TP-comp_FP-gt": 1}
    exp_pass = {"TP-base": 3, "TP-comp": 3, "FP": 1, "FN": 2, "base cnt": 5, "comp cnt": 4, "TP-comp_TP-gt": 2, "TP-comp_FP-gt": 1}
    return SvWorld(base, comp, exp_all, exp_pass)


_SV_HEADER = """##fileformat=VCFv4.2
##FILTER=<ID=PASS,Description="All filters passed">
##FILTER=<ID=LowQual,Description="Low quality">
##INFO=<ID=SVTYPE,Number=1,Type=String,Description="Type of structural variant">
##INFO=<ID=SVLEN,Number=.,Type=Integer,Description="Difference in length between REF and ALT alleles">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
"""


def write_sv_vcf(recs: list[Rec], build: str, sample: str, dst: Path) -> Path:
    body = []
    for r in sorted(recs, key=lambda r: r.pos):
        svlen = len(r.alts[0]) - len(r.ref)
        svtype = "INS" if svlen > 0 else "DEL"
        body.append(
            f"{contig_name(r.chrom, build)}\t{r.pos}\t.\t{r.ref}\t{r.alts[0]}\t60\t{r.filter}\t"
            f"SVTYPE={svtype};SVLEN={svlen}\tGT\t{r.gt}\n"
        )
    header = _SV_HEADER + _contig_lines(build) + f"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{sample}\n"
    return _bgzip_index(header + "".join(body), dst)


# --- the whole world ----------------------------------------------------------------------------------------


@dataclass
class DemoWorld:
    """Where everything was written and what the benchmarks must find."""

    root: Path
    mirror: Path  # serve this directory: it is the `release/` tree
    lab: Path  # the lab's files: {sample_id}.g.vcf.gz (+ .tbi), {sample_id}.sv.vcf.gz for HG002
    genomes: dict[str, GenomeWorld]  # by HG id
    sv: SvWorld
    reference_relpaths: dict[str, str]

    def sample_id(self, hg: str) -> str:
        return self.genomes[hg].sample_id

    def reference_urls(self, base_url: str) -> dict[str, str]:
        """settings.reference_fasta_urls for a server serving `mirror` at `base_url`."""
        return {b: f"{base_url.rstrip('/')}/{rel}" for b, rel in self.reference_relpaths.items()}


def _write_md5sums(directory: Path) -> None:
    """An `md5sum` listing per directory, the way some GIAB directories publish them."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != "md5sum")
    listing = "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
    (directory / "md5sum").write_text(listing)


def write_current_tree(mirror: Path, prefix: str = "ftp/release") -> Path:
    """A `current.tree` at the top of `mirror` listing every file with its md5, as GIAB's FTP publishes one at its
    top (path, type, size, date, md5; tab-separated). The paths carry `prefix`, as a tree copied from the FTP's
    top does, so a reader must match the whole path below the tree, not the name alone."""
    lines = []
    for p in sorted(x for x in Path(mirror).rglob("*") if x.is_file() and x.name != "current.tree"):
        rel = p.relative_to(mirror).as_posix()
        lines.append(f"{prefix}/{rel}\tfile\t{p.stat().st_size}\t2024-01-01 00:00:00\t"
                     f"{hashlib.md5(p.read_bytes()).hexdigest()}\n")
    tree = Path(mirror) / "current.tree"
    tree.write_text(f"{prefix}\tdirectory\t4096\t2024-01-01 00:00:00\t\n" + "".join(lines))
    return tree


def build_world(root: Path, *, seed: int = 7, builds: tuple[str, ...] = ("GRCh38", "GRCh37"),
                samples: dict[str, str] | None = None, lab_build: str = "GRCh38") -> DemoWorld:
    """Write the mirror (`<root>/mirror`, a GIAB release tree) and the lab directory (`<root>/lab`).

    Truth dirs get an `md5sum` listing; the reference dirs get none, so the first download pins a sha256.
    The lab files use `lab_build` contig names (chr1 for GRCh38) whichever build a run asks for.
    """
    root = Path(root)
    mirror, lab = root / "mirror", root / "lab"
    if mirror.exists():
        shutil.rmtree(mirror)
    if lab.exists():
        shutil.rmtree(lab)
    seqs = make_reference(seed)
    samples = samples or DEMO_SAMPLES
    base_url = "BASE"
    relpaths = {}
    for build in builds:
        rel = f"references/{build}/{REFERENCE_NAMES[build]}"
        write_fasta(seqs, mirror / rel, build)
        relpaths[build] = rel
    genomes = {}
    for hg, sample_id in samples.items():
        world = plan_genome(seqs, hg, sample_id, seed)
        genomes[hg] = world
        for build in builds:
            t = small_truth(hg, build, base_url)
            write_truth_vcf(world, build, mirror / t.vcf.url.removeprefix(f"{base_url}/"))
            assert t.bed is not None
            bed = write_confident_bed(build, mirror / t.bed.url.removeprefix(f"{base_url}/"))
            _write_md5sums(bed.parent)
        write_lab_gvcf(world, seqs, lab_build, lab / f"{sample_id}.g.vcf.gz", seed)
    sv = plan_svs(seqs, seed)
    for build in builds if "HG002" in samples else ():  # Tier1 v0.6 on GRCh37, CMRG v1.00 on GRCh38
        t = sv_truth("HG002", build, base_url)
        write_sv_vcf(sv.base, build, "HG002", mirror / t.vcf.url.removeprefix(f"{base_url}/"))
        assert t.bed is not None
        bed = write_confident_bed(build, mirror / t.bed.url.removeprefix(f"{base_url}/"), SV_CONFIDENT)
        _write_md5sums(bed.parent)
    if "HG002" in samples:
        write_sv_vcf(sv.comp, lab_build, samples["HG002"], lab / f"{samples['HG002']}.sv.vcf.gz")
    return DemoWorld(root, mirror, lab, genomes, sv, relpaths)


def upload_lab_files(client, bucket: str, prefix: str, lab_dir: Path) -> list[str]:
    """Copy every file of `lab_dir` to s3://bucket/prefix/ (creating the bucket if needed); return the URIs."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    uris = []
    for path in sorted(Path(lab_dir).iterdir()):
        if path.is_file():
            key = f"{prefix.strip('/')}/{path.name}" if prefix.strip("/") else path.name
            client.upload_file(str(path), bucket, key)
            uris.append(f"s3://{bucket}/{key}")
    return uris


def local_reference(world: DemoWorld, build: str, dest_dir: Path) -> Path:
    """The world's reference for `build` as a plain FASTA with .fai (what ensure_references would produce)."""
    src = world.mirror / world.reference_relpaths[build]
    dest = Path(dest_dir) / src.name.removesuffix(".gz")
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(src, "rb") as fin, open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        pysam.faidx(str(dest))
    return dest


def truth_paths(world: DemoWorld, hg: str, build: str) -> tuple[Path, Path]:
    """(truth VCF, confident BED) of `hg` on `build` inside the mirror."""
    t = small_truth(hg, build, "BASE")
    assert t.bed is not None
    return world.mirror / t.vcf.url.removeprefix("BASE/"), world.mirror / t.bed.url.removeprefix("BASE/")
