"""GIAB pure functions: sample map, catalogue, checksum parsing, tool command lines and output parsers."""

from __future__ import annotations

import json

import pytest

from genoflows.giab import catalogue
from genoflows.giab.checksums import Manifest, md5_for
from genoflows.giab.contigs import rename_plan
from genoflows.giab.samples import UnknownSample, UnsafeName, check_safe_name, find_genome, resolve_genome
from genoflows.tools import bcftools, happy, truvari

BASE = "https://mirror.example/giab/release"


@pytest.mark.parametrize(
    ("sample", "hg"),
    [
        ("NA24143_Lib3_Rep1", "HG004"),
        ("HG004_foo", "HG004"),
        ("hg004", "HG004"),
        ("na12878", "HG001"),
        ("NA24385-run7.final", "HG002"),
        ("NA24149", "HG003"),
        ("NA24631_x", "HG005"),
        ("NA24694", "HG006"),
        ("NA24695_Rep2", "HG007"),
    ],
)
def test_lab_sample_ids_resolve_to_giab_genomes(sample, hg):
    assert resolve_genome(sample) == hg


@pytest.mark.parametrize("sample", ["NA99999_Lib1", "HG008", "NA241430", "sampleNA24143", ""])
def test_unknown_samples_name_the_known_ones_and_the_truth_parameter(sample):
    assert find_genome(sample) is None
    with pytest.raises(UnknownSample) as err:
        resolve_genome(sample)
    message = str(err.value)
    assert "HG004 (NA24143)" in message and "HG001 (NA12878)" in message and "`truth`" in message


UNSAFE = ["HG004/../../../tmp/pwn", "/etc/x", "..", ".", ".hidden", "HG004/x", "a b", "x\\y", "HG004\n", ""]


@pytest.mark.parametrize("bad", UNSAFE)
def test_sample_ids_and_file_names_that_are_paths_are_refused(bad):
    from flows.giab_benchmark import TruthSet, check_request

    truth = TruthSet(vcf="s3://lab/truth.vcf.gz")
    with pytest.raises(UnsafeName, match=r"sample_id .* is not allowed: use letters, digits"):
        check_request(bad, "GRCh38", ["small"], truth)
    with pytest.raises(UnsafeName, match=r"file .* is not allowed.*without '/'"):
        check_request("LAB-0042", "GRCh38", ["small"], truth, file=bad)
    if find_genome(bad):  # starts like a GIAB id: the mapping alone must not accept it either
        with pytest.raises(UnsafeName):
            resolve_genome(bad)


def test_plain_sample_ids_and_file_names_pass():
    from flows.giab_benchmark import TruthSet, check_request

    for name in ("NA24143_Lib3_Rep1", "HG004.run-2", "LAB-0042", "_x"):
        assert check_safe_name(name, "sample_id") == name
    assert check_request("NA24143_Lib3_Rep1", "GRCh38", ["small"], None, file="NA24143_Lib3_Rep1.g.vcf.gz") == "HG004"
    assert check_request("LAB-0042", "GRCh38", ["small"], TruthSet(vcf="s3://lab/t.vcf.gz")) is None


def test_small_truth_layout_follows_the_release_tree():
    t = catalogue.small_truth("HG004", "GRCh38", BASE)
    folder = f"{BASE}/AshkenazimTrio/HG004_NA24143_mother/NISTv4.2.1/GRCh38"
    assert t.vcf.url == f"{folder}/HG004_GRCh38_1_22_v4.2.1_benchmark.vcf.gz"
    assert t.tbi.url == f"{folder}/HG004_GRCh38_1_22_v4.2.1_benchmark.vcf.gz.tbi"
    assert t.bed.url == f"{folder}/HG004_GRCh38_1_22_v4.2.1_benchmark_noinconsistent.bed"
    assert t.vcf.relpath == "giab/AshkenazimTrio/HG004_NA24143_mother/NISTv4.2.1/GRCh38/HG004_GRCh38_1_22_v4.2.1_benchmark.vcf.gz"
    h1 = catalogue.small_truth("HG001", "GRCh37", BASE)
    assert h1.bed.url == f"{BASE}/NA12878_HG001/NISTv4.2.1/GRCh37/HG001_GRCh37_1_22_v4.2.1_benchmark.bed"
    h6 = catalogue.small_truth("HG006", "GRCh38", BASE)
    assert h6.bed.url.endswith("ChineseTrio/HG006_NA24694_father/NISTv4.2.1/GRCh38/HG006_GRCh38_1_22_v4.2.1_benchmark.bed")


