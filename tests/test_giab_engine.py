"""The local small-variant engine on the constructed world: exact counts, contig fixes, bad inputs."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pysam
import pytest

from genoflows.giab.compare import ReferenceMismatch, compare_small
from genoflows.giab.contigs import ContigMismatch
from genoflows.giab.query import InputError, ensure_indexed, variant_sites
from genoflows.testing import giab_world
from genoflows.tools.happy import COUNT_COLUMNS, parse_summary

HG = "HG004"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> giab_world.DemoWorld:
    return giab_world.build_world(tmp_path_factory.mktemp("giab-world"), samples={HG: "NA24143_Lib3_Rep1"})


@pytest.fixture(scope="module")
def query(world, tmp_path_factory) -> Path:
    """The lab gVCF reduced to variant sites, as the flow's prepare step does."""
    out = tmp_path_factory.mktemp("query")
    return variant_sites(world.lab / "NA24143_Lib3_Rep1.g.vcf.gz", out / "q.vcf.gz", sample_id="NA24143_Lib3_Rep1")


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def assert_matches_expected(summary_csv: Path, expected: giab_world.Expected) -> None:
    rows = {(r.type, r.filter): r.values for r in parse_summary(summary_csv)}
    assert set(rows) == set(expected.counts)
    for key, exp in expected.counts.items():
        got = rows[key]
        assert {c: got[c] for c in COUNT_COLUMNS} == {c: float(exp[c]) for c in COUNT_COLUMNS}, key
        tp_q = exp["QUERY.TOTAL"] - exp["QUERY.FP"] - exp["QUERY.UNK"]
        recall = exp["TRUTH.TP"] / (exp["TRUTH.TP"] + exp["TRUTH.FN"])
        precision = tp_q / (tp_q + exp["QUERY.FP"])
        assert got["METRIC.Recall"] == pytest.approx(recall)
        assert got["METRIC.Precision"] == pytest.approx(precision)
        assert got["METRIC.Frac_NA"] == pytest.approx(exp["QUERY.UNK"] / exp["QUERY.TOTAL"])
        assert got["METRIC.F1_Score"] == pytest.approx(2 * recall * precision / (recall + precision))
        for side in ("TRUTH", "QUERY"):
            titv = _ratio(exp[f"{side}.TOTAL.ti"], exp[f"{side}.TOTAL.tv"]) if key[0] == "SNP" else None
            assert got[f"{side}.TOTAL.TiTv_ratio"] == (pytest.approx(titv) if titv is not None else None), key
            hethom = _ratio(exp[f"{side}.TOTAL.het"], exp[f"{side}.TOTAL.homalt"])
            assert got[f"{side}.TOTAL.het_hom_ratio"] == pytest.approx(hethom), key


def test_gvcf_becomes_variant_sites_without_reference_blocks(query, world):
    with pysam.VariantFile(str(query)) as vf:
        records = list(vf)
    planted = world.genomes[HG].query
    assert len(records) == len(planted)
    assert all("<NON_REF>" not in rec.alts for rec in records)
    assert {r.pos for r in records} == {r.pos for r in planted}


def test_local_engine_counts_equal_the_constructed_truth_exactly(world, query, tmp_path):
    ref = giab_world.local_reference(world, "GRCh38", tmp_path / "ref")
    truth, bed = giab_world.truth_paths(world, HG, "GRCh38")
    res = compare_small(truth, query, ref, tmp_path / "out", confident_bed=bed, cache_dir=tmp_path / "cache")
    assert_matches_expected(res.summary_csv, world.genomes[HG].expected)
    # Every planted error shows up in the per-record listing, classified.
    details = res.details_tsv.read_text().splitlines()[1:]
    mismatch = [ln.split("\t")[7] for ln in details if ln.split("\t")[5] == "QUERY"]
    assert mismatch.count("gt") == 4 and mismatch.count("al") == 2
    # The normalised truth is cached: a second comparison reuses it.
    cached = list((tmp_path / "cache" / "giab-normalised").rglob("*.norm.bcf"))
    assert len(cached) == 1
    log: list[str] = []
    res2 = compare_small(truth, query, ref, tmp_path / "out2", confident_bed=bed, cache_dir=tmp_path / "cache", log=log.append)
    assert any("using the normalised copy cached" in line for line in log)
    assert res2.summary_csv.read_text() == res.summary_csv.read_text()


