"""regenie step 1 (level-0/level-1 ridge, CV/LOOCV, LOCO): against regenie v4.1.2's own files, against
brute-force refits for the CV shortcuts the golden runs do not reach, and on adversarial inputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from genoflows.regenie import ridge
from genoflows.regenie.step1 import Block, Step1Settings, Step1Traits, fit_step1
from tests.regenie_golden import (  # noqa: F401 (regenie_example is a fixture)
    EXAMPLE,
    GOLDEN,
    needs_example,
    regenie_example,
    run_cli,
)

LOCO_TOL = 1e-5  # issue 8: LOCO predictions within 1e-5 of regenie's

# The golden step-1 commands (golden/README.md), run from a directory holding example/ and golden/.
GOLDEN_RUNS = {
    "qt3_step1": "--bed example/example_3chr --covarFile example/covariates.txt --phenoFile example/phenotype.txt "
    "--bsize 100 --qt",
    "bt3_step1": "--bed example/example_3chr --covarFile example/covariates.txt "
    "--phenoFile example/phenotype_bin.txt --bsize 100 --bt",
    "fit_bin_out": "--bed example/example --exclude example/snplist_rm.txt --covarFile example/covariates.txt "
    "--phenoFile example/phenotype_bin.txt --remove example/fid_iid_to_remove.txt --bsize 100 --bt --lowmem "
    "--lowmem-prefix golden/tmp_rg",
}


def read_loco(path: Path) -> tuple[list[str], dict[int, np.ndarray]]:
    lines = path.read_text().splitlines()
    rows = {}
    for line in lines[1:]:
        f = line.split(" ")
        assert f[-1] == "", f"{path.name}: regenie ends each row with a space"
        rows[int(f[0])] = np.array([np.nan if x == "NA" else float(x) for x in f[1:-1]])
    return lines[0].split(" "), rows


def _workdir(tmp_path: Path) -> Path:
    (tmp_path / "example").symlink_to(EXAMPLE)
    (tmp_path / "golden").mkdir()
    return tmp_path


def _level1_table(log: str) -> list[str]:
    """The per-trait CV table regenie logs: '  <h2> : Rsq = ..., MSE = ...[, -logLik/N = ...][<- min value]'."""
    return [ln for ln in log.splitlines() if ln.startswith("  0.") and "Rsq =" in ln]


@needs_example
@pytest.mark.parametrize("name", sorted(GOLDEN_RUNS))
def test_step1_matches_regenie(name, tmp_path, monkeypatch):
    work = _workdir(tmp_path)
    args = ["--step", "1", *GOLDEN_RUNS[name].split(), "--threads", "2", "--use-relative-path", "--out", f"golden/{name}"]
    assert run_cli(args, monkeypatch, cwd=work) == 0
    assert (work / "golden" / f"{name}_pred.list").read_text() == (GOLDEN / f"{name}_pred.list").read_text()
    for i in (1, 2):
        header, mine = read_loco(work / "golden" / f"{name}_{i}.loco")
        gold_header, gold = read_loco(GOLDEN / f"{name}_{i}.loco")
        assert header == gold_header  # same samples, same (string-sorted) order
        assert sorted(mine) == list(range(1, 24))
        for chrom, values in gold.items():
            assert np.array_equal(np.isnan(mine[chrom]), np.isnan(values))
            dev = np.nanmax(np.abs(mine[chrom] - values))
            assert dev <= LOCO_TOL, f"{name}_{i}.loco chr {chrom}: max deviation {dev:g}"
    # the level-1 CV table (Rsq, MSE, -logLik/N per h2 and the chosen one) as regenie printed it
    log = (work / "golden" / f"{name}.log").read_text()
    assert _level1_table(log) == _level1_table((GOLDEN / f"{name}.log").read_text())
    assert not list((work / "golden").glob("tmp_rg*")), "--lowmem files must be removed at the end"


@needs_example
@pytest.mark.parametrize("source", ["--bgen example/example.bgen", "--pgen example/example"])
def test_bgen_and_pgen_inputs_give_regenie_loco(source, tmp_path, monkeypatch):
    """example.bgen (embedded FID_IID sample keys, 8-bit dosages) and example.pgen hold the calls of
    example.bed: step 1 on them reproduces regenie's fit_bin_out LOCO files."""
    work = _workdir(tmp_path)
    args = GOLDEN_RUNS["fit_bin_out"].replace("--bed example/example", source).split()
    assert run_cli(["--step", "1", *args, "--use-relative-path", "--out", "golden/fit_bin_out"], monkeypatch,
                   cwd=work) == 0
    for i in (1, 2):
        header, mine = read_loco(work / "golden" / f"fit_bin_out_{i}.loco")
        gold_header, gold = read_loco(GOLDEN / f"fit_bin_out_{i}.loco")
        assert header == gold_header
        assert max(np.nanmax(np.abs(mine[c] - gold[c])) for c in gold) <= LOCO_TOL