def test_checksum_sources_try_the_sidecar_then_directory_listings():
    t = catalogue.small_truth("HG005", "GRCh38", BASE)
    folder = t.vcf.url.rsplit("/", 1)[0]
    assert t.vcf.md5_sources[0] == f"{t.vcf.url}.md5"
    assert f"{folder}/md5sum" in t.vcf.md5_sources
    assert f"{folder}/HG005_benchmark.md5" in t.vcf.md5_sources


def test_sv_truth_is_tier1_on_grch37_and_cmrg_on_grch38_for_hg002_only():
    t = catalogue.sv_truth("HG002", "GRCh37", BASE)
    assert t.vcf.url == f"{BASE}/AshkenazimTrio/HG002_NA24385_son/NIST_SV_v0.6/HG002_SVs_Tier1_v0.6.vcf.gz"
    assert t.bed.url.endswith("NIST_SV_v0.6/HG002_SVs_Tier1_v0.6.bed")
    cmrg = f"{BASE}/AshkenazimTrio/HG002_NA24385_son/CMRG_v1.00/GRCh38/StructuralVariant"
    t38 = catalogue.sv_truth("HG002", "GRCh38", BASE)
    assert t38.vcf.url == f"{cmrg}/HG002_GRCh38_CMRG_SV_v1.00.vcf.gz"
    assert t38.tbi.url == f"{cmrg}/HG002_GRCh38_CMRG_SV_v1.00.vcf.gz.tbi"
    assert t38.bed.url == f"{cmrg}/HG002_GRCh38_CMRG_SV_v1.00.bed"
    assert t38.vcf.md5_sources[:2] == (f"{t38.vcf.url}.md5", f"{cmrg}/md5sum")  # verified like every truth file
    assert "CMRG v1.00 GRCh38" in t38.label
    t37 = catalogue.sv_truth("HG002", "GRCh37", BASE, benchmark="CMRG_v1.00")
    assert t37.vcf.url.endswith("CMRG_v1.00/GRCh37/StructuralVariant/HG002_GRCh37_CMRG_SV_v1.00.vcf.gz")
    with pytest.raises(catalogue.NoTruthSet, match="HG002 only.*`truth`"):
        catalogue.sv_truth("HG004", "GRCh38", BASE)
    with pytest.raises(catalogue.NoTruthSet, match="Tier1_v0.6 for HG002 on GRCh38"):
        catalogue.sv_truth("HG002", "GRCh38", BASE, benchmark="Tier1_v0.6")
    with pytest.raises(catalogue.NoTruthSet, match="unknown genome build"):
        catalogue.small_truth("HG002", "hg19", BASE)


def test_custom_truth_uris_get_distinct_cache_paths():
    a = catalogue.custom_truth("s3://lab/truth/a.vcf.gz", "s3://lab/truth/a.bed")
    b = catalogue.custom_truth("s3://other/truth/a.vcf.gz", None)
    assert a.vcf.relpath != b.vcf.relpath and a.vcf.relpath.endswith("/a.vcf.gz")
    assert a.tbi.url == "s3://lab/truth/a.vcf.gz.tbi" and a.tbi.relpath == a.vcf.relpath + ".tbi"
    assert b.bed is None


def test_md5_listings_in_the_formats_seen_in_the_wild():
    h = "0123456789abcdef0123456789abcdef"
    listing = f"{BASE}/x/md5sum"
    assert md5_for(f"{h}  HG002.vcf.gz\n{'f' * 32}  HG002.bed\n", "HG002.bed", listing) == "f" * 32
    assert md5_for(f"{h} *./GRCh38/HG002.vcf.gz\n", "HG002.vcf.gz", listing) == h
    assert md5_for(f"MD5 (HG002.vcf.gz) = {h.upper()}\n", "HG002.vcf.gz", listing) == h
    assert md5_for(f"{h}  other.vcf.gz\n", "HG002.vcf.gz", listing) is None
    assert md5_for("<html>404</html>", "HG002.vcf.gz", listing) is None


def test_a_bare_hash_counts_only_in_the_files_own_md5_sidecar():
    h = "0123456789abcdef0123456789abcdef"
    assert md5_for(f"{h}\n", "HG002.vcf.gz", f"{BASE}/x/HG002.vcf.gz.md5") == h
    assert md5_for(f"{h}\n", "HG002.vcf.gz", "/mirror/x/HG002.vcf.gz.md5") == h
    # Shared listings name their files: a lone hash there belongs to some other file (or to none).
    for shared in ("md5sum", "MD5SUMS", "md5checksums.txt", "HG002_benchmark.md5", "HG002.bed.md5"):
        assert md5_for(f"{h}\n", "HG002.vcf.gz", f"{BASE}/x/{shared}") is None, shared


