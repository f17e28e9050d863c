"""Step 2 against regenie v4.1.2's own outputs on its example data (shared/testdata/regenie-example/golden),
with regenie's step-1 ``.loco`` files as the offsets, so these checks do not depend on our step 1."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.regenie_golden import (  # noqa: F401 (regenie_example is a fixture)
    EXAMPLE,
    GOLDEN,
    compare_regenie,
    needs_example,
    read_regenie,
    regenie_example,
    run_cli,
)

pytestmark = needs_example


def test_upstream_bgen_firth_matches_regenie(tmp_path, monkeypatch):
    """The upstream "Getting started" step 2: BGEN, --remove, BT, approximate Firth below p=0.01."""
    out = tmp_path / "test_bin_out_firth"
    rc = run_cli(
        ["--step", "2", "--bgen", "example.bgen", "--covarFile", "covariates.txt", "--phenoFile",
         "phenotype_bin.txt", "--remove", "fid_iid_to_remove.txt", "--bsize", "200", "--bt", "--firth",
         "--approx", "--pThresh", "0.01", "--pred", "golden/fit_bin_out_pred.list", "--out", out],
        monkeypatch,
    )
    assert rc == 0
    for trait in ("Y1", "Y2"):
        compare_regenie(tmp_path / f"test_bin_out_firth_{trait}.regenie", GOLDEN / f"test_bin_out_firth_{trait}.regenie")
    log = (tmp_path / "test_bin_out_firth.log").read_text()
    assert "number of individuals used in analysis = 494" in log
    assert "Number of tests with Firth correction : 29" in log  # regenie's log says 29 too


@pytest.mark.parametrize("chrom", [1, 2, 3])
@pytest.mark.parametrize("trait", ["qt", "bt"])
def test_per_chromosome_bed_matches_regenie(trait, chrom, tmp_path, monkeypatch):
    out = tmp_path / f"{trait}3_step2_chr{chrom}"
    extra = ["--qt"] if trait == "qt" else ["--bt", "--firth", "--approx", "--pThresh", "0.05"]
    pheno = "phenotype.txt" if trait == "qt" else "phenotype_bin.txt"
    rc = run_cli(
        ["--step", "2", "--bed", "example_3chr", "--covarFile", "covariates.txt", "--phenoFile", pheno,
         "--bsize", "200", *extra, "--chr", str(chrom), "--pred", f"golden/{trait}3_step1_pred.list", "--out", out],
        monkeypatch,
    )
    assert rc == 0
    for y in ("Y1", "Y2"):
        compare_regenie(tmp_path / f"{out.name}_{y}.regenie", GOLDEN / f"{out.name}_{y}.regenie")


def test_pgen_gives_the_bed_results(tmp_path, monkeypatch):
    """example.pgen holds the same calls as example.bed: identical files, and regenie's BGEN numbers."""
    common = ["--step", "2", "--covarFile", "covariates.txt", "--phenoFile", "phenotype_bin.txt", "--remove",
              "fid_iid_to_remove.txt", "--bsize", "200", "--bt", "--firth", "--approx", "--pThresh", "0.01",
              "--pred", "golden/fit_bin_out_pred.list"]
    assert run_cli([*common, "--pgen", "example", "--out", tmp_path / "pgen"], monkeypatch) == 0
    assert run_cli([*common, "--bed", "example", "--out", tmp_path / "bed"], monkeypatch) == 0
    for y in ("Y1", "Y2"):
        assert (tmp_path / f"pgen_{y}.regenie").read_text() == (tmp_path / f"bed_{y}.regenie").read_text()
        # hard calls: no INFO column; otherwise regenie's BGEN run (BGEN = same calls)
        header, rows = read_regenie(GOLDEN / f"test_bin_out_firth_{y}.regenie")
        keep = [i for i, c in enumerate(header) if c != "INFO"]
        gold = tmp_path / f"gold_{y}.regenie"
        gold.write_text("\n".join(" ".join(r[i] for i in keep) for r in [header, *rows]) + "\n")
        compare_regenie(tmp_path / f"pgen_{y}.regenie", gold)