@needs_example
def test_missing_binary_values_are_NA_in_the_loco_and_the_rest_unchanged_by_row_order(tmp_path, monkeypatch):
    """phenotype_bin_wNA.txt: a sample with a missing Y reads NA in that trait's LOCO rows; shuffling the rows
    of the phenotype and covariate files changes nothing (samples are matched on FID_IID)."""
    work = _workdir(tmp_path)
    rng = np.random.default_rng(7)
    for src in ("phenotype_bin_wNA.txt", "covariates.txt"):
        lines = (EXAMPLE / src).read_text().splitlines()
        body = lines[1:]
        rng.shuffle(body)
        (work / f"shuffled_{src}").write_text("\n".join([lines[0], *body]) + "\n")
    base = ["--step", "1", "--bed", "example/example_3chr", "--bsize", "100", "--bt", "--use-relative-path"]
    assert run_cli([*base, "--phenoFile", "example/phenotype_bin_wNA.txt", "--covarFile", "example/covariates.txt",
                    "--out", "a"], monkeypatch, cwd=work) == 0
    assert run_cli([*base, "--phenoFile", "shuffled_phenotype_bin_wNA.txt", "--covarFile",
                    "shuffled_covariates.txt", "--out", "b"], monkeypatch, cwd=work) == 0
    pheno = {f"{r[0]}_{r[1]}": r[2:] for r in (ln.split() for ln in (EXAMPLE / "phenotype_bin_wNA.txt").read_text().splitlines()[1:])}
    for i in (1, 2):
        assert (work / f"a_{i}.loco").read_bytes() == (work / f"b_{i}.loco").read_bytes()
        header, rows = read_loco(work / f"a_{i}.loco")
        ids = header[1:-1]
        expected_na = np.array([pheno[s][i - 1] == "NA" for s in ids])
        assert len(ids) == 500 and expected_na.sum() == (50 if i == 1 else 0)  # the file's 50 NAs are all in Y1
        for chrom in range(1, 24):
            assert np.array_equal(np.isnan(rows[chrom]), expected_na)


@needs_example
def test_monomorphic_variant_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    """regenie stops on a step-1 SNP with no variance; so do we, naming it, with no partial output and no
    --lowmem file left behind."""
    work = _workdir(tmp_path)
    for ext in ("bim", "fam"):
        shutil.copy(EXAMPLE / f"example_3chr.{ext}", work / f"flat.{ext}")
    bed = bytearray((EXAMPLE / "example_3chr.bed").read_bytes())
    per_variant = (500 + 3) // 4
    v = 260  # a chr-2 variant in the third block: level-0 files already exist when it is read
    bed[3 + v * per_variant : 3 + (v + 1) * per_variant] = b"\x00" * per_variant  # all homozygous A1
    (work / "flat.bed").write_bytes(bytes(bed))
    vid = (EXAMPLE / "example_3chr.bim").read_text().splitlines()[v].split()[1]
    rc = run_cli(["--step", "1", "--bed", "flat", "--covarFile", "example/covariates.txt", "--phenoFile",
                  "example/phenotype.txt", "--bsize", "100", "--qt", "--lowmem", "--out", "m"], monkeypatch, cwd=work)
    assert rc == 1
    assert f"ERROR: !! Uh-oh, SNP {vid} has low variance" in (work / "m.log").read_text()
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("m")) == ["m.log"]