def test_manifest_pins_survive_reopening(tmp_path):
    Manifest(tmp_path).pin("giab/x.vcf.gz", url="u", sha256="ab" * 32, size=10, md5_source=None)
    pin = Manifest(tmp_path).get("giab/x.vcf.gz")
    assert pin.sha256 == "ab" * 32 and pin.size == 10
    assert json.loads((tmp_path / "giab-manifest.json").read_text())["giab/x.vcf.gz"]["url"] == "u"
    assert Manifest(tmp_path).get("other") is None


def test_contig_rename_plan_maps_both_conventions_and_reports_the_rest():
    mapping, missing = rename_plan(["1", "2", "MT", "chrUn_x", "chr3"], ["chr1", "chr2", "chr3", "chrM"])
    assert mapping == {"1": "chr1", "2": "chr2", "MT": "chrM"}
    assert missing == ["chrUn_x"]
    assert rename_plan(["chr1", "chrM"], ["1", "MT"]) == ({"chr1": "1", "chrM": "MT"}, [])


def test_bcftools_command_lines(tmp_path):
    src, dst, ref = tmp_path / "in.g.vcf.gz", tmp_path / "out.vcf.gz", tmp_path / "ref.fa"
    assert bcftools.gvcf_to_variants_argv(src, dst) == [
        "bcftools", "view", "-i", 'GT="alt"', "--trim-alt-alleles", "-O", "z", "-o", str(dst), str(src),
    ]
    assert bcftools.gvcf_to_variants_argv(src, dst, "S1")[5:7] == ["-s", "S1"]
    assert bcftools.norm_argv(src, tmp_path / "x.bcf", ref)[:8] == ["bcftools", "norm", "-f", str(ref), "-m", "-any", "-c", "e"]
    assert bcftools.norm_argv(src, tmp_path / "x.bcf", ref)[8:10] == ["-O", "b"]
    assert bcftools.index_argv(dst) == ["bcftools", "index", "-f", "-t", str(dst)]
    tmp = tmp_path / ".out.vcf.gz.tbi.tmp"
    assert bcftools.index_argv(dst, out=tmp) == ["bcftools", "index", "-f", "-t", "-o", str(tmp), str(dst)]
    assert bcftools.view_regions_argv(src, dst, tmp_path / "r.bed")[2] == "-R"
    assert bcftools.view_regions_argv(src, dst, tmp_path / "r.bed", streaming=True)[2] == "-T"
    assert bcftools.rename_chrs_argv(src, dst, tmp_path / "m.txt")[2:4] == ["--rename-chrs", str(tmp_path / "m.txt")]


def test_happy_command_line(tmp_path):
    argv = happy.happy_argv(tmp_path / "t.vcf.gz", tmp_path / "q.vcf.gz", tmp_path / "r.fa", tmp_path / "c.bed",
                            tmp_path / "out" / "happy", threads=2, pass_only=True)
    assert argv == [
        "hap.py", str(tmp_path / "t.vcf.gz"), str(tmp_path / "q.vcf.gz"), "-r", str(tmp_path / "r.fa"),
        "-f", str(tmp_path / "c.bed"), "-o", str(tmp_path / "out" / "happy"), "--engine", "xcmp",
        "--threads", "2", "--pass-only",
    ]


def test_happy_summary_is_read_by_header_name(tmp_path):
    # An older hap.py layout: no FP.al, no F1, columns in another order, NaN spelt out.
    path = tmp_path / "old.summary.csv"
    path.write_text(
        "Type,Filter,METRIC.Recall,TRUTH.TP,TRUTH.FN,TRUTH.TOTAL,QUERY.TOTAL,QUERY.FP,QUERY.UNK,FP.gt,"
        "METRIC.Precision,METRIC.Frac_NA,TRUTH.TOTAL.TiTv_ratio\n"
        "SNP,PASS,0.9,90,10,100,95,5,0,1,0.947,0.0,2.1\nINDEL,PASS,0.5,5,5,10,6,1,0,0,0.833,0.0,nan\n"
    )
    rows = {(r.type, r.filter): r.values for r in happy.parse_summary(path)}
    assert rows[("SNP", "PASS")]["TRUTH.TP"] == 90 and rows[("SNP", "PASS")]["METRIC.Recall"] == 0.9
    assert "FP.al" not in rows[("SNP", "PASS")]
    assert rows[("INDEL", "PASS")]["TRUTH.TOTAL.TiTv_ratio"] is None
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(happy.SummaryFormatError, match="missing columns"):
        happy.parse_summary(tmp_path / "bad.csv")


