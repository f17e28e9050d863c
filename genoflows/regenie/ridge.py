"""Numeric kernels of regenie's step 1 (level-0 ridge, level-1 ridge / ridge logistic, CV and LOOCV).

Pure numpy, no I/O. Every kernel works on all traits and all shrinkage values at once with dense BLAS
products; the only per-item Python loops are over folds, blocks, ridge parameters and IRLS iterations.
Constants, stopping rules and the order of operations follow regenie v4.1.2 (src/Step1_Models.cpp,
src/Data.cpp); docs/regenie-step1.md explains each choice.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from threadpoolctl import ThreadpoolController

#: regenie's numerical constants (src/Regenie.hpp, src/Step1_Models.hpp).
NUMTOL = 1e-6  # line-search slack, low-variance SNP threshold
NUMTOL_EPS = 10 * np.finfo(float).eps  # probability clipping in get_pvec
ETA_MAX = 30.0
ETA_MIN = -30.0
DEV_TOL = 1e-8  # fractional deviance change (params.tol)
L1_RIDGE_TOL = 1e-4  # max |score| at convergence of the ridge logistic fit
L1_RIDGE_EPS = 1e-5  # clipping of held-out probabilities in the CV log-likelihood
NITER_MAX_RIDGE = 100
NITER_MAX_LINE_SEARCH = 25  # used by the LOOCV ridge logistic fit
NITER_MAX_LINE_SEARCH_RIDGE = 100  # used by the K-fold ridge logistic fit


_BLAS = ThreadpoolController()  # numpy's and scipy's OpenBLAS


def serial():
    """Run LAPACK factorisations single-threaded.

    OpenBLAS's threaded potrf/syevd synchronise finely and stall 10-100× when the cores are shared with
    other work; parallelism comes from running independent factorisations side by side instead.
    """
    return _BLAS.limit(limits=1, user_api="blas")


class RidgeConvergenceError(Exception):
    """The level-1 ridge logistic fit did not converge (regenie then skips the trait's LOCO file)."""


def h2_grid(n: int) -> np.ndarray:
    """regenie's grid of heritabilities: n evenly spaced points in [0, 1] with ends 0.01 and 0.99."""
    if n < 2:
        raise ValueError(f"number of ridge parameters must be at least 2 (={n})")
    grid = np.arange(n, dtype=float) / (n - 1)
    grid[0], grid[-1] = 0.01, 0.99
    return grid


def kfold_sizes(in_analysis: np.ndarray, k: int) -> np.ndarray:
    """Fold sizes over all genotyped samples (file order): each fold closes on its ⌊N/K⌋-th analysed sample.

    The last fold takes every remaining sample. Samples outside the analysis sit inside whichever fold
    covers their position, as in regenie's Data::set_folds.
    """
    n_samples = in_analysis.size
    target = int(in_analysis.sum()) // k
    if target < 1 or (target == 1 and k > 1):
        raise ValueError(f"not enough samples are present for {k}-fold CV.")
    sizes = np.ones(k, dtype=np.int64)
    n_in = cum = cur = 0
    for i in range(n_samples):
        if in_analysis[i]:
            n_in += 1
        if n_in == target and cur < k - 1:
            sizes[cur] = i - cum + 1
            cum += sizes[cur]
            n_in, cur = 0, cur + 1
        elif cur == k - 1:
            sizes[cur] = n_samples - i
            break
    return sizes


def fold_bounds(sizes: np.ndarray) -> list[tuple[int, int]]:
    ends = np.cumsum(sizes)
    return [(int(e - s), int(e)) for s, e in zip(sizes, ends, strict=True)]


# --------------------------------------------------------------------------------------------------
# level 0
# --------------------------------------------------------------------------------------------------


def _ridge_solve(a: np.ndarray, rhs: np.ndarray, lam: float) -> np.ndarray:
    """(A + λI)⁻¹ rhs by Cholesky (b³/3 flops, level-3 LAPACK); A is not modified."""
    shifted = a.copy()
    shifted[np.diag_indices_from(shifted)] += lam
    return cho_solve(
        cho_factor(shifted, lower=True, overwrite_a=True, check_finite=False), rhs, check_finite=False
    )


@dataclass
class BlockProducts:
    """Cross-products of one block on the residualised, unit-variance scale, per fold.

    With raw dosages G (n × b), covariate basis Q and C = QᵀG, the residualised block is G̃ = G − QC and
    the scaled one G̃D with D = diag(1/s), s = ‖g̃‖/√(N − k). Everything level 0 needs is formed from
    GᵀG, Gᵀ[Y Q] and the k × b matrix C, so the n × b block is read by BLAS only (no residualised or
    scaled copy of it is ever made).
    """

    g: np.ndarray  # raw dosages, rows outside the analysis zeroed (n × b)
    basis: np.ndarray  # Q (n × k)
    c: np.ndarray  # QᵀG (k × b)
    inv_scale: np.ndarray  # 1/s (b,)
    gtg_f: list[np.ndarray]  # per fold (G̃D)_fᵀ(G̃D)_f (b × b)
    gty_f: list[np.ndarray]  # per fold (G̃D)_fᵀY_f (b × P)

    def times(self, rows: slice, beta: np.ndarray) -> np.ndarray:
        """(G̃D)[rows] @ beta for a (b × m) beta, without forming G̃D."""
        db = beta * self.inv_scale[:, None]
        return self.g[rows] @ db - self.basis[rows] @ (self.c @ db)


def block_products(
    g: np.ndarray, y: np.ndarray, basis: np.ndarray, bounds: list[tuple[int, int]], n_analyzed: int
) -> tuple[BlockProducts, np.ndarray]:
    """Per-fold residualised and scaled cross-products of one block; also returns s (per-variant scale).

    ``g`` must already be mean-imputed with rows outside the analysis set to 0; ``y`` is residualised
    (QᵀY = 0 overall, not per fold) and ``basis`` has orthonormal columns over the analysed rows.
    """
    p, k = y.shape[1], basis.shape[1]
    s_f, t_f, u_f, qq_f, qy_f = [], [], [], [], []
    for a, z in bounds:
        gf = g[a:z]
        s_f.append(gf.T @ gf)
        r = gf.T @ np.hstack([y[a:z], basis[a:z]])
        t_f.append(r[:, :p])
        u_f.append(r[:, p:])
        qq_f.append(basis[a:z].T @ basis[a:z])
        qy_f.append(basis[a:z].T @ y[a:z])
    c = np.sum(u_f, axis=0).T if k else np.zeros((0, g.shape[1]))
    gtg_f, gty_f = [], []
    for s, t, u, qq, qy in zip(s_f, t_f, u_f, qq_f, qy_f, strict=True):
        uc = u @ c
        gtg_f.append(s - uc - uc.T + c.T @ (qq @ c))
        gty_f.append(t - c.T @ qy)
    ss = np.sum([np.diag(m) for m in gtg_f], axis=0)
    with np.errstate(invalid="ignore"):
        scale = np.sqrt(ss) / np.sqrt(n_analyzed - k)
    inv = 1.0 / scale
    gtg_f = [m * inv[:, None] * inv[None, :] for m in gtg_f]
    gty_f = [m * inv[:, None] for m in gty_f]
    return BlockProducts(g, basis, c, inv, gtg_f, gty_f), scale


def level0_kfold(
    prod: BlockProducts,
    mask: np.ndarray,
    bounds: list[tuple[int, int]],
    lambdas: np.ndarray,
    threads: int = 1,
) -> np.ndarray:
    """Out-of-fold level-0 predictions of one block for every ridge parameter and trait: (n, J, P).

    For fold f, β_fj = (G̃ᵀG̃_(−f) + λ_j I)⁻¹ G̃ᵀY_(−f) on the scaled block, one Cholesky per (fold, λ)
    (regenie eigendecomposes each fold; same solution, a fraction of the cost), the K·J factorisations
    spread over ``threads``. Predictions of masked samples are 0 before the centring (ridge_level_0).
    """
    n = mask.shape[0]
    p = prod.gty_f[0].shape[1]
    b = prod.gtg_f[0].shape[0]
    gtg = np.sum(prod.gtg_f, axis=0)
    gty = np.sum(prod.gty_f, axis=0)
    train = [(gtg - xtx, gty - xty) for xtx, xty in zip(prod.gtg_f, prod.gty_f, strict=True)]
    tasks = [(f, j) for f in range(len(bounds)) for j in range(lambdas.size)]

    def solve(task: tuple[int, int]) -> np.ndarray:
        f, j = task
        return _ridge_solve(train[f][0], train[f][1], float(lambdas[j]))

    with serial():
        if threads > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                betas = list(pool.map(solve, tasks))
        else:
            betas = [solve(t) for t in tasks]
    out = np.empty((n, lambdas.size, p))
    for f, (a, z) in enumerate(bounds):
        beta = np.stack(betas[f * lambdas.size : (f + 1) * lambdas.size], axis=1)  # (b, J, P)
        pred = prod.times(slice(a, z), beta.reshape(b, -1)).reshape(z - a, lambdas.size, p)
        out[a:z] = pred * mask[a:z, None, :]
    return out


def level0_loocv(prod: BlockProducts, y: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """Leave-one-out level-0 predictions of one block, (n, J, P), by the hat-matrix shortcut.

    pred_i = (x_iᵀβ − h_i y_i) / (1 − h_i) with β, h from the full-sample fit (ridge_level_0_loocv).
    """
    with serial():
        d, v = np.linalg.eigh(prod.gtg_f[0])
    wmat = v.T @ prod.gty_f[0]  # (b, P)
    vtg = prod.times(slice(None), v)  # (n, b) = G̃D V
    dl_inv = 1.0 / (d[:, None] + lambdas[None, :])  # (b, J)
    b, j = dl_inv.shape
    p = y.shape[1]
    hat = (vtg * vtg) @ dl_inv  # (n, J)
    fit = (vtg @ (dl_inv[:, :, None] * wmat[:, None, :]).reshape(b, j * p)).reshape(-1, j, p)
    return (fit - hat[:, :, None] * y[:, None, :]) / (1.0 - hat[:, :, None])


def standardize_level0(pred: np.ndarray, mask: np.ndarray, neff: np.ndarray, loocv: bool) -> np.ndarray:
    """Centre and scale each level-0 predictor over the analysed samples of its trait (sd with N−1).

    K-fold (ridge_level_0): mean and sd from sums over all rows (masked rows hold 0), then every row is
    shifted — masked rows end at −mean/sd, as in regenie. LOOCV (ridge_level_0_loocv): masked rows are
    zeroed before and after the centring.
    """
    m = mask[:, None, :].astype(pred.dtype)
    if loocv:
        pred = pred * m
        mean = pred.sum(axis=0) / neff
        pred = (pred - mean) * m
        sd = np.sqrt((pred * pred).sum(axis=0)) / np.sqrt(neff - 1)
        return pred / sd
    s1 = pred.sum(axis=0)
    s2 = (pred * pred).sum(axis=0)
    mean = s1 / neff
    invsd = np.sqrt((neff - 1) / (s2 - neff * mean * mean))
    return (pred - mean) * invsd


# --------------------------------------------------------------------------------------------------
# level 1: quantitative traits
# --------------------------------------------------------------------------------------------------


@dataclass
class CVSums:
    """regenie's cumsum_values for one trait over the level-1 grid: Sx, Sy, Sx², Sy², Sxy, −logLik."""

    sx: np.ndarray
    sy: np.ndarray
    sx2: np.ndarray
    sy2: np.ndarray
    sxy: np.ndarray
    nll: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> CVSums:
        return cls(*(np.zeros(n) for _ in range(6)))


def level1_ridge_kfold(
    w: np.ndarray, y: np.ndarray, bounds: list[tuple[int, int]], taus: np.ndarray
) -> tuple[list[np.ndarray], CVSums]:
    """Level-1 ridge on out-of-fold level-0 predictions (ridge_level_1): per-fold β (K × J1) and CV sums."""
    sums = CVSums.zeros(taus.size)
    xtx_f = [w[a:z].T @ w[a:z] for a, z in bounds]
    xty_f = [w[a:z].T @ y[a:z] for a, z in bounds]
    xtx = np.sum(xtx_f, axis=0)
    xty = np.sum(xty_f, axis=0)
    betas = []
    for (a, z), x1, x2 in zip(bounds, xtx_f, xty_f, strict=True):
        with serial():
            d, v = np.linalg.eigh(xtx - x1)
        beta = v @ ((v.T @ (xty - x2))[:, None] / (d[:, None] + taus[None, :]))  # (K, J1)
        betas.append(beta)
        p1 = w[a:z] @ beta
        yf = y[a:z]
        sums.sx += p1.sum(axis=0)
        sums.sy += yf.sum()
        sums.sx2 += (p1 * p1).sum(axis=0)
        sums.sy2 += (yf * yf).sum()
        sums.sxy += yf @ p1
    return betas, sums


def level1_ridge_loocv(w: np.ndarray, y: np.ndarray, taus: np.ndarray, neff: float, ncov: int) -> CVSums:
    """Level-1 ridge with LOOCV (ridge_level_1_loocv); Sy² is taken as N−k as regenie does."""
    sums = CVSums.zeros(taus.size)
    xtx = w.T @ w
    with serial():
        d, v = np.linalg.eigh(xtx)
    zvec = v.T @ (w.T @ y)
    tmp = w @ v  # (n, K)
    inv = 1.0 / (d[:, None] + taus[None, :])  # (K, J1)
    cal = (tmp * tmp) @ inv  # (n, J1)
    pred = (tmp @ (inv * zvec[:, None]) - cal * y[:, None]) / (1.0 - cal)
    sums.sx += pred.sum(axis=0)
    sums.sx2 += (pred * pred).sum(axis=0)
    sums.sxy += y @ pred
    sums.sy2 += neff - ncov
    return sums


def loocv_ridge_predictions(w: np.ndarray, y: np.ndarray, tau: float, chrom_cols: list[slice]) -> np.ndarray:
    """Per-chromosome leave-one-out predictions of the chosen level-1 ridge (make_predictions_loocv)."""
    xtx = w.T @ w
    xtx[np.diag_indices_from(xtx)] += tau
    with serial():
        d, v = np.linalg.eigh(xtx)
    inv = (v / d) @ v.T
    bvec = inv @ (w.T @ y)
    hx = w @ inv  # (n, K) = (inv Wᵀ)ᵀ
    cal = (w * hx).sum(axis=1)
    r = (y - w @ bvec) / (1.0 - cal)
    # pred_c[i] = Σ_{cols c} W[i,col] (β − HX[col,i] r_i)
    wb = w * bvec[None, :]
    wh = w * hx
    return np.stack([wb[:, c].sum(axis=1) - wh[:, c].sum(axis=1) * r for c in chrom_cols], axis=1)


# --------------------------------------------------------------------------------------------------
# level 1: binary traits
# --------------------------------------------------------------------------------------------------


_CHUNK_ROWS = 8192


def weighted_gram(x: np.ndarray, wts: np.ndarray) -> np.ndarray:
    """Xᵀ diag(wts) X, accumulated over row chunks so the temporary stays ≤ 8192 × K (not n × K)."""
    k = x.shape[1]
    out = np.zeros((k, k))
    for a in range(0, x.shape[0], _CHUNK_ROWS):
        xc = x[a : a + _CHUNK_ROWS]
        out += (xc * wts[a : a + _CHUNK_ROWS, None]).T @ xc
    return out


def pvec(eta: np.ndarray) -> np.ndarray:
    """Logistic mean with regenie's glm-style clipping beyond |η| > 30."""
    with np.errstate(over="ignore"):
        p = 1.0 - 1.0 / (np.exp(eta) + 1.0)
    p = np.where(eta > ETA_MAX, 1.0 / (1.0 + NUMTOL_EPS), p)
    return np.where(eta < ETA_MIN, NUMTOL_EPS / (1.0 + NUMTOL_EPS), p)


def logistic_deviance(y: np.ndarray, p: np.ndarray, mask: np.ndarray) -> float:
    """−2 log-likelihood over the unmasked samples."""
    ll = np.where(y == 0, np.log(1.0 - p), np.log(p))
    return float(-2.0 * ll[mask].sum())


def bernoulli_nll(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return -np.where(y == 0, np.log(1.0 - p), np.log(p))


def fit_ridge_logistic(
    x: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray,
    mask: np.ndarray,
    tau: float,
    beta: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge logistic regression by Newton steps with step halving (run_log_ridge_loocv).

    Penalty τ‖β‖²/2 (deviance + τ‖β‖²); stops when max|score| < 1e-4. Returns β, p and w = p(1−p)
    (w = 1 on masked samples). Raises RidgeConvergenceError like regenie's "did not converge".
    """
    mf = mask.astype(float)
    k = x.shape[1]
    betaold = beta.copy()
    p = pvec(offset + x @ betaold)
    fn_start = logistic_deviance(y, p, mask) + tau * float(betaold @ betaold)
    w = np.where(mask, p * (1 - p), 1.0)
    if np.any(w == 0):
        raise RidgeConvergenceError("Zeros occurred in Var(Y) during ridge logistic regression.")
    score = x.T @ (mf * (y - p)) - tau * betaold
    betanew = betaold
    dev_conv = False
    niter = 0
    while True:
        niter += 1
        if niter > NITER_MAX_RIDGE:
            break
        xtwx = weighted_gram(x, mf * w)
        xtwx[np.diag_indices(k)] += tau
        with serial():
            step = np.linalg.solve(xtwx, score)
        fn_end = fn_start
        for _ in range(NITER_MAX_LINE_SEARCH):
            betanew = betaold + step
            p = pvec(offset + x @ betanew)
            fn_end = logistic_deviance(y, p, mask) + tau * float(betanew @ betanew)
            w = np.where(mask, p * (1 - p), 1.0)
            if np.any(w == 0):
                raise RidgeConvergenceError("Zeros occurred in Var(Y) during ridge logistic regression.")
            if fn_end < fn_start + NUMTOL:
                break
            step = step / 2
        score = x.T @ (mf * (y - p)) - tau * betanew
        dev_conv = abs(fn_end - fn_start) / (0.01 + abs(fn_end)) < DEV_TOL
        if np.abs(score).max() < L1_RIDGE_TOL:
            break
        betaold = betanew
        fn_start = fn_end
    if not dev_conv and niter > NITER_MAX_RIDGE:
        raise RidgeConvergenceError("Ridge logistic regression did not converge.")
    return betanew, p, w


def fit_null_logistic(y: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Linear predictor of the logistic regression of y on x (no offset), regenie's fit_logistic.

    IRLS from β = 0 with step halving until the deviance drops; stops when max|score| < 1e-6. In step 1
    this is the level-1 offset of a binary trait (fit_null_models_nonQT). Rows outside ``mask`` get Xβ too.
    """
    mf = mask.astype(float)
    beta = np.zeros(x.shape[1])
    eta = x @ beta
    p = pvec(eta)
    dev_old = logistic_deviance(y, p, mask)
    for _ in range(50):
        w = np.where(mask, p * (1 - p), 1.0)
        xtw = (x * (mf * w)[:, None]).T
        z = np.where(mask, eta + (y - p) / w, 0.0)
        with serial():
            new = np.linalg.lstsq(xtw @ x, xtw @ z, rcond=None)[0]
        for _ in range(NITER_MAX_LINE_SEARCH):
            eta = x @ new
            p = pvec(eta)
            dev_new = logistic_deviance(y, p, mask)
            if dev_new < dev_old:
                break
            new = (beta + new) / 2
        score = x.T @ (mf * (y - p))
        beta, dev_old = new, dev_new
        if np.abs(score).max() < NUMTOL:
            return eta
    raise RidgeConvergenceError("logistic regression on the covariates did not converge.")


def _loo_betas(
    x: np.ndarray, y: np.ndarray, mask: np.ndarray, tau: float, beta: np.ndarray, p: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One-step leave-one-out coefficients: V1 = H⁻¹Xᵀ, and the per-sample correction r_i.

    β_(−i) = β − V1[:, i] r_i with r_i = (y_i − p_i) / (1 − x_iᵀ H⁻¹ x_i w_i).
    """
    k = x.shape[1]
    xtwx = weighted_gram(x, np.where(mask, w, 0.0))
    xtwx[np.diag_indices(k)] += tau
    with serial():
        v1 = cho_solve(cho_factor(xtwx, lower=True, check_finite=False), x.T, check_finite=False)  # (K, n)
    v2 = (x * v1.T).sum(axis=1) * w
    r = (y - p) / (1.0 - v2)
    return v1, r


def level1_logistic_loocv(
    w: np.ndarray, y: np.ndarray, offset: np.ndarray, mask: np.ndarray, taus: np.ndarray
) -> CVSums:
    """Ridge logistic level 1 with LOOCV over the τ grid, warm-started (ridge_logistic_level_1_loocv)."""
    sums = CVSums.zeros(taus.size)
    beta = np.zeros(w.shape[1])
    for j, tau in enumerate(taus):
        beta, p, wv = fit_ridge_logistic(w, y, offset, mask, float(tau), beta)
        v1, r = _loo_betas(w, y, mask, float(tau), beta, p, wv)
        eta = w @ beta - (w * v1.T).sum(axis=1) * r + offset
        _accumulate_bt(sums, j, eta[mask], y[mask])
    return sums


def _accumulate_bt(sums: CVSums, j: int, eta: np.ndarray, y: np.ndarray) -> None:
    p1 = np.clip(1.0 - 1.0 / (np.exp(eta) + 1.0), L1_RIDGE_EPS, 1.0 - L1_RIDGE_EPS)
    sums.sx[j] += p1.sum()
    sums.sy[j] += y.sum()
    sums.sx2[j] += (p1 * p1).sum()
    sums.sy2[j] += (y * y).sum()
    sums.sxy[j] += (p1 * y).sum()
    sums.nll[j] += bernoulli_nll(y, p1).sum()


def loocv_logistic_predictions(
    w: np.ndarray, y: np.ndarray, offset: np.ndarray, mask: np.ndarray, tau: float, chrom_cols: list[slice]
) -> np.ndarray:
    """Per-chromosome LOO predictions of the chosen ridge logistic (make_predictions_binary_loocv).

    The model is refitted from β = 0 at the chosen τ, as regenie does, then corrected per sample.
    """
    beta, p, wv = fit_ridge_logistic(w, y, offset, mask, tau, np.zeros(w.shape[1]))
    v1, r = _loo_betas(w, y, mask, tau, beta, p, wv)
    wb = w * beta[None, :]
    wv1 = w * v1.T
    return np.stack([wb[:, c].sum(axis=1) - wv1[:, c].sum(axis=1) * r for c in chrom_cols], axis=1)


def level1_logistic_kfold(
    w: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray,
    mask: np.ndarray,
    bounds: list[tuple[int, int]],
    taus: np.ndarray,
) -> tuple[list[np.ndarray], CVSums]:
    """Ridge logistic level 1 with K-fold CV (ridge_logistic_level_1): IRLS on the training folds.

    Per fold: warm start over the τ grid from β = 0; Newton step by Cholesky, halved only while a
    weight is 0; stop when max|score| < 1e-4. Returns the per-fold β (K × J1) and the CV sums.
    """
    sums = CVSums.zeros(taus.size)
    k = w.shape[1]
    betas = []
    train_masks = []
    for i in range(len(bounds)):
        tm = mask.copy()
        a, z = bounds[i]
        tm[a:z] = False
        train_masks.append(tm)
    for i, (a, z) in enumerate(bounds):
        tm = train_masks[i]
        mf = tm.astype(float)
        betanew = np.zeros(k)
        fold_betas = np.empty((k, taus.size))
        for j, tau in enumerate(taus):
            betaold = betanew
            niter = 0
            while True:
                niter += 1
                if niter > NITER_MAX_RIDGE:
                    raise RidgeConvergenceError("Penalized logistic regression did not converge.")
                eta = offset + w @ betaold
                p = pvec(eta)
                wv = np.where(tm, p * (1 - p), 1.0)
                if np.any(wv == 0):
                    raise RidgeConvergenceError("Zeros occurred in Var(Y) during ridge logistic regression.")
                zv = np.where(tm, (eta - offset) + (y - p) / wv, 0.0)
                xtwx = weighted_gram(w, mf * wv)
                xtwx[np.diag_indices(k)] += tau
                with serial():
                    betanew = cho_solve(cho_factor(xtwx, lower=True, check_finite=False), w.T @ (mf * wv * zv))
                for _ in range(NITER_MAX_LINE_SEARCH_RIDGE):
                    p = pvec(offset + w @ betanew)
                    if not np.any(np.where(tm, p * (1 - p), 1.0) == 0):
                        break
                    betanew = (betaold + betanew) / 2
                p = pvec(offset + w @ betanew)
                if np.any(np.where(tm, p * (1 - p), 1.0) == 0):
                    raise RidgeConvergenceError("Zeros occurred in Var(Y) during ridge logistic regression.")
                score = w.T @ (mf * (y - p)) - tau * betanew
                if np.abs(score).max() < L1_RIDGE_TOL:
                    break
                betaold = betanew
            fold_betas[:, j] = betanew
            test = mask[a:z]
            eta_test = offset[a:z] + w[a:z] @ betanew
            _accumulate_bt(sums, j, eta_test[test], y[a:z][test])
        betas.append(fold_betas)
    return betas, sums


def tau_grid(h2: np.ndarray, n_predictors: int, binary: bool) -> np.ndarray:
    """Level-1 shrinkage: τ = P(1−h²)/h², times 3/π² for binary traits (liability scale)."""
    tau = n_predictors * (1 - h2) / h2
    return tau * (3 / (math.pi * math.pi)) if binary else tau
