"""Genotype readers and phenotype/covariate handling of the regenie engine, on regenie's example files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from genoflows.regenie.errors import RegenieError
from genoflows.regenie.genotypes import chrom_to_int, open_genotypes
from genoflows.regenie.phenotypes import load_analysis_data
from tests.regenie_golden import EXAMPLE, needs_example, regenie_example  # noqa: F401

pytestmark = needs_example


def test_bed_pgen_bgen_give_the_same_dosages_in_any_sample_order():
    bed = open_genotypes("bed", EXAMPLE / "example")
    pgen = open_genotypes("pgen", EXAMPLE / "example")
    bgen = open_genotypes("bgen", EXAMPLE / "example.bgen")
    assert bed.variants[["chrom", "id", "pos", "allele1", "allele0"]].equals(
        pgen.variants[["chrom", "id", "pos", "allele1", "allele0"]]
    )
    assert list(bgen.samples["key"][:3]) == ["1_1", "2_2", "3_3"]
    order = np.random.default_rng(8).permutation(500)[:97]
    mask = np.zeros(1000, dtype=bool)
    mask[::3] = True
    blocks = [list(g.blocks(64, order, mask)) for g in (bed, pgen, bgen)]
    assert len(blocks[0]) == len(blocks[1]) == len(blocks[2]) == -(-mask.sum() // 64)
    for (ia, xa), (ib, xb), (ic, xc) in zip(*blocks, strict=True):
        assert np.array_equal(ia, ib) and np.array_equal(ia, ic) and np.all(mask[ia])
        assert xa.shape == (97, ia.size)
        assert np.array_equal(xa, xb)
        assert np.allclose(xa, xc, atol=1e-3)  # BGEN stores 8-bit probabilities
    # ALLELE1 = .bim column 5: regenie's A1FREQ of variant 1 on the 494 kept samples is 0.214575 over 500 here
    full = next(bed.blocks(1, None, None))[1][:, 0]
    assert full.mean() / 2 == pytest.approx(0.214)


@pytest.mark.parametrize("name", ["example_3chr.bgen", "example_3chr_zstd.bgen"])  # zlib + .bgi; zstd, no index
def test_bgen_with_sample_file_matches_bed(name):
    bed = open_genotypes("bed", EXAMPLE / "example_3chr")
    bgen = open_genotypes("bgen", EXAMPLE / name, sample_file=EXAMPLE / "example_3chr.sample")
    assert list(bgen.samples["key"]) == list(bed.samples["key"])
    assert list(bgen.variants["chrom"]) == list(bed.variants["chrom"])
    for (ia, xa), (ib, xb) in zip(bed.blocks(200), bgen.blocks(200), strict=True):
        assert np.array_equal(ia, ib)
        assert np.allclose(xa, xb, atol=1e-3)


def test_blocks_never_span_chromosomes():
    g = open_genotypes("bed", EXAMPLE / "example_3chr")
    chrom = g.variants["chrom"].to_numpy()
    plan = g.block_plan(64)
    assert all(np.unique(chrom[b]).size == 1 for b in plan)
    assert [len(b) for b in plan if chrom[b[0]] == 1] == [50]
    assert np.array_equal(np.concatenate(plan), np.arange(500))


def test_missing_calls_are_mean_imputed_over_the_analysed_samples(tmp_path):
    for ext in (".bim", ".fam"):
        shutil.copy(EXAMPLE / f"example_3chr{ext}", tmp_path / f"x{ext}")
    bed = bytearray((EXAMPLE / "example_3chr.bed").read_bytes())
    # variant 3, samples 0-3 (first byte of its record): 0b01 = missing for samples 0 and 2
    off = 3 + 2 * 125
    byte = bed[off]
    byte = (byte & ~0b00110011) | 0b00010001
    bed[off] = byte
    (tmp_path / "x.bed").write_bytes(bytes(bed))
    g = open_genotypes("bed", tmp_path / "x")
    si = np.arange(1, 500)  # sample 0 not analysed: the mean is over samples 1..499
    raw = g.read(np.array([2]), si).dosages[:, 0]
    assert np.isnan(raw[1]) and np.isnan(raw).sum() == 1
    _, x = next(g.blocks(1, si, np.arange(500) == 2))
    assert x[1, 0] == pytest.approx(np.nanmean(raw))
    assert not np.isnan(x).any()


def test_chromosome_codes():
    assert [chrom_to_int(c) for c in ("1", "chr22", "X", "chrX", "XY", "Y", "PAR1")] == [1, 22, 23, 23, 23, 23, 23]
    with pytest.raises(RegenieError, match="MT"):
        chrom_to_int("MT")


def test_categorical_covariates_keep_remove_and_residualisation():
    g = open_genotypes("bed", EXAMPLE / "example_3chr")
    d = load_analysis_data(g.samples, pheno_file=EXAMPLE / "phenotype.txt", keep=EXAMPLE / "fid_iid_to_remove.txt")
    assert d.n == 6 and d.n_genotyped == 6 and d.covariate_names == ["Intercept"]
    with pytest.raises(RegenieError, match="greater than sample size"):
        load_analysis_data(g.samples, pheno_file=EXAMPLE / "phenotype.txt", covar_file=EXAMPLE / "covariates_wBin.txt",
                           cat_covars=["V5"], keep=EXAMPLE / "fid_iid_to_remove.txt")
    d = load_analysis_data(
        g.samples, pheno_file=EXAMPLE / "phenotype.txt", covar_file=EXAMPLE / "covariates_wBin.txt",
        cat_covars=["V5"], remove=EXAMPLE / "fid_iid_to_remove.txt", step=1,
    )
    assert d.n == 494
    assert d.covariate_names == ["Intercept", "V1", "V2", "V3", "V4", "V5_rural", "V5_urban"]
    assert d.k == 7
    y, sd = d.residualized_traits()
    assert np.allclose(d.covariates.T @ y, 0, atol=1e-8)  # covariates (incl. each V5 level) projected out
    assert np.allclose(np.linalg.norm(y, axis=0), np.sqrt(d.n - d.k))
    assert sd.shape == (2,)
    with pytest.raises(RegenieError, match="levels"):
        load_analysis_data(g.samples, pheno_file=EXAMPLE / "phenotype.txt", covar_file=EXAMPLE / "covariates_wBin.txt",
                           cat_covars=["V5"], max_cat_levels=2)


def test_quantitative_trait_with_two_values_needs_force_qt():
    g = open_genotypes("bed", EXAMPLE / "example_3chr")
    with pytest.raises(RegenieError, match="--bt"):
        load_analysis_data(g.samples, pheno_file=EXAMPLE / "phenotype_bin.txt")
    d = load_analysis_data(g.samples, pheno_file=EXAMPLE / "phenotype_bin.txt", force_qt=True)
    assert d.n == 500 and not d.binary