def test_written_summary_has_happys_exact_columns_and_row_order(tmp_path):
    rows = [
        happy.SummaryRow("SNP", "PASS", {"TRUTH.TP": 3.0, "METRIC.Recall": 0.75}),
        happy.SummaryRow("INDEL", "ALL", {"TRUTH.TP": 1.0, "TRUTH.TOTAL.TiTv_ratio": None}),
        happy.SummaryRow("SNP", "ALL", {}),
        happy.SummaryRow("INDEL", "PASS", {}),
    ]
    path = happy.write_summary(rows, tmp_path / "summary.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == (
        "Type,Filter,TRUTH.TOTAL,TRUTH.TP,TRUTH.FN,QUERY.TOTAL,QUERY.FP,QUERY.UNK,FP.gt,FP.al,METRIC.Recall,"
        "METRIC.Precision,METRIC.Frac_NA,METRIC.F1_Score,TRUTH.TOTAL.TiTv_ratio,QUERY.TOTAL.TiTv_ratio,"
        "TRUTH.TOTAL.het_hom_ratio,QUERY.TOTAL.het_hom_ratio"
    )
    assert [ln.split(",")[:2] for ln in lines[1:]] == [["INDEL", "ALL"], ["INDEL", "PASS"], ["SNP", "ALL"], ["SNP", "PASS"]]
    assert lines[4].split(",")[3] == "3" and lines[4].split(",")[10] == "0.75"
    assert happy.parse_summary(path)[3].values["TRUTH.TP"] == 3


def test_truvari_command_line_and_summary(tmp_path):
    argv = truvari.bench_argv(tmp_path / "b.vcf.gz", tmp_path / "c.vcf.gz", tmp_path / "o",
                              reference=tmp_path / "r.fa", includebed=tmp_path / "i.bed", passonly=True)
    assert argv == ["truvari", "bench", "-b", str(tmp_path / "b.vcf.gz"), "-c", str(tmp_path / "c.vcf.gz"),
                    "-o", str(tmp_path / "o"), "-f", str(tmp_path / "r.fa"), "--includebed", str(tmp_path / "i.bed"),
                    "--passonly"]
    (tmp_path / "summary.json").write_text(json.dumps({
        "TP-base": 4, "TP-comp": 4, "FP": 1, "FN": 1, "precision": 0.8, "recall": 0.8, "f1": 0.8,
        "base cnt": 5, "comp cnt": 5, "TP-comp_TP-gt": 3, "TP-comp_FP-gt": 1, "TP-base_TP-gt": 3,
        "TP-base_FP-gt": 1, "gt_concordance": 0.75, "gt_matrix": {"(0, 1)": {"(0, 1)": 3}},
    }))
    m = truvari.parse_summary(tmp_path / "summary.json")
    assert m["TP-base"] == 4 and m["gt_concordance"] == 0.75 and "gt_matrix" not in m
    with pytest.raises(truvari.TruvariSummaryError, match="no summary.json"):
        truvari.parse_summary(tmp_path / "missing" / "summary.json")


def test_a_run_directory_appears_whole_and_a_concurrent_twin_never_replaces_it(tmp_path):
    from genoflows.giab import runs

    key = runs.run_key({"inputs": {"small": {"version": "etag 1"}}})
    assert key == runs.run_key({"inputs": {"small": {"version": "etag 1"}}}) != runs.run_key({"inputs": {}})
    first, second = runs.start(tmp_path, key), runs.start(tmp_path, key)
    assert first != second and runs.finished(tmp_path, key) is None  # work in progress is not a finished run
    (first / "metrics.csv").write_text("first\n")
    (second / "metrics.csv").write_text("second\n")
    final = runs.finish(first, tmp_path, key, {"who": "first"})
    assert runs.finished(tmp_path, key) == final and not first.exists()
    assert runs.finish(second, tmp_path, key, {"who": "second"}) == final  # the twin finds it done ...
    assert (final / "metrics.csv").read_text() == "first\n" and not second.exists()  # ... and leaves it alone
    failed = runs.start(tmp_path, key)
    runs.discard(failed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