def test_grch37_truth_against_a_chr_named_query_is_renamed_not_zeroed(world, query, tmp_path):
    ref = giab_world.local_reference(world, "GRCh37", tmp_path / "ref")
    truth, bed = giab_world.truth_paths(world, HG, "GRCh37")
    log: list[str] = []
    res = compare_small(truth, query, ref, tmp_path / "out", confident_bed=bed, log=log.append)
    assert any("query" in line and "renaming chr1->1" in line for line in log)
    assert_matches_expected(res.summary_csv, world.genomes[HG].expected)


def test_query_contig_absent_from_the_reference_is_a_clear_error(world, tmp_path):
    ref = giab_world.local_reference(world, "GRCh38", tmp_path / "ref")
    truth, bed = giab_world.truth_paths(world, HG, "GRCh38")
    bad = tmp_path / "alt_contig.vcf"
    bad.write_text(
        "##fileformat=VCFv4.2\n##contig=<ID=chr1,length=120000>\n##contig=<ID=chrUn_KI270302v1,length=2274>\n"
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS\n"
        "chrUn_KI270302v1\t100\t.\tA\tG\t50\tPASS\t.\tGT\t0/1\n"
    )
    pysam.tabix_index(str(bad), preset="vcf")
    with pytest.raises(ContigMismatch, match=r"alt_contig\.vcf\.gz.*chrUn_KI270302v1.*same genome build"):
        compare_small(truth, Path(f"{bad}.gz"), ref, tmp_path / "out", confident_bed=bed)