@needs_example
def test_pred_list_paths_are_absolute_by_default(tmp_path, monkeypatch):
    work = _workdir(tmp_path)
    assert run_cli(["--step", "1", *GOLDEN_RUNS["qt3_step1"].split(), "--out", "golden/abs"], monkeypatch,
                   cwd=work) == 0
    lines = (work / "golden" / "abs_pred.list").read_text().splitlines()
    assert lines == [f"Y{i} {os.path.join(str(work), f'golden/abs_{i}.loco')}" for i in (1, 2)]


# ---------------------------------------------------------------------------------------------------------
# The shortcuts the golden runs do not exercise, against brute-force refits on small random data
# ---------------------------------------------------------------------------------------------------------


def _random_problem(n=60, b=12, k=3, p=2, seed=0, n_out=0):
    """Dosages, an orthonormal covariate basis, residualised traits; ``n_out`` rows not analysed."""
    rng = np.random.default_rng(seed)
    g = rng.binomial(2, rng.uniform(0.1, 0.5, b), size=(n, b)).astype(float)
    in_an = np.ones(n, bool)
    in_an[rng.choice(n, n_out, replace=False)] = False
    c = np.column_stack([np.ones(n), rng.standard_normal((n, k - 1))]) * in_an[:, None]
    q = np.linalg.qr(c[in_an])[0]
    basis = np.zeros((n, k))
    basis[in_an] = q
    y = rng.standard_normal((n, p)) * in_an[:, None]
    y -= basis @ (basis.T @ y)
    y /= np.linalg.norm(y, axis=0) / np.sqrt(in_an.sum() - k)
    return g, basis, y, in_an


def _explicit_block(g, basis, in_an):
    """The residualised, scaled block written out in full (what regenie's residualize_genotypes makes)."""
    x = g * in_an[:, None]
    x = x - basis @ (basis.T @ x)
    return x / (np.linalg.norm(x, axis=0) / np.sqrt(in_an.sum() - basis.shape[1]))


def test_level0_kfold_equals_explicit_per_fold_ridge_with_unanalysed_rows():
    g, basis, y, in_an = _random_problem(n_out=7)
    lambdas = np.array([3.0, 40.0])
    bounds = ridge.fold_bounds(ridge.kfold_sizes(in_an, 4))
    mask = np.repeat(in_an[:, None], 2, axis=1)
    prod, _ = ridge.block_products(g * in_an[:, None], y, basis, bounds, int(in_an.sum()))
    got = ridge.level0_kfold(prod, mask, bounds, lambdas)
    x = _explicit_block(g, basis, in_an)
    for a, z in bounds:
        train = np.r_[0:a, z : len(x)]
        for j, lam in enumerate(lambdas):
            beta = np.linalg.solve(x[train].T @ x[train] + lam * np.eye(x.shape[1]), x[train].T @ y[train])
            np.testing.assert_allclose(got[a:z, j, :], (x[a:z] @ beta) * mask[a:z], atol=1e-10)


def test_level0_loocv_equals_leave_one_out_refits():
    g, basis, y, in_an = _random_problem(n=40, b=8)
    lambdas = np.array([0.5, 9.0])
    prod, _ = ridge.block_products(g, y, basis, [(0, 40)], 40)
    got = ridge.level0_loocv(prod, y, lambdas)
    x = _explicit_block(g, basis, in_an)
    for i in (0, 17, 39):
        keep = np.arange(40) != i
        for j, lam in enumerate(lambdas):
            beta = np.linalg.solve(x[keep].T @ x[keep] + lam * np.eye(8), x[keep].T @ y[keep])
            np.testing.assert_allclose(got[i, j], x[i] @ beta, atol=1e-10)


