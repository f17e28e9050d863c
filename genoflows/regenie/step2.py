"""Step 2: single-variant score tests with the step-1 LOCO offset, written as regenie's ``.regenie`` files.

Follows regenie v4.1.2 (src/Data.cpp compute_res / compute_res_bin, src/Step2_Models.cpp compute_score_qt /
compute_score_bt / check_pval_snp / fit_firth_logistic_snp_fast, src/Geno.cpp parse + compute_mac):

QT: r = (Y_scaled − LOCO_chr)·mask, s_r = ‖r‖/√(N_eff − k), r ← r/s_r; g mean-imputed over the analysed
samples, g̃ = g − QQᵀg; T = rᵀg̃/√(Σ_mask g̃²); BETA = T·sd_Y·s_r/√(Σ_mask g̃²); SE = BETA/T; CHISQ = T².

BT: per chromosome and trait, null logistic Y ~ C with offset LOCO_chr → p̂, w = p̂(1−p̂);
r = (Y − p̂)/√w; g̃ = √w·g − Q_w Q_wᵀ √w·g (Q_w basis of √w·C); T = g̃ᵀr/‖g̃‖; SE = 1/‖g̃‖; BETA = T·SE.
With ``--firth --approx`` and |T| above the ``--pThresh`` quantile: null Firth fit of Y ~ C (offset LOCO)
gives η₀, then a one-parameter Firth fit on x = g̃/√w with offset η₀ (only carriers of the minor allele
enter the fit when regenie stores the variant sparsely and its MAC < 50); CHISQ = penalised LRT.

Variants with minor allele count < ``--minMAC`` (over all analysed samples) are not written; a trait
whose own MAC is below it gets no row for that variant. Rows are in genotype-file order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import special

from genoflows.files import temp_path
from genoflows.regenie.errors import RegenieError
from genoflows.regenie.genotypes import Genotypes
from genoflows.regenie.loco import read_loco, read_pred_list
from genoflows.regenie.options import Step2Options
from genoflows.regenie.phenotypes import AnalysisData, covariate_basis

__all__ = ["run_step2", "log10p_chisq1", "fmt"]

ETA_THR = 30.0
EPS = 10 * np.finfo(float).eps  # regenie numtol_eps
FIRTH_TOL = 1e-8  # tighter than regenie's 2.5e-4 on the score: lands on the optimum regenie approaches
REGENIE_FIRTH_TOL = 2.5e-4  # regenie numtol_firth: enough when the deviance cannot decrease any more
FIRTH_MAXSTEP = 5.0
FIRTH_MAXSTEP_NULL = 25.0
FIRTH_NITER = 250
FIRTH_NITER_NULL = 1000
LINE_SEARCH = 25
SPARSE_MAC = 50  # regenie fast Firth: carriers only below this MAC when the variant is stored sparsely
NUMTOL = 1e-6


def fmt(x: float) -> str:
    """C++ ``ostream << double`` with the default precision 6 (what regenie prints)."""
    if x != x:
        return "nan"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    return f"{x:.6g}"


def log10p_chisq1(chisq: np.ndarray) -> np.ndarray:
    """−log10 P(χ²₁ > x), regenie get_logp: asymptotic formula where p underflows; −1 marks failure."""
    x = np.asarray(chisq, dtype=float)
    out = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        pv = special.erfc(np.sqrt(np.maximum(x, 0) / 2))
        out = -np.log10(pv)
        under = pv == 0
        out[under] = -(math.log10(2) - 0.5 * np.log10(2 * math.pi * x[under]) - 0.5 * x[under] * math.log10(math.e))
    out[(x < 0) & (np.abs(x) < 1e-6)] = 0.0
    out[(x < 0) & (np.abs(x) >= 1e-6)] = -1.0
    return out


def _pvec(eta: np.ndarray) -> np.ndarray:
    p = 1 - 1 / (np.exp(np.clip(eta, -ETA_THR, ETA_THR)) + 1)
    p = np.where(eta > ETA_THR, 1 / (1 + EPS), p)
    return np.where(eta < -ETA_THR, EPS / (1 + EPS), p)


def _logist_dev(y: np.ndarray, p: np.ndarray, mask: np.ndarray) -> float:
    ym, pm = y[mask], p[mask]
    return float(-2 * np.sum(np.where(ym == 1, np.log(pm), np.log1p(-pm))))


def fit_logistic(y: np.ndarray, x: np.ndarray, offset: np.ndarray, mask: np.ndarray, tol: float = 1e-8,
                 niter: int = 50) -> np.ndarray | None:
    """Unpenalised logistic IRLS over the masked samples; None when it does not converge."""
    beta = np.zeros(x.shape[1])
    xm, ym, om = x[mask], y[mask], offset[mask]
    for _ in range(niter):
        p = _pvec(om + xm @ beta)
        w = p * (1 - p)
        score = xm.T @ (ym - p)
        if np.max(np.abs(score)) < tol:
            return beta
        try:
            step = np.linalg.solve(xm.T @ (xm * w[:, None]), score)
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if not np.all(np.isfinite(beta)):
            return None
    p = _pvec(om + xm @ beta)
    return beta if np.max(np.abs(xm.T @ (ym - p))) < 1e-4 else None


def fit_firth_null(y: np.ndarray, x: np.ndarray, offset: np.ndarray, mask: np.ndarray, beta0: np.ndarray) -> np.ndarray | None:
    """Firth-penalised logistic Y ~ X + offset (Newton with step halving, regenie fit_firth_nr)."""
    beta = beta0.copy()
    wmask = mask

    def state(b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        p = _pvec(offset + x @ b)
        w = np.where(wmask, p * (1 - p), 1.0)
        xtw = x.T * np.sqrt(w)
        xtwx = xtw @ xtw.T
        sign, logdet = np.linalg.slogdet(xtwx)
        return _logist_dev(y, p, mask) - logdet, p, xtw, xtwx

    dev, p, xtw, xtwx = state(beta)
    for it in range(FIRTH_NITER_NULL):
        h = np.sum(np.linalg.solve(xtwx, xtw) * xtw, axis=0)
        score = x.T @ np.where(mask, y - p + h * (0.5 - p), 0.0)
        if np.max(np.abs(score)) < FIRTH_TOL and it >= 1:
            return beta
        step = np.linalg.solve(xtwx, score)
        mx = np.max(np.abs(step)) / FIRTH_MAXSTEP_NULL
        if mx > 1:
            step /= mx
        for _ in range(LINE_SEARCH):
            new = state(beta + step)
            if new[0] < dev:
                break
            step /= 2
        else:
            return beta if np.max(np.abs(score)) < REGENIE_FIRTH_TOL else None
        beta = beta + step
        dev, p, xtw, xtwx = new
    return None


def firth_snp(y: np.ndarray, xg: np.ndarray, offset: np.ndarray, mask: np.ndarray,
              carriers: np.ndarray | None) -> tuple[float, float, float] | None:
    """One-parameter Firth fit of y on xg with fixed offset (regenie fit_firth, 1-D). Returns (beta, se, lrt)
    or None on failure. With ``carriers``, only those samples move (regenie's fast approximation)."""
    p0 = _pvec(offset)
    dev_all0 = _logist_dev(y, p0, mask)
    if carriers is not None:
        sel = carriers
        ys, xs, os_ = y[sel], xg[sel], offset[sel]
        ms = mask[sel]
        dev_non = dev_all0 - _logist_dev(ys, p0[sel], ms)
    else:
        ys, xs, os_, ms = y, np.where(mask, xg, 0.0), offset, mask
        dev_non = 0.0
    x2 = xs * xs

    def evaluate(b: float) -> tuple[float, np.ndarray, np.ndarray, float]:
        p = _pvec(os_ + xs * b)
        w = np.where(ms, p * (1 - p), 1.0)
        d = x2 * w
        s = float(d.sum())
        dev = dev_non + _logist_dev(ys, p, ms) - math.log(s)
        return dev, p, d, s

    dev0, p, d, s = evaluate(0.0)
    beta = 0.0
    dev = dev0
    for it in range(FIRTH_NITER):
        h = d / s
        score = float(np.sum(xs * np.where(ms, ys - p + h * (0.5 - p), 0.0)))
        if abs(score) < FIRTH_TOL and it >= 1:
            break
        step = score / s
        mx = abs(step) / FIRTH_MAXSTEP
        if mx > 1:
            step /= mx
        for _ in range(LINE_SEARCH):
            cand = evaluate(beta + step)
            if cand[0] < dev:
                break
            step /= 2
        else:
            if abs(score) < REGENIE_FIRTH_TOL:
                break  # at the optimum to floating-point precision
            step += 1e-6
            cand = evaluate(beta + step)
        beta += step
        dev, p, d, s = cand
    else:
        return None
    lrt = dev0 - dev
    if lrt < 0:
        if lrt > -1e-8:
            lrt = 0.0
        else:
            return None
    return beta, math.sqrt(1 / s), lrt


def _format_rows(heads: list[str], af: np.ndarray, info: np.ndarray | None, ns: np.ndarray, bhat: np.ndarray,
                 se: np.ndarray, chisq: np.ndarray, lp: np.ndarray, fail: np.ndarray, dosage: bool) -> list[str]:
    """regenie print_sum_stats_single: NA NA for a missing SE, NA NA for CHISQ/LOG10P of a failed test."""
    se_ok = (np.isfinite(se) & (se >= 0)).tolist()
    p_ok = (~fail & (chisq >= 0) & np.isfinite(lp)).tolist()
    info_s = [fmt(x) for x in info.tolist()] if info is not None else (["1"] * len(heads) if dosage else None)
    rows = []
    for t, (h, a, n, b, s, c, lpv) in enumerate(
        zip(heads, af.tolist(), ns.tolist(), bhat.tolist(), se.tolist(), chisq.tolist(), lp.tolist(), strict=True)
    ):
        mid = f"{fmt(a)} {info_s[t]} " if info_s is not None else f"{fmt(a)} "
        bs = f"{fmt(b)} {fmt(s)}" if se_ok[t] else "NA NA"
        cp = f" {fmt(c)} {fmt(lpv)}" if p_ok[t] else " NA NA"
        rows.append(f"{h}{mid}{int(n)} ADD {bs}{cp}{' TEST_FAIL' if fail[t] else ' NA'}\n")
    return rows


@dataclass
class _Writer:
    path: Path
    tmp: Path
    fh: object


def _open_writers(out: str, names: list[str], header: str) -> list[_Writer]:
    writers = []
    for nm in names:
        path = Path(f"{out}_{nm}.regenie")
        tmp = temp_path(path)  # the project's one temp-name rule (unique, hidden, beside the result)
        fh = open(tmp, "w")
        fh.write(header)
        writers.append(_Writer(path, tmp, fh))
    return writers


def run_step2(geno: Genotypes, data: AnalysisData, opts: Step2Options) -> list[Path]:
    """Test every selected variant for every trait; write ``<out>_<PHENO>.regenie``; return their paths."""
    log: Callable[[str], None] = opts.log
    names = list(data.trait_names)
    locos: dict[str, Path] | None = None
    active = list(range(len(names)))
    if opts.pred is not None:
        locos = read_pred_list(opts.pred, names)
        active = []
        for j, nm in enumerate(names):
            if nm in locos:
                active.append(j)
            else:
                log(f"WARNING: No step 1 file provided for phenotype '{nm}' so it will be ignored.")
        if not active:
            raise RegenieError(f"none of the phenotypes has a LOCO file in --pred {opts.pred}.")
    plan = geno.block_plan(opts.bsize, opts.variant_mask)
    if not plan:
        raise RegenieError("no variant left to test after the variant filters (--chr/--range/--extract/--exclude).")

    dosage = geno.dosage_mode
    header = (
        "CHROM GENPOS ID ALLELE0 ALLELE1 A1FREQ " + ("INFO " if dosage else "") + "N TEST BETA SE CHISQ LOG10P EXTRA\n"
    )
    writers = _open_writers(opts.out, [names[j] for j in active], header)
    z_thr = math.sqrt(special.chdtri(1, opts.pthresh))  # regenie z_thr: chi2(1) quantile at 1 - pThresh
    counts = {"tested": 0, "firth": 0, "firth_failed": 0, "low_mac": 0}
    try:
        chroms: list[int] = []
        by_chrom: dict[int, list[np.ndarray]] = {}
        vchrom = geno.variants["chrom"].to_numpy()
        for blk in plan:
            c = int(vchrom[blk[0]])
            if c not in by_chrom:
                chroms.append(c)
                by_chrom[c] = []
            by_chrom[c].append(blk)
        for c in chroms:
            ctx = _ChromContext(geno, data, opts, c, active, locos, log)
            for blk in by_chrom[c]:
                lines = ctx.test_block(blk, dosage, z_thr, counts)
                for w, ls in zip(writers, lines, strict=True):
                    w.fh.write("".join(ls))
        for w in writers:
            w.fh.close()
            os.replace(w.tmp, w.path)
    except BaseException:
        for w in writers:
            w.fh.close()
            w.tmp.unlink(missing_ok=True)
        raise
    log(f"Number of tests with Firth correction : {counts['firth']}")
    log(f"Number of failed tests : ({counts['firth_failed']}/{counts['firth']})")
    log(f"Number of ignored tests due to low MAC : {counts['low_mac']}")
    return [w.path for w in writers]


class _ChromContext:
    """Null-model quantities of one chromosome (they depend on its LOCO offset)."""

    def __init__(self, geno: Genotypes, data: AnalysisData, opts: Step2Options, chrom: int,
                 active: list[int], locos: dict[str, Path] | None, log: Callable[[str], None]):
        self.geno, self.data, self.opts, self.active = geno, data, opts, active
        n = data.n
        names = data.trait_names
        self.mask = data.mask.copy()
        blups = np.zeros((n, len(names)))
        if locos is not None:
            keys = data.keys
            for j in active:
                got = read_loco(locos[names[j]], keys, chrom)
                if got is None:
                    raise RegenieError(f"LOCO file {locos[names[j]]} has no row for chromosome {chrom}.")
                vals, absent = got
                self.mask[absent, j] = False
                bad = np.isnan(vals) & self.mask[:, j]
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise RegenieError(
                        f"individual has missing predictions (FID_IID={keys[i]};chr={chrom};phenotype={names[j]}) "
                        f"in {locos[names[j]]}. Either ignore these individuals using option '--remove', or skip "
                        "reading predictions with option '--ignore-pred'."
                    )
                blups[:, j] = np.where(self.mask[:, j], vals, 0.0)
        self.q = data.basis
        if not data.binary:
            y, sd_y = data.residualized_traits()
            res = (y - blups) * self.mask
            neff = self.mask.sum(axis=0)
            psd = np.linalg.norm(res, axis=0) / np.sqrt(neff - data.k)
            self.res = res / psd
            self.scf = sd_y * psd
        else:
            self._null_bt(blups, log)

    def _null_bt(self, blups: np.ndarray, log: Callable[[str], None]) -> None:
        d = self.data
        cov = d.covariates
        n, ptr = d.n, len(d.trait_names)
        self.yres = np.zeros((n, ptr))
        self.sw = np.zeros((n, ptr))
        self.xw: dict[int, np.ndarray] = {}
        self.firth_offset: dict[int, np.ndarray] = {}
        y_all = np.nan_to_num(d.y_raw)
        for j in self.active:
            m = self.mask[:, j]
            off = blups[:, j] * m
            beta = fit_logistic(y_all[:, j], cov, off, m)
            if beta is None:
                raise RegenieError(f"logistic regression did not converge for phenotype '{d.trait_names[j]}'.")
            p = _pvec(off + cov @ beta)
            w = p * (1 - p)
            sw = np.sqrt(w)
            self.sw[:, j] = sw * m
            self.yres[:, j] = np.where(m, (y_all[:, j] - p) / sw, 0.0)
            self.xw[j] = covariate_basis(cov * self.sw[:, [j]])
            if self.opts.firth:
                bf = fit_firth_null(y_all[:, j], cov, blups[:, j], m, beta)
                if bf is None:
                    raise RegenieError(
                        f"Firth penalized logistic regression failed to converge for phenotype '{d.trait_names[j]}'."
                    )
                self.firth_offset[j] = cov @ bf + blups[:, j]
        self.y_all = y_all

    def test_block(self, blk: np.ndarray, dosage: bool, z_thr: float, counts: dict) -> list[list[str]]:
        d, opts = self.data, self.opts
        raw = self.geno.read(blk, d.sample_index)
        g = raw.dosages
        total = g.sum(axis=0)
        ns1 = np.full(g.shape[1], g.shape[0])
        has_miss = bool(np.isnan(total).any())  # a column sum is NaN iff the column has a missing call
        nonmiss, g0, gi = None, g, g
        if has_miss:
            bad = np.flatnonzero(np.isnan(total))
            sub = g[:, bad]
            ok_sub = ~np.isnan(sub)
            sub0 = np.where(ok_sub, sub, 0.0)
            ns1[bad] = ok_sub.sum(axis=0)
            total[bad] = sub0.sum(axis=0)
            mu = np.where(ns1[bad] > 0, total[bad] / np.maximum(ns1[bad], 1), 0.0)
            gi = g.copy()
            gi[:, bad] = np.where(ok_sub, sub, mu)
            nonmiss = ~np.isnan(g)
            g0 = np.where(nonmiss, g, 0.0)
        mac_all = np.minimum(total, 2 * ns1 - total)
        keep = mac_all >= opts.min_mac
        counts["low_mac"] += int((~keep).sum()) * len(self.active)
        var = raw.dosage_var
        full_masks = bool(self.mask[:, self.active].all())
        if not d.binary:
            qg = self.q.T @ gi  # k x B
            sumsq = np.einsum("ij,ij->j", gi, gi) - np.einsum("ij,ij->j", qg, qg)  # ‖g - QQᵀg‖²
            keep &= np.sqrt(np.maximum(sumsq, 0) / (d.n - d.k)) >= NUMTOL
            gt = None if full_masks else gi - self.q @ qg
        v = self._variant_text()
        out: list[list[str]] = [[] for _ in self.active]
        for a, j in enumerate(self.active):
            m = self.mask[:, j]
            if not has_miss and m.all():
                ns, tot = ns1, total
            else:
                mm = (nonmiss if has_miss else np.ones(g.shape, dtype=bool)) & m[:, None]
                ns = mm.sum(axis=0)
                tot = np.where(mm, g0, 0.0).sum(axis=0)
            af = tot / np.maximum(2 * ns, 1)
            mac_t = np.minimum(tot, 2 * ns - tot)
            ok = keep & (mac_t >= opts.min_mac)
            counts["low_mac"] += int((keep & ~ok).sum())
            cols = np.flatnonzero(ok)
            if cols.size == 0:
                continue
            info = None
            if dosage and var is not None:
                mmv = ~np.isnan(var) & m[:, None]
                vsum = np.where(mmv, var, 0.0).sum(axis=0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    info = np.where((af == 0) | (af == 1), 1.0, 1 - vsum / (2 * ns * af * (1 - af)))
            if not d.binary:
                r = self.res[:, j]
                if gt is None:
                    allc = cols.size == gi.shape[1]
                    num = r @ (gi if allc else gi[:, cols]) - (r @ self.q) @ (qg if allc else qg[:, cols])
                    den = sumsq[cols]
                else:
                    gt_c = gt[:, cols]
                    num = r @ gt_c
                    den = m.astype(float) @ (gt_c * gt_c)
                with np.errstate(divide="ignore", invalid="ignore"):
                    tstat = num / np.sqrt(den)
                    bhat = tstat * self.scf[j] / np.sqrt(den)
                    se = bhat / tstat
                chisq = tstat * tstat
                lp = log10p_chisq1(chisq)
                fail = np.zeros(cols.size, dtype=bool)
            else:
                bhat, se, chisq, lp, fail = self._bt(gi[:, cols], j, z_thr, mac_t[cols], total[cols], ns1[cols], counts)
            counts["tested"] += cols.size
            out[a] = _format_rows(
                [v[c] for c in blk[cols].tolist()], af[cols], None if info is None else info[cols], ns[cols],
                bhat, se, chisq, lp, fail, dosage,
            )
        return out

    def _variant_text(self) -> list[str]:
        """``CHROM GENPOS ID ALLELE0 ALLELE1 `` of every variant, built once per run."""
        cached = getattr(self.geno, "_regenie_heads", None)
        if cached is None:
            v = self.geno.variants
            cached = [
                f"{c} {p} {i} {a0} {a1} "
                for c, p, i, a0, a1 in zip(v["chrom"].tolist(), v["pos"].tolist(), v["id"].tolist(),
                                           v["allele0"].tolist(), v["allele1"].tolist(), strict=True)
            ]
            self.geno._regenie_heads = cached
        return cached

    def _bt(self, gi: np.ndarray, j: int, z_thr: float, mac_t: np.ndarray, total: np.ndarray, ns1: np.ndarray,
            counts: dict) -> tuple[np.ndarray, ...]:
        m = self.mask[:, j]
        sw = self.sw[:, j]
        xw = self.xw[j]
        gw = gi * sw[:, None]
        gres = gw - xw @ (xw.T @ gw)
        den = np.sum(gres * gres, axis=0)
        tstat = (self.yres[:, j] @ gres) / np.sqrt(den)
        se = 1 / np.sqrt(den)
        bhat = tstat * se
        chisq = tstat * tstat
        lp = log10p_chisq1(chisq)
        fail = np.zeros(gi.shape[1], dtype=bool)
        if self.opts.firth:
            n_geno = self.data.n_genotyped
            for t in np.flatnonzero(np.abs(tstat) > z_thr):
                counts["firth"] += 1
                g = gi[:, t]
                flipped = total[t] / ns1[t] > 1
                gflip = 2 - g if flipped else g
                carriers = None
                sparse = self._is_sparse(g, gflip, n_geno)
                if sparse and mac_t[t] < SPARSE_MAC:
                    carriers = m & (gflip > 1e-4)
                xg = np.divide(gres[:, t], sw, out=np.zeros_like(sw), where=sw > 0)
                res = firth_snp(self.y_all[:, j], xg, self.firth_offset[j], m, carriers)
                if res is None:
                    fail[t] = True
                    counts["firth_failed"] += 1
                    continue
                bhat[t], se[t], chisq[t] = res
                lp[t] = log10p_chisq1(np.array([chisq[t]]))[0]
        return bhat, se, chisq, lp, fail

    def _is_sparse(self, g: np.ndarray, gflip: np.ndarray, n_geno: int) -> bool:
        """regenie check_sparse_G (prop-zero-thr 0.5): for PGEN it counts zero ALLELE1 dosages; for BED/BGEN
        the non-zero minor-allele values; ``n_geno`` = genotyped samples left after --keep/--remove."""
        if self.geno.kind == "pgen":
            return bool(np.sum(g == 0) >= n_geno * 0.5)
        return bool(np.sum(gflip != 0) <= n_geno * 0.5)