def test_shuffled_files_missing_traits_and_cc12(tmp_path, monkeypatch):
    """Row order of the phenotype/covariate files does not matter; 1/2 coding with --cc12 equals 0/1; NA
    phenotypes drop out of N for that trait only."""
    pheno = (EXAMPLE / "phenotype_bin_wNA.txt").read_text().splitlines()
    cov = (EXAMPLE / "covariates.txt").read_text().splitlines()
    (tmp_path / "p.txt").write_text("\n".join([pheno[0], *reversed(pheno[1:])]) + "\n")
    (tmp_path / "c.txt").write_text("\n".join([cov[0], *sorted(cov[1:])]) + "\n")
    recoded = [pheno[0]] + [
        " ".join(f[:2] + [str(int(v) + 1) if v != "NA" else "NA" for v in f[2:]]) for f in (ln.split() for ln in pheno[1:])
    ]
    (tmp_path / "p12.txt").write_text("\n".join(recoded) + "\n")
    base = ["--step", "2", "--bed", EXAMPLE / "example_3chr", "--bsize", "200", "--bt", "--firth", "--approx",
            "--chr", "3", "--pred", "golden/bt3_step1_pred.list"]
    assert run_cli([*base, "--phenoFile", EXAMPLE / "phenotype_bin_wNA.txt", "--covarFile", EXAMPLE / "covariates.txt",
                    "--out", tmp_path / "a"], monkeypatch) == 0
    assert run_cli([*base, "--phenoFile", tmp_path / "p.txt", "--covarFile", tmp_path / "c.txt",
                    "--out", tmp_path / "b"], monkeypatch) == 0
    assert run_cli([*base, "--phenoFile", tmp_path / "p12.txt", "--covarFile", EXAMPLE / "covariates.txt", "--cc12",
                    "--out", tmp_path / "c"], monkeypatch) == 0
    nas = {y: 0 for y in ("Y1", "Y2")}
    for f in (ln.split() for ln in pheno[1:]):
        nas["Y1"] += f[2] == "NA"
        nas["Y2"] += f[3] == "NA"
    for y in ("Y1", "Y2"):
        a = (tmp_path / f"a_{y}.regenie").read_text()
        assert a == (tmp_path / f"b_{y}.regenie").read_text()
        assert a == (tmp_path / f"c_{y}.regenie").read_text()
        header, rows = read_regenie(tmp_path / f"a_{y}.regenie")
        assert {r[header.index("N")] for r in rows} == {str(500 - nas[y])}
    assert nas["Y1"] + nas["Y2"] > 0