def test_qt_level1_loocv_cv_and_loco_equal_leave_one_out_refits():
    rng = np.random.default_rng(3)
    n, k = 35, 6
    w = rng.standard_normal((n, k))
    yv = w @ rng.standard_normal(k) * 0.3 + rng.standard_normal(n)
    taus = np.array([0.7, 12.0])
    sums = ridge.level1_ridge_loocv(w, yv, taus, n, 1)
    cols = [slice(0, 2), slice(2, 6)]
    loco_parts = ridge.loocv_ridge_predictions(w, yv, 12.0, cols)
    for j, tau in enumerate(taus):
        preds = np.empty(n)
        for i in range(n):
            keep = np.arange(n) != i
            beta = np.linalg.solve(w[keep].T @ w[keep] + tau * np.eye(k), w[keep].T @ yv[keep])
            preds[i] = w[i] @ beta
            if j == 1:
                np.testing.assert_allclose(loco_parts[i], [w[i, c] @ beta[c] for c in cols], atol=1e-10)
        np.testing.assert_allclose(sums.sxy[j], preds @ yv, rtol=1e-10)
        np.testing.assert_allclose(sums.sx2[j], preds @ preds, rtol=1e-10)


def _penalised_logistic_optimum(x, y, offset, tau):
    def f(beta):
        eta = offset + x @ beta
        return np.sum(np.logaddexp(0, eta) - y * eta) + tau * beta @ beta / 2

    def grad(beta):
        p = 1 / (1 + np.exp(-(offset + x @ beta)))
        return x.T @ (p - y) + tau * beta

    return minimize(f, np.zeros(x.shape[1]), jac=grad, method="BFGS", options={"gtol": 1e-11}).x


def test_ridge_logistic_fits_reach_the_penalised_optimum():
    """K-fold level 1 (BT): each fold's β is the optimum of the penalised likelihood on the other folds
    (regenie's penalty is τ‖β‖² on the deviance scale, i.e. τ‖β‖²/2 on the log-likelihood)."""
    rng = np.random.default_rng(11)
    n, k = 240, 5
    w = rng.standard_normal((n, k))
    offset = 0.3 * rng.standard_normal(n) - 0.8
    yv = (rng.uniform(size=n) < 1 / (1 + np.exp(-(offset + w @ rng.standard_normal(k) * 0.5)))).astype(float)
    mask = np.ones(n, bool)
    mask[[4, 50, 200]] = False  # missing phenotypes take no part
    bounds = ridge.fold_bounds(ridge.kfold_sizes(np.ones(n, bool), 3))
    taus = np.array([25.0, 2.0])
    betas, _ = ridge.level1_logistic_kfold(w, yv, offset, mask, bounds, taus)
    for (a, z), beta in zip(bounds, betas, strict=True):
        train = mask.copy()
        train[a:z] = False
        for j, tau in enumerate(taus):
            ref = _penalised_logistic_optimum(w[train], yv[train], offset[train], tau)
            np.testing.assert_allclose(beta[:, j], ref, atol=2e-5)
    full, _, _ = ridge.fit_ridge_logistic(w, yv, offset, mask, 2.0, np.zeros(k))
    np.testing.assert_allclose(full, _penalised_logistic_optimum(w[mask], yv[mask], offset[mask], 2.0), atol=2e-5)


def test_kfold_layout_counts_only_analysed_samples():
    """Folds close on their ⌊N/K⌋-th analysed sample; unanalysed samples ride along; the last takes the rest."""
    in_an = np.array([1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0], bool)  # 9 analysed, K=3 -> 3 each
    assert ridge.kfold_sizes(in_an, 3).tolist() == [4, 5, 5]  # closes at samples 3 and 8
    with pytest.raises(ValueError, match="not enough samples"):
        ridge.kfold_sizes(in_an, 6)