def test_query_on_another_reference_is_a_clear_error(world, query, tmp_path):
    seqs = {name: seq[::-1] for name, seq in giab_world.make_reference().items()}  # same names, other bases
    other = giab_world.write_fasta(seqs, tmp_path / "other.fa", "GRCh38")
    truth, bed = giab_world.truth_paths(world, HG, "GRCh38")
    with pytest.raises(ReferenceMismatch, match="truth .* REF alleles disagree with the reference"):
        compare_small(truth, query, other, tmp_path / "out", confident_bed=bed, cache_dir=tmp_path / "cache")
    # The normalisation pipeline stopped half-way: no temp file, sort spill or half-written cache entry is left.
    left = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    left += [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == []


def _unsorted_copy(src: Path, dst: Path) -> Path:
    with gzip.open(src, "rt") as fh:
        lines = fh.readlines()
    header = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    body[0], body[5] = body[5], body[0]
    with pysam.BGZFile(str(dst), "wb") as out:
        out.write("".join(header + body).encode())
    return dst


def test_unsorted_input_names_the_file_and_the_fix(world, tmp_path):
    bad = _unsorted_copy(world.lab / "NA24143_Lib3_Rep1.g.vcf.gz", tmp_path / "NA24143_unsorted.g.vcf.gz")
    with pytest.raises(InputError, match=r"NA24143_unsorted\.g\.vcf\.gz is not sorted.*bcftools sort"):
        ensure_indexed(bad)
    assert not Path(f"{bad}.tbi").exists()


def test_unindexed_sorted_input_is_indexed_and_plain_gzip_is_refused(world, tmp_path):
    copy = tmp_path / "lab.g.vcf.gz"
    shutil.copy(world.lab / "NA24143_Lib3_Rep1.g.vcf.gz", copy)
    assert ensure_indexed(copy) == Path(f"{copy}.tbi") and Path(f"{copy}.tbi").exists()
    plain = tmp_path / "plain.vcf.gz"
    with gzip.open(world.lab / "NA24143_Lib3_Rep1.g.vcf.gz", "rb") as src, gzip.open(plain, "wb") as dst:
        dst.write(src.read())
    with pytest.raises(InputError, match=r"plain\.vcf\.gz is not BGZF-compressed.*bgzip"):
        ensure_indexed(plain)


# --- hand-made cases: each expectation follows from the GA4GH/hap.py rules, not from running the engine ------

SEQ = giab_world.make_reference()["1"]  # the world's contig 1 (chr1 in GRCh38 files)
_MINI_HEADER = (
    "##fileformat=VCFv4.2\n##contig=<ID=chr1,length=120000>\n##contig=<ID=chr2,length=80000>\n"
    '##FILTER=<ID=PASS,Description="All filters passed">\n##FILTER=<ID=LowQual,Description="Low quality">\n'
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS\n"
)


def _mini_vcf(path: Path, records: list[tuple[int, str, str, str, str]]) -> Path:
    """A bgzipped, indexed single-sample VCF on chr1 from (pos, ref, alts, gt, filter) tuples."""
    body = "".join(f"chr1\t{p}\t.\t{r}\t{a}\t50\t{f}\t.\tGT\t{gt}\n" for p, r, a, gt, f in sorted(records))
    path.write_text(_MINI_HEADER + body)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return Path(f"{path}.gz")


def _other(base: str) -> str:
    """A base that differs from `base` (a transversion, to keep it obvious)."""
    return {"A": "C", "C": "A", "G": "T", "T": "G"}[base]


def _bench(world, tmp_path: Path, truth: list, query: list, bed: list[tuple[int, int]] | None = None) -> dict:
    """Run the flow's query preparation and the local engine on hand-made records; rows by (type, filter)."""
    ref = giab_world.local_reference(world, "GRCh38", tmp_path / "ref")
    truth_vcf = _mini_vcf(tmp_path / "truth.vcf", truth)
    query_vcf = variant_sites(_mini_vcf(tmp_path / "query.vcf", query), tmp_path / "q.vcf.gz", sample_id="S")
    bed_path = None
    if bed is not None:
        bed_path = tmp_path / "conf.bed"
        bed_path.write_text("".join(f"chr1\t{s}\t{e}\n" for s, e in bed))
    res = compare_small(truth_vcf, query_vcf, ref, tmp_path / "out", confident_bed=bed_path)
    return {(r.type, r.filter): r.values for r in parse_summary(res.summary_csv)}


def _counts(row: dict) -> dict:
    return {c: int(row[c]) for c in ("TRUTH.TOTAL", "TRUTH.TP", "TRUTH.FN", "QUERY.TOTAL", "QUERY.FP", "QUERY.UNK",
                                     "FP.gt", "FP.al")}


def test_multiallelic_mnp_sharing_a_base_keeps_the_hom_genotype(world, tmp_path):
    """Truth A>C 1/1 + G>A 0/1 (adjacent); query AG>CG,CA 1/2 says the same thing: both haplotypes carry the C,
    one carries the A. After split + decompose the C comes out twice (1/0 and 0/1): it is one 1/1 SNP."""
    p = 30_001
    r1, r2 = SEQ[p - 1], SEQ[p]
    b1, b2 = _other(r1), _other(r2)
    truth = [(p, r1, b1, "1/1", "PASS"), (p + 1, r2, b2, "0/1", "PASS")]
    query = [(p, r1 + r2, f"{b1}{r2},{b1}{b2}", "1/2", "PASS")]
    rows = _bench(world, tmp_path, truth, query)
    for flt in ("ALL", "PASS"):
        assert _counts(rows[("SNP", flt)]) == {
            "TRUTH.TOTAL": 2, "TRUTH.TP": 2, "TRUTH.FN": 0, "QUERY.TOTAL": 2, "QUERY.FP": 0, "QUERY.UNK": 0,
            "FP.gt": 0, "FP.al": 0,
        }, flt
        # one het and one hom-alt on each side
        assert rows[("SNP", flt)]["TRUTH.TOTAL.het_hom_ratio"] == 1.0
        assert rows[("SNP", flt)]["QUERY.TOTAL.het_hom_ratio"] == 1.0


def test_a_het_call_written_twice_stays_het(world, tmp_path):
    """Two records of the same het SNP on the same haplotype (a duplicated line) are one 0/1 call, not a 1/1."""
    p = 30_501
    ref, alt = SEQ[p - 1], _other(SEQ[p - 1])
    truth = [(p, ref, alt, "0/1", "PASS")]
    query = [(p, ref, alt, "0/1", "PASS"), (p, ref, alt, "0/1", "PASS")]
    rows = _bench(world, tmp_path, truth, query)
    counts = _counts(rows[("SNP", "ALL")])
    assert (counts["TRUTH.TP"], counts["TRUTH.FN"], counts["FP.gt"]) == (1, 0, 0), counts


def test_filtered_truth_records_are_not_benchmarked(world, tmp_path):
    """hap.py uses only PASS/`.` truth records (--usefiltered-truth is opt-in): a FILTERed truth record is neither
    a truth variant (no FN when missed) nor a match (a call of it is a plain FP, without a local match)."""
    p1, p2, p3, p4 = 31_001, 31_301, 31_601, 31_901
    snp = {p: (SEQ[p - 1], _other(SEQ[p - 1])) for p in (p1, p2, p3, p4)}
    truth = [
        (p1, *snp[p1], "0/1", "PASS"),
        (p2, *snp[p2], "0/1", "LowQual"),  # called by the query
        (p3, *snp[p3], "1/1", "LowQual"),  # missed by the query
        (p4, *snp[p4], "0/1", "."),  # FILTER missing counts as passing
    ]
    query = [(p1, *snp[p1], "0/1", "PASS"), (p2, *snp[p2], "0/1", "PASS"), (p4, *snp[p4], "0/1", "PASS")]
    rows = _bench(world, tmp_path, truth, query)
    assert _counts(rows[("SNP", "ALL")]) == {
        "TRUTH.TOTAL": 2, "TRUTH.TP": 2, "TRUTH.FN": 0, "QUERY.TOTAL": 3, "QUERY.FP": 1, "QUERY.UNK": 0,
        "FP.gt": 0, "FP.al": 0,
    }


def test_confident_region_edges_follow_bed_half_open_and_hap_py_insertion_rule(world, tmp_path):
    """BED [40000, 40100) holds 1-based bases 40001..40100. SNPs: inside iff their base is. Insertions: inside
    only when both bases flanking the insertion point are (hap.py doc/happy.md), so an insertion after base 40100
    (right flank 40101) or after base 40000 (left flank 40000) is outside: truth ignored, call UNK."""
    start, end = 40_000, 40_100

    def ins(p: int) -> tuple[int, str, str]:
        anchor = SEQ[p - 1]
        return p, anchor, anchor + _other(anchor)  # inserted base differs from the anchor: already left-aligned

    def snp(p: int) -> tuple[int, str, str]:
        return p, SEQ[p - 1], _other(SEQ[p - 1])

    sites = [snp(start), snp(start + 1), snp(end), snp(end + 1), ins(start), ins(start + 50), ins(end)]
    both = [(*s, "0/1", "PASS") for s in sites]
    rows = _bench(world, tmp_path, both, both, bed=[(start, end)])
    assert _counts(rows[("SNP", "ALL")]) == {
        "TRUTH.TOTAL": 2, "TRUTH.TP": 2, "TRUTH.FN": 0, "QUERY.TOTAL": 4, "QUERY.FP": 0, "QUERY.UNK": 2,
        "FP.gt": 0, "FP.al": 0,
    }
    assert _counts(rows[("INDEL", "ALL")]) == {
        "TRUTH.TOTAL": 1, "TRUTH.TP": 1, "TRUTH.FN": 0, "QUERY.TOTAL": 3, "QUERY.FP": 0, "QUERY.UNK": 2,
        "FP.gt": 0, "FP.al": 0,
    }


def test_half_calls_are_dropped_with_the_no_calls(world, tmp_path):
    """The documented policy (docs/giab-local-engine.md): a `./1` query call is not a call. The truth variant it
    would have matched is FN, and a `./1` where the truth has nothing is not an FP."""
    p1, p2, p3 = 32_001, 32_301, 32_601
    snp = {p: (SEQ[p - 1], _other(SEQ[p - 1])) for p in (p1, p2, p3)}
    truth = [(p1, *snp[p1], "0/1", "PASS"), (p2, *snp[p2], "0/1", "PASS")]
    query = [(p1, *snp[p1], "./1", "PASS"), (p2, *snp[p2], "0/1", "PASS"), (p3, *snp[p3], "./1", "PASS")]
    rows = _bench(world, tmp_path, truth, query)
    assert _counts(rows[("SNP", "ALL")]) == {
        "TRUTH.TOTAL": 2, "TRUTH.TP": 1, "TRUTH.FN": 1, "QUERY.TOTAL": 1, "QUERY.FP": 0, "QUERY.UNK": 0,
        "FP.gt": 0, "FP.al": 0,
    }


# --- inputs that lie: each gets an error naming the file and what is wrong ------------------------------------

GRCH38_FAI = {"chr1": 248_956_422, "chr20": 64_444_167, "chr21": 46_709_983, "chr22": 50_818_468, "chrX": 156_040_895}


def test_build_is_recognised_by_its_distinguishing_contig_lengths():
    from genoflows.giab.contigs import looks_like

    assert looks_like({"chr20": 63_025_520, "chr21": 48_129_895}) == "hg19"
    assert looks_like({"20": 63_025_520, "MT": 16_569}) == "GRCh37"
    assert looks_like({"chrM": 16_571, "chr1": 249_250_621}) == "hg19"
    assert looks_like({"chr20": 64_444_167, "chrM": 16_569}) == "GRCh38"
    assert looks_like({"chr20": 66_210_255}) == "T2T-CHM13"
    assert looks_like({"chr1": 120_000}) is None  # a toy genome is no known build


def _header_only_vcf(path: Path, contigs: dict[str, int], extra: str = "") -> Path:
    text = "##fileformat=VCFv4.2\n" + "".join(f"##contig=<ID={c},length={n}>\n" for c, n in contigs.items()) + extra
    text += '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    text += "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS\n"
    text += f"{next(iter(contigs))}\t100\t.\tA\tG\t50\tPASS\t.\tGT\t0/1\n"
    path.write_text(text)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return Path(f"{path}.gz")


def test_an_hg19_vcf_against_grch38_names_the_contig_both_lengths_and_the_build(tmp_path):
    from genoflows.giab.contigs import BuildMismatch, check_same_build

    ref = tmp_path / "GRCh38.fa"  # only its .fai is read: GRCh38's published contig lengths
    Path(f"{ref}.fai").write_text("".join(f"{c}\t{n}\t0\t60\t61\n" for c, n in GRCH38_FAI.items()))
    hg19 = _header_only_vcf(tmp_path / "lab_hg19.vcf", {"chr20": 63_025_520, "chr21": 48_129_895}, "##assembly=hg19\n")
    with pytest.raises(BuildMismatch, match=r"query lab_hg19\.vcf\.gz: contig chr20 is 63,025,520 bp .* chr20 is "
                                            r"64,444,167 bp in the reference GRCh38\.fa \(GRCh38\); the query looks like hg19"):
        check_same_build(hg19, ref, label="query")
    # Lengths that agree but a header that declares another assembly: named as well.
    declared = _header_only_vcf(tmp_path / "lab_said.vcf", {"chr20": 64_444_167}, "##reference=file:///refs/ucsc.hg19.fasta\n")
    with pytest.raises(BuildMismatch, match=r"lab_said\.vcf\.gz declares .*ucsc\.hg19\.fasta.*\(GRCh37\) but the reference GRCh38\.fa is GRCh38"):
        check_same_build(declared, ref, label="query")
    check_same_build(_header_only_vcf(tmp_path / "ok.vcf", {"chr20": 64_444_167}, "##assembly=GRCh38\n"), ref,
                     label="query")


def test_the_engine_refuses_a_query_whose_header_says_another_genome(world, tmp_path):
    from genoflows.giab.contigs import BuildMismatch

    ref = giab_world.local_reference(world, "GRCh38", tmp_path / "ref")
    truth, bed = giab_world.truth_paths(world, HG, "GRCh38")
    other = _header_only_vcf(tmp_path / "other_build.vcf", {"chr1": 119_000, "chr2": 80_000})
    with pytest.raises(BuildMismatch, match=r"other_build\.vcf\.gz: contig chr1 is 119,000 bp .* 120,000 bp"):
        compare_small(truth, other, ref, tmp_path / "out", confident_bed=bed)
    said = _header_only_vcf(tmp_path / "said_hg19.vcf", {"chr1": 120_000, "chr2": 80_000}, "##assembly=hg19\n")
    with pytest.raises(BuildMismatch, match=r"said_hg19\.vcf\.gz declares '##assembly=hg19' \(GRCh37\) .* is GRCh38"):
        compare_small(truth, said, ref, tmp_path / "out", confident_bed=bed, build="GRCh38")


@pytest.mark.parametrize(("line", "why"), [("chr1\t5000\t4000\n", r"start 5,000 after end 4,000"),
                                           ("chr1\tten\t4000\n", r"not `chrom<TAB>start<TAB>end` with integer"),
                                           ("chr1\t-5\t4000\n", r"negative start")])
def test_a_bad_bed_line_is_named_with_its_line_number(world, query, tmp_path, line, why):
    ref = giab_world.local_reference(world, "GRCh38", tmp_path / "ref")
    truth, _ = giab_world.truth_paths(world, HG, "GRCh38")
    bed = tmp_path / "regions.bed"
    bed.write_text("# confident regions\nchr1\t1000\t50000\n" + line + "chr2\t1000\t75000\n")
    with pytest.raises(InputError, match=rf"BED regions\.bed line 3 .*{why}"):
        compare_small(truth, query, ref, tmp_path / "out", confident_bed=bed)


def test_a_gvcf_without_variant_records_is_an_error_naming_it(world, tmp_path):
    with gzip.open(world.lab / "NA24143_Lib3_Rep1.g.vcf.gz", "rt") as fh:
        lines = [ln for ln in fh if ln.startswith("#") or ln.split("\t")[4] == "<NON_REF>"]  # reference blocks only
    empty = tmp_path / "NA24143_blocks_only.g.vcf.gz"
    with pysam.BGZFile(str(empty), "wb") as out:
        out.write("".join(lines).encode())
    assert ensure_indexed(empty)
    with pytest.raises(InputError, match=r"NA24143_blocks_only\.g\.vcf\.gz has no variant records"):
        variant_sites(empty, tmp_path / "q.vcf.gz", sample_id="NA24143_Lib3_Rep1")
    assert not list(tmp_path.glob(".q.vcf.gz*")) and not (tmp_path / "q.vcf.gz").exists()


def test_a_zero_byte_and_a_truncated_gvcf_are_named_as_such(world, tmp_path):
    zero = tmp_path / "NA24143_zero.g.vcf.gz"
    zero.write_bytes(b"")
    with pytest.raises(InputError, match=r"NA24143_zero\.g\.vcf\.gz is empty \(0 bytes\)"):
        ensure_indexed(zero)
    data = (world.lab / "NA24143_Lib3_Rep1.g.vcf.gz").read_bytes()
    cut = tmp_path / "NA24143_cut.g.vcf.gz"
    cut.write_bytes(data[: len(data) // 2])
    for step in (ensure_indexed, lambda p: variant_sites(p, tmp_path / "q.vcf.gz", sample_id="x")):
        with pytest.raises(InputError, match=r"NA24143_cut\.g\.vcf\.gz is truncated"):
            step(cut)
    Path(f"{cut}.tbi").write_bytes(b"stale index")  # an index next to it must not skip the check
    with pytest.raises(InputError, match="is truncated"):
        ensure_indexed(cut)


def test_a_gvcf_that_breaks_off_mid_file_leaves_no_temp_file(world, tmp_path):
    """A body corrupted in the middle (the ends are intact, so it passes the quick checks). bcftools 1.16 reports
    the bad block and still exits 0 with the records before it: that must be an error naming the file, and the
    half-written variant file is removed with its index, not kept or left under a temp name."""
    with gzip.open(world.lab / "NA24143_Lib3_Rep1.g.vcf.gz", "rt") as fh:
        lines = fh.readlines()
    header = "".join(ln for ln in lines if ln.startswith("#"))
    body = [ln for ln in lines if not ln.startswith("#")]
    bad = tmp_path / "in" / "broken.g.vcf.gz"
    bad.parent.mkdir()
    with pysam.BGZFile(str(bad), "wb") as out:  # three BGZF blocks: header, first half, second half
        for part in (header, "".join(body[: len(body) // 2]), "".join(body[len(body) // 2:])):
            out.write(part.encode())
            out.flush()
    data = bytearray(bad.read_bytes())
    blocks, at = [], 0
    while at < len(data):  # BGZF blocks: BSIZE (total size - 1) at offset 16 of each header
        blocks.append(at)
        at += int.from_bytes(data[at + 16:at + 18], "little") + 1
    assert len(blocks) == 4  # 3 data blocks + the EOF block
    data[blocks[2] + 40:blocks[2] + 60] = bytes(20)  # inside the deflate data of the last data block
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"input broken\.g\.vcf\.gz is corrupt: it could not be read to its end"):
        variant_sites(bad, out / "q.vcf.gz", sample_id="NA24143_Lib3_Rep1")
    assert list(out.iterdir()) == []