def test_ignore_pred_min_mac_and_range(tmp_path, monkeypatch):
    """--ignore-pred needs no step 1; --minMAC drops variants from the output; --range restricts rows."""
    args = ["--step", "2", "--bed", "example_3chr", "--covarFile", "covariates.txt", "--phenoFile",
            "phenotype.txt", "--phenoCol", "Y1", "--bsize", "100", "--qt", "--ignore-pred"]
    assert run_cli([*args, "--out", tmp_path / "all"], monkeypatch) == 0
    h, rows = read_regenie(tmp_path / "all_Y1.regenie")
    in_range = [r for r in rows if r[0] == "2" and 100 <= int(r[1]) <= 300]

    def mac(r: list[str]) -> float:
        return min(float(r[5]), 1 - float(r[5])) * 2 * int(r[h.index("N")])

    threshold = sorted(mac(r) for r in in_range)[len(in_range) // 2]  # drops about half of them
    assert run_cli([*args, "--minMAC", threshold, "--range", "2:100-300", "--out", tmp_path / "sub"], monkeypatch) == 0
    _, sub = read_regenie(tmp_path / "sub_Y1.regenie")
    expect = [r for r in in_range if mac(r) >= threshold - 1e-6]
    assert 0 < len(sub) < len(in_range)
    assert sub == expect
    ignored = len(in_range) - len(sub)
    assert f"Number of ignored tests due to low MAC : {ignored}" in (tmp_path / "sub.log").read_text()


def test_failed_run_keeps_previous_outputs(tmp_path, monkeypatch):
    """A run that fails part-way (NA prediction on chromosome 2) leaves earlier finished files untouched and
    no partial file behind."""
    work = tmp_path / "w"
    shutil.copytree(GOLDEN, work / "golden")
    loco = work / "golden" / "qt3_step1_1.loco"
    lines = loco.read_text().splitlines()
    row = lines[2].split(" ")
    row[5] = "NA"
    lines[2] = " ".join(row)
    loco.write_text("\n".join(lines) + "\n")
    args = ["--step", "2", "--bed", EXAMPLE / "example_3chr", "--covarFile", EXAMPLE / "covariates.txt",
            "--phenoFile", EXAMPLE / "phenotype.txt", "--bsize", "100", "--qt", "--out", work / "res"]
    assert run_cli([*args, "--ignore-pred"], monkeypatch, cwd=work) == 0
    before = {p.name: p.read_bytes() for p in work.glob("res_*.regenie")}
    assert run_cli([*args, "--pred", "golden/qt3_step1_pred.list"], monkeypatch, cwd=work) == 1
    assert {p.name: p.read_bytes() for p in work.glob("res_*.regenie")} == before
    assert not [p for p in work.iterdir() if ".tmp" in p.name]
    assert "ERROR: individual has missing predictions" in (work / "res.log").read_text()


@pytest.mark.parametrize("trait", ["qt", "bt"])
def test_step1_then_step2_reproduces_regenie(trait, tmp_path, monkeypatch):
    """The whole engine: our step 1 (LOCO files) feeding our step 2 on all chromosomes gives regenie's
    per-chromosome step-2 files concatenated (regenie's unsplit run is byte-identical to that)."""
    pheno = "phenotype.txt" if trait == "qt" else "phenotype_bin.txt"
    flag = ["--qt"] if trait == "qt" else ["--bt"]
    common = ["--bed", "example_3chr", "--covarFile", "covariates.txt", "--phenoFile", pheno, *flag]
    assert run_cli(["--step", "1", *common, "--bsize", "100", "--out", tmp_path / "s1"], monkeypatch) == 0
    firth = [] if trait == "qt" else ["--firth", "--approx", "--pThresh", "0.05"]
    assert run_cli(["--step", "2", *common, "--bsize", "200", *firth, "--pred", tmp_path / "s1_pred.list",
                    "--out", tmp_path / "s2"], monkeypatch) == 0
    for y in ("Y1", "Y2"):
        parts = [(GOLDEN / f"{trait}3_step2_chr{c}_{y}.regenie").read_text().splitlines() for c in (1, 2, 3)]
        gold = tmp_path / f"gold_{y}.regenie"
        gold.write_text("\n".join([parts[0][0]] + [ln for p in parts for ln in p[1:]]) + "\n")
        compare_regenie(tmp_path / f"s2_{y}.regenie", gold)


def test_missing_calls_change_only_their_variant(tmp_path, monkeypatch):
    """Missing genotype calls: N counts the called samples, A1FREQ is over them, the call is mean-imputed
    for the test (so only that variant's statistics move); the other rows stay byte-identical."""
    for ext in (".bim", ".fam"):
        shutil.copy(EXAMPLE / f"example_3chr{ext}", tmp_path / f"x{ext}")
    bed = bytearray((EXAMPLE / "example_3chr.bed").read_bytes())
    variant = 60  # on chromosome 2
    start = 3 + variant * 125
    calls = []
    for byte_i in range(4):  # samples 0-15: set the first two of every four to missing (code 01)
        b = bed[start + byte_i]
        for k in (0, 1):
            calls.append((b >> (2 * k)) & 3)
            b = (b & ~(3 << (2 * k))) | (1 << (2 * k))
        bed[start + byte_i] = b
    (tmp_path / "x.bed").write_bytes(bytes(bed))
    args = ["--step", "2", "--covarFile", "covariates.txt", "--phenoFile", "phenotype.txt", "--bsize", "200", "--qt",
            "--chr", "2", "--pred", "golden/qt3_step1_pred.list"]
    assert run_cli([*args, "--bed", tmp_path / "x", "--out", tmp_path / "m"], monkeypatch) == 0
    gold = (GOLDEN / "qt3_step2_chr2_Y1.regenie").read_text().splitlines()
    mine = (tmp_path / "m_Y1.regenie").read_text().splitlines()
    row = variant - 50 + 1  # chr 2 starts at variant 50; +1 for the header
    assert [ln for i, ln in enumerate(mine) if i != row] == [ln for i, ln in enumerate(gold) if i != row]
    h = gold[0].split()
    got, before = dict(zip(h, mine[row].split(), strict=True)), dict(zip(h, gold[row].split(), strict=True))
    assert got["ID"] == before["ID"] == f"inf_{variant - 50}"
    assert int(got["N"]) == 500 - 8
    dosage = {0: 2, 2: 1, 3: 0}  # .bed codes -> ALLELE1 count
    a1_total = float(before["A1FREQ"]) * 1000 - sum(dosage[c] for c in calls)
    assert float(got["A1FREQ"]) == pytest.approx(a1_total / (2 * 492), abs=5e-7)
    assert got["BETA"] != before["BETA"]


def test_extract_exclude_drop_exactly_their_rows(tmp_path, monkeypatch):
    """--exclude (regenie's snplist_rm.txt) and --extract remove rows and change nothing else."""
    excluded = set((EXAMPLE / "snplist_rm.txt").read_text().split())
    (tmp_path / "keep.txt").write_text("\n".join(str(i) for i in range(1, 401)) + "\n")
    args = ["--step", "2", "--bed", "example", "--covarFile", "covariates.txt", "--phenoFile", "phenotype_bin.txt",
            "--remove", "fid_iid_to_remove.txt", "--bsize", "200", "--bt", "--firth", "--approx", "--pThresh", "0.01",
            "--pred", "golden/fit_bin_out_pred.list", "--phenoCol", "Y1"]
    assert run_cli([*args, "--exclude", "snplist_rm.txt", "--extract", tmp_path / "keep.txt", "--out", tmp_path / "f"],
                   monkeypatch) == 0
    header, rows = read_regenie(GOLDEN / "test_bin_out_firth_Y1.regenie")
    keep = [i for i, c in enumerate(header) if c != "INFO"]
    expected = [r for r in rows if r[2] not in excluded and int(r[2]) <= 400]
    assert 0 < len(expected) < 400 and excluded & {r[2] for r in rows}
    gold = tmp_path / "gold.regenie"
    gold.write_text("\n".join(" ".join(r[i] for i in keep) for r in [header, *expected]) + "\n")
    compare_regenie(tmp_path / "f_Y1.regenie", gold)
    assert not (tmp_path / "f_Y2.regenie").exists()


def test_quantitative_trait_with_missing_values(tmp_path, monkeypatch):
    """QT NAs are masked per trait in step 2: Y1's N drops, Y2 (complete) is unaffected by Y1's gaps, and
    Y1's statistics stay close to a run on the complete samples only (regenie keeps the covariate basis of
    all analysed samples, so they are not identical)."""
    lines = (EXAMPLE / "phenotype.txt").read_text().splitlines()
    rng = np.random.default_rng(3)
    holes = set(rng.choice(np.arange(1, len(lines)), size=40, replace=False).tolist())
    out = [lines[0]]
    for i, ln in enumerate(lines[1:], 1):
        f = ln.split()
        if i in holes:
            f[2] = "NA"
        out.append(" ".join(f))
    (tmp_path / "p.txt").write_text("\n".join(out) + "\n")
    base = ["--step", "2", "--bed", EXAMPLE / "example_3chr", "--covarFile", EXAMPLE / "covariates.txt", "--bsize",
            "200", "--qt", "--chr", "2", "--ignore-pred", "--phenoFile", tmp_path / "p.txt"]
    assert run_cli([*base, "--out", tmp_path / "both"], monkeypatch) == 0
    assert run_cli([*base, "--phenoCol", "Y2", "--out", tmp_path / "y2"], monkeypatch) == 0
    assert run_cli([*base, "--phenoCol", "Y1", "--out", tmp_path / "y1"], monkeypatch) == 0
    assert (tmp_path / "both_Y2.regenie").read_text() == (tmp_path / "y2_Y2.regenie").read_text()
    h, both = read_regenie(tmp_path / "both_Y1.regenie")
    _, alone = read_regenie(tmp_path / "y1_Y1.regenie")
    assert {r[h.index("N")] for r in both} == {"460"} == {r[h.index("N")] for r in alone}
    b1 = np.array([float(r[h.index("BETA")]) for r in both])
    b0 = np.array([float(r[h.index("BETA")]) for r in alone])
    s0 = np.array([float(r[h.index("SE")]) for r in alone])
    assert np.max(np.abs(b1 - b0) / s0) < 0.1
    assert not np.array_equal(b1, b0)