def _bt_traits(n, y_raw, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.ones((n, 1)) / np.sqrt(n)
    y = y_raw - y_raw.mean(axis=0)
    y /= np.linalg.norm(y, axis=0) / np.sqrt(n - 1)
    offset = np.repeat(np.log(y_raw.mean(axis=0) / (1 - y_raw.mean(axis=0)))[None, :], n, axis=0)
    traits = Step1Traits(
        names=["Y1"], sample_ids=[f"{i}_{i}" for i in range(n)], in_analysis=np.ones(n, bool),
        mask=np.ones_like(y_raw, bool), y=y, basis=basis, binary=True, y_raw=y_raw, offset=offset,
    )
    g = rng.binomial(2, 0.3, size=(n, 40)).astype(float)
    return traits, [Block(1, [f"a{i}" for i in range(20)]), Block(2, [f"b{i}" for i in range(20)])], g


def test_binary_kfold_needs_cases_and_controls_in_every_fold():
    """N >= 5000 keeps K-fold CV for a BT; a fold with controls only is regenie's error, naming the trait."""
    from genoflows.regenie.errors import RegenieError

    n = 5000
    y_raw = np.zeros((n, 1))
    y_raw[2000:2600] = 1  # no case among the first 1000 samples (fold 1 of 5)
    traits, blocks, g = _bt_traits(n, y_raw)
    with pytest.raises(RegenieError, match="one of the folds has only cases/controls for phenotype 'Y1'"):
        fit_step1(blocks, iter([g[:, :20], g[:, 20:]]), traits, Step1Settings(cv=5))
    y_raw = (np.random.default_rng(1).uniform(size=(n, 1)) < 0.2).astype(float)
    traits, blocks, g = _bt_traits(n, y_raw)
    res = fit_step1(blocks, iter([g[:, :20], g[:, 20:]]), traits, Step1Settings(cv=5))
    assert not res.loocv and res.n_folds == 5 and res.fits[0].loco is not None


def test_missing_calls_take_the_mean_of_analysed_samples_only():
    """A missing call is the variant's mean over analysed samples (not over samples without phenotypes),
    exactly as if the caller had imputed it: same LOCO to the last bit, for K-fold and LOOCV."""
    rng = np.random.default_rng(5)
    n, b, k = 90, 30, 2
    g, basis, y, in_an = _random_problem(n=n, b=b, k=k, p=1, seed=5, n_out=9)
    g[~in_an] = 2.0  # unanalysed samples would pull the mean up if they were counted
    holes = rng.uniform(size=g.shape) < 0.05
    holes[~in_an] = rng.uniform(size=((~in_an).sum(), b)) < 0.5
    with_nan = np.where(holes, np.nan, g)
    filled = with_nan.copy()
    for j in range(b):
        ok = in_an & ~holes[:, j]
        filled[holes[:, j] & in_an, j] = g[ok, j].mean()
        filled[~in_an, j] = 7.0  # whatever unanalysed rows hold must not matter
    traits = Step1Traits(names=["Y1"], sample_ids=[f"s{i}_s{i}" for i in range(n)], in_analysis=in_an,
                         mask=in_an[:, None].copy(), y=y, basis=basis)
    blocks = [Block(1, [f"a{i}" for i in range(15)]), Block(5, [f"b{i}" for i in range(15)])]
    for settings in (Step1Settings(cv=3), Step1Settings(loocv=True)):
        runs = [fit_step1(blocks, iter([m[:, :15].copy(), m[:, 15:].copy()]), traits, settings) for m in (with_nan, filled)]
        np.testing.assert_array_equal(runs[0].fits[0].loco, runs[1].fits[0].loco)
        assert np.all(np.isfinite(runs[0].fits[0].loco[in_an]))
