"""GWAS building blocks without Prefect: chromosome detection, chunks, merge, input checks, argv, report."""

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from genoflows.gwas.chromosomes import GenotypeError, detect_chromosomes, read_variants
from genoflows.gwas.inputs import (
    InputError,
    check_phenotypes,
    check_sample_overlap,
    genotype_sample_keys,
    read_table,
)
from genoflows.gwas.merge import merge_text
from genoflows.gwas.plan import Unit, chromosome_codes, chunk_ranges, plan_units
from genoflows.gwas.report import lambda_gc, lead_table, top_hits
from genoflows.tools.regenie import Engine, RegenieInputs, step1_argv, step2_argv

# CI has shared/ beside the clone; a worktree elsewhere points GENOFLOWS_SHARED_DIR at it.
EX = Path(os.environ.get("GENOFLOWS_SHARED_DIR") or Path(__file__).parents[1] / ".." / "shared") / "testdata" / "regenie-example"


def _detect(fmt, path, **kw):
    return detect_chromosomes(*read_variants(fmt, path), **kw)


def test_chromosomes_from_bim_pvar_bgen_index_and_scan(tmp_path):
    want = [("1", 50), ("2", 400), ("3", 50)]
    assert [(c.name, c.n_variants) for c in _detect("bed", EX / "example_3chr.bim")[0]] == want
    assert [(c.name, c.n_variants) for c in _detect("bgen", EX / "example_3chr.bgen")[0]] == want
    no_index = tmp_path / "x.bgen"  # no .bgi: the variant blocks are scanned
    shutil.copy(EX / "example_3chr_zstd.bgen", no_index)
    assert [(c.name, c.n_variants) for c in _detect("bgen", no_index)[0]] == want
    assert [(c.name, c.n_variants) for c in _detect("pgen", EX / "example.pvar")[0]] == [("1", 1000)]


def test_bgen_index_is_used_when_present(tmp_path):
    """A .bgi that says something else wins over the scan (so it must be what is read)."""
    bgen = tmp_path / "y.bgen"
    shutil.copy(EX / "example_3chr.bgen", bgen)
    shutil.copy(EX / "example_3chr.bgen.bgi", f"{bgen}.bgi")
    with sqlite3.connect(f"{bgen}.bgi") as db:
        db.execute("UPDATE Variant SET chromosome = 'scaffold_9' WHERE chromosome = '3'")
    assert [c.name for c in _detect("bgen", bgen)[0]] == ["1", "2", "scaffold_9"]


def test_non_human_names_kept_compressed_pvar_and_filters(tmp_path):
    pvar = tmp_path / "g.pvar.gz"
    rows = [("NC_036780.1", 10, "a"), ("NC_036780.1", 20, "b"), ("chrZ", 5, "c"), ("scaffold_1", 7, "d")]
    with gzip.open(pvar, "wt") as fh:
        fh.write("##fileformat=PVARv1.0\n#CHROM\tPOS\tID\tREF\tALT\n")
        fh.writelines(f"{c}\t{p}\t{i}\tA\tG\n" for c, p, i in rows)
    found, empty = _detect("pgen", pvar, exclude={"d"})
    assert [(c.name, c.n_variants) for c in found] == [("NC_036780.1", 2), ("chrZ", 1)]
    assert empty == ["scaffold_1"]
    codes = chromosome_codes(found)
    assert codes == {"NC_036780.1": "1", "chrZ": "2"}
    assert chromosome_codes(_detect("bed", EX / "example_3chr.bim")[0]) == {"1": "1", "2": "2", "3": "3"}


def test_vcf_header_contigs_checked_against_records(tmp_path):
    good, bad = tmp_path / "good.vcf.gz", tmp_path / "bad.vcf"
    head = "##fileformat=VCFv4.2\n##contig=<ID=chrZ>\n##contig=<ID=chrW>\n##contig=<ID=NC_1.1>\n" \
           '##FORMAT=<ID=GT,Number=1,Type=String,Description="g">\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\n'
    body = "chrZ\t5\tv1\tA\tG\t.\t.\t.\tGT\t0/1\nNC_1.1\t9\tv2\tA\tG\t.\t.\t.\tGT\t1/1\n"
    plain = tmp_path / "good.vcf"
    plain.write_text(head + body)
    pysam.tabix_compress(str(plain), str(good))
    found, _ = _detect("vcf", good)
    assert [c.name for c in found] == ["chrZ", "NC_1.1"]  # chrW declared but empty: not a chromosome to test
    bad.write_text(head + body + "chr_undeclared\t3\tv3\tA\tG\t.\t.\t.\tGT\t0/0\n")
    with pytest.raises(GenotypeError, match="does not declare"):
        _detect("vcf", bad)


def test_chromosome_in_two_blocks_is_refused():
    with pytest.raises(GenotypeError, match="more than one block"):
        detect_chromosomes(["1", "2", "1"], [1, 2, 3], ["a", "b", "c"], source="x.bim")


def test_chunks_never_split_a_position_and_cover_everything():
    pos = np.array([1, 2, 2, 2, 3, 4, 5, 5, 6, 7])
    chunks = chunk_ranges(pos, 3)
    assert sum(n for *_, n in chunks) == len(pos)
    assert chunks[0] == (1, 2, 4)  # the three 2s stay together
    for (_, hi, _), (lo, _, _) in zip(chunks, chunks[1:], strict=False):
        assert hi < lo
    assert chunk_ranges(pos, 100) == [(1, 7, 10)]


def test_unsorted_big_chromosome_runs_whole():
    from genoflows.gwas.chromosomes import Chromosome

    c = Chromosome("chrZ", 5, np.array([5, 1, 2, 3, 4]))
    units, notes = plan_units([c], {"chrZ": "chrZ"}, 2)
    assert len(units) == 1 and units[0].region is None and "not sorted" in notes[0]


def test_merge_of_golden_per_chromosome_runs_and_name_mapping(tmp_path):
    """regenie v4.1.2's own per-chromosome outputs merge to one header + rows in order."""
    parts = [EX / "golden" / f"qt3_step2_chr{c}_Y1.regenie" for c in (1, 2, 3)]
    text, rows = merge_text(parts)
    lines = text.splitlines()
    assert rows == 500 and lines[0] == parts[0].read_text().splitlines()[0] and lines.count(lines[0]) == 1
    assert text == parts[0].read_text() + "".join("".join(p.read_text().splitlines(True)[1:]) for p in parts[1:])
    renamed, _ = merge_text(parts, {"1": "NC_1.1", "2": "chrZ"})
    assert renamed.splitlines()[1].startswith("NC_1.1 ") and renamed.splitlines()[60].startswith("chrZ ")
    assert renamed.splitlines()[-1].startswith("3 ")


def test_phenotype_checks_name_the_problem(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("FID IID Y1 Y2\n1 1 0 1.5\n2 2 1 2.5\n3 3 NA 3.1\n4 4 1 x\n")
    t = read_table(f, "s3://b/p.txt")
    with pytest.raises(InputError, match=r"phenotype column\(s\) \['Y3'\] not found"):
        check_phenotypes(t, ["Y3"], "qt")
    with pytest.raises(InputError, match="column Y2, sample 4 4: 'x' is not a number"):
        check_phenotypes(t, ["Y2"], "qt")
    f.write_text("FID IID Y1\n1 1 0\n2 2 2\n3 3 1\n")
    with pytest.raises(InputError, match="binary trait Y1 has value '2' for sample 2 2; code it 0=control, 1=case"):
        check_phenotypes(read_table(f, "p"), ["Y1"], "bt")
    check_phenotypes(read_table(f, "p"), ["Y1"], "qt")
    f.write_text("IID Y1\n1 0\n")
    with pytest.raises(InputError, match="must start with FID IID"):
        read_table(f, "p")


def test_samples_that_match_nothing(tmp_path):
    keys = genotype_sample_keys("bed", EX / "example", None)
    assert len(keys) == 500 and keys[0] == "1_1"
    assert genotype_sample_keys("bgen", EX / "example.bgen", None)[0] == "1_1"
    assert genotype_sample_keys("bgen", EX / "example_3chr.bgen", EX / "example_3chr.sample")[0] == "1_1"
    f = tmp_path / "p.txt"
    f.write_text("FID IID Y1\nS1 S1 1.0\nS2 S2 2.0\n")
    with pytest.raises(InputError, match="no sample of .* matches"):
        check_sample_overlap(keys, read_table(f, "p.txt"), "example")


def test_one_argv_for_both_binaries_and_step1_never_gets_chr():
    inp = RegenieInputs("bed", Path("/d/example"), Path("/d/p.txt"), ("Y1", "Y2"), "bt", covar_file=Path("/d/c.txt"),
                        cat_covar_columns=("site",), options={"--bsize": 200, "--loocv": True, "--minMAC": 3})
    real, builtin = Engine("regenie", "regenie", "4.1.2"), Engine("builtin", "genoflows-regenie", "0.1")
    assert step1_argv(real, inp, Path("/o/fit"))[1:] == step1_argv(builtin, inp, Path("/o/fit"))[1:]
    s1 = step1_argv(real, inp, Path("/o/fit"))
    assert "--chr" not in s1 and "--range" not in s1 and "--minMAC" not in s1 and "--loocv" in s1
    s2 = step2_argv(builtin, inp, Path("/o/fit_pred.list"), Path("/o/chrZ"), chrom="3")
    assert s2[:3] == ["genoflows-regenie", "--step", "2"] and s2[s2.index("--chr") + 1] == "3"
    assert "--loocv" not in s2 and s2[s2.index("--minMAC") + 1] == "3" and "--firth" in s2 and "--approx" in s2
    s2r = step2_argv(real, inp, Path("/o/p.list"), Path("/o/c"), region=("2", 10, 99))
    assert s2r[s2r.index("--range") + 1] == "2:10-99" and "--chr" not in s2r


def test_top_hits_leads_per_locus_and_lambda():
    rng = np.random.default_rng(1)
    n = 4000
    df = pd.DataFrame({"CHROM": ["chrZ"] * (n // 2) + ["scaffold_1"] * (n // 2),
                       "GENPOS": np.r_[np.arange(n // 2) * 1000, np.arange(n // 2) * 1000],
                       "ID": [f"v{i}" for i in range(n)], "ALLELE1": "A",
                       "LOG10P": -np.log10(rng.uniform(size=n))})
    assert abs(lambda_gc(df) - 1.0) < 0.1
    df.loc[100:103, "LOG10P"] = [9.0, 12.0, 8.0, 7.5]  # one locus on chrZ
    df.loc[3000, "LOG10P"] = 20.0  # another on scaffold_1
    hits = top_hits(df)
    leads = lead_table(hits)
    assert hits.genome_wide and [r["ID"] for r in leads] == ["v3000", "v101"]
    assert leads[1]["variants_in_locus"] == 4
    quiet = top_hits(df[df["LOG10P"] < 7])
    assert not quiet.genome_wide and len(quiet.table) == 20


def test_plink2_vcf_conversion_keeps_dosages(tmp_path):
    from genoflows.tools.plink2 import vcf_to_pgen_argv

    vcf = tmp_path / "d.vcf"
    vcf.write_text(
        "##fileformat=VCFv4.2\n##contig=<ID=chrZ>\n"
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="g">\n'
        '##FORMAT=<ID=DS,Number=1,Type=Float,Description="d">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tA\tB\n"
        "chrZ\t5\tv1\tA\tG\t.\t.\t.\tGT:DS\t0/1:0.8\t1/1:1.9\n"
    )
    argv = vcf_to_pgen_argv(vcf, tmp_path / "d", dosage_field="DS")
    subprocess.run(argv, check=True, capture_output=True)
    out = subprocess.run(["plink2", "--pfile", str(tmp_path / "d"), "--allow-extra-chr", "--export", "A",
                          "--out", str(tmp_path / "x")], capture_output=True)
    assert out.returncode == 0
    raw = (tmp_path / "x.raw").read_text().splitlines()
    assert raw[1].split()[-1] in ("1.2", "0.2", "0.8") and "chrZ" in (tmp_path / "d.pvar").read_text()
    assert genotype_sample_keys("vcf", vcf, None) == ["A_A", "B_B"]


def test_unit_keys_are_safe_names():
    u = Unit("NC_036780.1", "1", 2, 3, (10, 20), 5)
    assert u.key == "chrNC_036780.1.part002of003"
    assert Unit("weird/name", "2", 0, 1, None, 1).key == "chrweird_name"


def test_manifest_keys_and_idempotency_keys():
    from flows.gwas import idempotency_key, is_manifest_key

    assert is_manifest_key("s3://b/incoming/exp/manifest.json") and is_manifest_key("s3://b/x/exp17.manifest.json")
    assert not is_manifest_key("s3://b/x/manifest.json.bak") and not is_manifest_key("s3://b/x/notes.json")
    a = idempotency_key("s3://b/incoming/manifest.json", "e1")
    assert a == "gwas-manifest:b/incoming/manifest.json@e1" != idempotency_key("s3://b/incoming/manifest.json", "e2")


def test_names_regenie_would_rewrite_are_recoded_too():
    from genoflows.gwas.chromosomes import Chromosome

    human = [Chromosome(n, 1, np.array([1])) for n in ("chr1", "chr2", "chrX")]
    assert chromosome_codes(human) == {"chr1": "1", "chr2": "2", "chrX": "3"}


def test_run_id_cannot_leave_out_dir(tmp_path):
    from tasks.gwas import RunLayout

    assert RunLayout.for_run(str(tmp_path), "exp", "r1").work == tmp_path / "exp" / "r1"
    with pytest.raises(ValueError, match="run_id"):
        RunLayout.for_run(str(tmp_path), "exp", "../../etc")


def test_a_trait_with_no_tested_variant_fails(tmp_path):
    from genoflows.gwas.merge import MergeError, require_rows

    header_only = tmp_path / "chr1_Y1.regenie"
    header_only.write_text("CHROM GENPOS ID ALLELE0 ALLELE1 A1FREQ N TEST BETA SE CHISQ LOG10P EXTRA\n")
    _, rows = merge_text([header_only, header_only])
    with pytest.raises(MergeError, match="trait Y1: step 2 tested no variant"):
        require_rows("Y1", rows)
    require_rows("Y1", 1)
