"""regenie step 1: whole-genome ridge regression → LOCO predictions (``<out>_<i>.loco``, ``<out>_pred.list``).

The method is regenie v4.1.2's (docs/regenie-step1.md): genotype blocks of ``--bsize`` variants, never
spanning chromosomes, are mean-imputed, residualised on the covariate basis and scaled; a ridge regression
per block over the level-0 h² grid gives out-of-fold (K-fold) or leave-one-out predictions, which are
centred and scaled; a level-1 ridge (QT) or ridge logistic regression (BT) over those predictions picks
its shrinkage by CV, and its per-chromosome parts give the leave-one-chromosome-out predictions.

Genotypes are streamed one block at a time; only the level-0 predictions (samples × blocks·J per trait)
are kept, in memory or, with ``--lowmem``, in ``<prefix>_l0_Y<i>`` files removed at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from genoflows.files import atomic_output
from genoflows.regenie import ridge
from genoflows.regenie.errors import RegenieError
from genoflows.regenie.genotypes import Genotypes
from genoflows.regenie.options import Step1Options
from genoflows.regenie.phenotypes import AnalysisData

#: regenie's default number of chromosome rows in a .loco file (22 autosomes + 23 for X/Y/XY/PAR).
N_CHROM = 23
#: regenie forces LOOCV for binary traits below this many analysed samples (Data::set_blocks).
BT_LOOCV_MAX_N = 5000


def run_step1(geno: Genotypes, data: AnalysisData, opts: Step1Options) -> Path:
    """Fit the whole-genome model; write ``<out>_<i>.loco`` and ``<out>_pred.list``; return the list's path."""
    traits, sample_index = traits_from_analysis(data, geno.samples["key"].to_numpy(dtype=str), opts.log)
    plan = geno.block_plan(opts.bsize, opts.variant_mask)
    chrom = geno.variants["chrom"].to_numpy()
    ids = geno.variants["id"].to_numpy(dtype=str)
    blocks = [Block(int(chrom[idx[0]]), ids[idx]) for idx in plan]
    dosages = (blk.dosages for blk in geno.raw_blocks(opts.bsize, sample_index, opts.variant_mask))
    threads = max(1, opts.threads)
    settings = Step1Settings(cv=opts.cv_folds, loocv=opts.loocv, l0=opts.l0, l1=opts.l1, threads=threads)
    prefix = (opts.lowmem_prefix or opts.out) if opts.lowmem else None
    # --threads: BLAS threads of the dense products (oversubscribed BLAS threads stall LAPACK badly)
    with threadpool_limits(limits=threads, user_api="blas"):
        result = fit_step1(blocks, dosages, traits, settings, level0_prefix=prefix, log=opts.log)
    if not any(fit.loco is not None for fit in result.fits):
        raise RegenieError(
            "no trait has LOCO predictions (the logistic models did not converge); nothing was written. "
            "Check the traits' case/control counts and the covariates."
        )
    paths = write_step1(result, opts.out, opts.use_relative_path)
    opts.log(f"List of blup files written to: [{paths[-1]}]")
    return paths[-1]


def traits_from_analysis(
    data: AnalysisData, genotype_keys: np.ndarray, log: Callable[[str], None] = lambda _line: None
) -> tuple[Step1Traits, np.ndarray]:
    """Step-1 traits from the loaded phenotypes/covariates, and the genotype rows to read.

    The layout is regenie's: every genotyped sample left after --keep/--remove (``data.genotyped_index``),
    in file order; those without phenotypes or covariates sit inside the CV folds with zero genotypes.
    ``genotype_keys`` are the "FID_IID" keys of all samples in the genotype file.
    """
    y, _sd = data.residualized_traits()
    analysed = np.asarray(data.sample_index, dtype=np.int64)
    layout = analysed if data.genotyped_index is None else np.asarray(data.genotyped_index, dtype=np.int64)
    pos = np.searchsorted(layout, analysed)
    if not np.array_equal(layout[np.minimum(pos, layout.size - 1)], analysed):
        raise ValueError("analysed samples must be a subset of the genotyped samples, in genotype order")
    n, p = layout.size, y.shape[1]
    in_analysis = np.zeros(n, dtype=bool)
    in_analysis[pos] = True

    def spread(a: np.ndarray, fill: float | bool = 0.0) -> np.ndarray:
        out = np.full((n,) + a.shape[1:], fill, dtype=a.dtype)
        out[pos] = a
        return out

    sample_ids = [str(k) for k in genotype_keys[layout]]  # the genotype file's keys, as regenie's header
    mask = spread(np.asarray(data.mask, dtype=bool), False)
    basis = spread(np.asarray(data.basis, dtype=np.float64))
    traits = Step1Traits(
        names=list(data.trait_names),
        sample_ids=sample_ids,
        in_analysis=in_analysis,
        mask=mask,
        y=spread(y),
        basis=basis,
        binary=bool(data.binary),
        skipped=[False] * p,
    )
    if data.binary:
        y_raw = spread(np.where(data.mask, np.nan_to_num(data.y_raw), 0.0))
        offset = np.zeros((n, p))
        for j in range(p):
            try:
                offset[:, j] = ridge.fit_null_logistic(y_raw[:, j], basis, mask[:, j])
            except ridge.RidgeConvergenceError:
                log(
                    f"     WARNING: logistic regression did not converge for phenotype '{data.trait_names[j]}'."
                )
                traits.skipped[j] = True
        traits.y_raw, traits.offset = y_raw, offset
    return traits, layout


@dataclass
class Step1Traits:
    """Processed traits on the step-1 sample layout (genotyped samples after --keep/--remove, file order).

    ``y`` holds the traits residualised on the covariate basis and scaled to ‖y‖/√(N_eff − k) = 1 (0 where
    masked); ``basis`` is the orthonormal covariate basis Q (rows outside the analysis are 0); ``mask[i, p]``
    says sample i is analysed for trait p. Binary traits also carry ``y_raw`` (0/1) and ``offset``, the
    linear predictor of the null logistic regression on the covariates.
    """

    names: list[str]
    sample_ids: list[str]  # "FID_IID"
    in_analysis: np.ndarray  # (n,) bool
    mask: np.ndarray  # (n, P) bool
    y: np.ndarray  # (n, P)
    basis: np.ndarray  # (n, k)
    binary: bool = False
    y_raw: np.ndarray | None = None  # (n, P), BT only
    offset: np.ndarray | None = None  # (n, P), BT only
    skipped: list[bool] = field(default_factory=list)  # BT whose null logistic fit failed: no LOCO (regenie)


@dataclass
class Step1Settings:
    """The method's knobs, spelled as regenie's --cv, --loocv, --l0, --l1 and --nauto (n_chrom = nauto + 1)."""

    cv: int = 5
    loocv: bool = False
    l0: int = 5
    l1: int = 5
    n_chrom: int = N_CHROM
    threads: int = 1  # --threads: BLAS threads, and independent factorisations run side by side


@dataclass
class TraitFit:
    """The level-1 outcome for one trait: the CV table regenie logs and the LOCO predictions."""

    name: str
    index: int  # 1-based position in the analysed traits (the <i> of <out>_<i>.loco)
    h2: np.ndarray
    rsq: np.ndarray
    mse: np.ndarray
    nll: np.ndarray | None  # −logLik/N, binary traits
    best: int
    loco: np.ndarray | None  # (n_samples, n_chrom); None when the level-1 fit did not converge


@dataclass
class Step1Result:
    sample_ids: list[str]
    in_analysis: np.ndarray
    mask: np.ndarray
    fits: list[TraitFit] = field(default_factory=list)
    loocv: bool = False
    n_folds: int = 0
    n_blocks: int = 0


@dataclass(frozen=True)
class Block:
    """One step-1 block: its chromosome code (1..n_chrom) and the IDs of its variants."""

    chrom: int
    ids: Sequence[str]


def fit_step1(
    blocks: Sequence[Block],
    dosages: Iterable[np.ndarray],
    traits: Step1Traits,
    settings: Step1Settings,
    level0_prefix: str | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> Step1Result:
    """Fit regenie's step 1 on streamed blocks; ``dosages`` yields one (n_samples × block) array per block.

    Dosages are ALLELE1 counts on the layout of ``traits.sample_ids``; NaN = missing (mean-imputed over
    the analysed samples, as regenie). A chromosome's blocks must be consecutive.
    """
    n = len(traits.sample_ids)
    in_analysis = np.asarray(traits.in_analysis, dtype=bool)
    mask = np.asarray(traits.mask, dtype=bool) & in_analysis[:, None]
    y = np.asarray(traits.y, dtype=np.float64) * mask
    basis = np.asarray(traits.basis, dtype=np.float64) * in_analysis[:, None]
    n_traits = y.shape[1]
    n_analyzed = int(in_analysis.sum())
    ncov = basis.shape[1]
    neff = mask.sum(axis=0).astype(np.float64)
    if traits.binary and (traits.y_raw is None or traits.offset is None):
        raise ValueError("binary traits need y_raw and offset (null logistic linear predictor)")
    _check_blocks(blocks, settings.n_chrom)
    n_variants = sum(len(b.ids) for b in blocks)

    loocv = settings.loocv
    if traits.binary and not loocv and n_analyzed < BT_LOOCV_MAX_N:
        log(f"   -WARNING: Sample size is less than 5,000 so using LOOCV instead of {settings.cv}-fold CV.")
        loocv = True
    bounds: list[tuple[int, int]] = []
    if not loocv:
        try:
            bounds = ridge.fold_bounds(ridge.kfold_sizes(in_analysis, settings.cv))
        except ValueError as exc:
            raise RegenieError(f"{exc} Use fewer folds (--cv) or --loocv.") from exc
        if traits.binary:
            _check_folds_have_both_classes(traits, mask, bounds)

    try:
        h2_l0 = ridge.h2_grid(settings.l0)
        h2_l1 = ridge.h2_grid(settings.l1)
    except ValueError as exc:
        raise RegenieError(f"{exc} (options --l0/--l1).") from exc
    lambdas = n_variants * (1 - h2_l0) / h2_l0
    n_pred = len(blocks) * settings.l0
    log(f" * # CV folds       : [{n_analyzed if loocv else settings.cv}]")
    log(f" * ridge data_l0    : [ {settings.l0} : {' '.join(f'{h:g}' for h in h2_l0)} ]")
    log(f" * ridge data_l1    : [ {settings.l1} : {' '.join(f'{h:g}' for h in h2_l1)} ]")

    level0, tmp_files = _allocate_level0(n_traits, n, n_pred, level0_prefix)
    try:
        current = None
        it = iter(dosages)
        for b, blk in enumerate(blocks):
            if blk.chrom != current:
                current = blk.chrom
                log(f"Chromosome {blk.chrom}")
            log(f" block [{b + 1}] : {len(blk.ids)} snps")
            raw = next(it, None)
            if raw is None or raw.shape != (n, len(blk.ids)):
                got = None if raw is None else raw.shape
                raise RegenieError(f"genotype block {b + 1} has shape {got}, expected {(n, len(blk.ids))}.")
            g = _impute_block(raw, in_analysis)
            prod, scale = ridge.block_products(g, y, basis, [(0, n)] if loocv else bounds, n_analyzed)
            _check_variance(scale, blk.ids)
            if loocv:
                pred = ridge.level0_loocv(prod, y, lambdas)
            else:
                pred = ridge.level0_kfold(prod, mask, bounds, lambdas, settings.threads)
            pred = ridge.standardize_level0(pred, mask, neff, loocv)
            cols = slice(b * settings.l0, (b + 1) * settings.l0)
            for p in range(n_traits):
                level0[p][cols, :] = pred[:, :, p].T

        chrom_cols = _chromosome_columns(blocks, settings.l0)
        result = Step1Result(
            sample_ids=list(traits.sample_ids),
            in_analysis=in_analysis,
            mask=mask,
            loocv=loocv,
            n_folds=n_analyzed if loocv else settings.cv,
            n_blocks=len(blocks),
        )
        taus = ridge.tau_grid(h2_l1, n_pred, traits.binary)
        log("")
        log(" Level 1 ridge" + (" with logistic regression..." if traits.binary else "..."))
        for p in range(n_traits):
            if traits.skipped and traits.skipped[p]:
                continue
            w = np.asarray(level0[p]).T  # samples × predictors (a column-major view)
            fit = _level1(w, y[:, p], traits, p, mask[:, p], neff[p], ncov, taus, bounds, loocv, chrom_cols)
            fit.h2 = h2_l1
            fit.loco = None if fit.loco is None else _loco(fit.loco, chrom_cols, settings.n_chrom)
            result.fits.append(fit)
        log("")
        log("Output")
        log("------")
        for fit in result.fits:
            _log_fit(fit, traits.binary, log)
        return result
    finally:
        for path in tmp_files:
            path.unlink(missing_ok=True)


def _check_blocks(blocks: Sequence[Block], n_chrom: int) -> None:
    if not blocks:
        raise RegenieError("no variant left for step 1 after filters (--extract/--exclude/--chr).")
    seen: set[int] = set()
    prev = None
    for blk in blocks:
        if not 1 <= blk.chrom <= n_chrom:
            raise RegenieError(f"chromosome code {blk.chrom} is outside 1..{n_chrom} in step 1.")
        if blk.chrom != prev:
            if blk.chrom in seen:
                raise RegenieError(
                    f"variants of chromosome {blk.chrom} are not contiguous in the genotype file; sort it by chromosome."
                )
            seen.add(blk.chrom)
            prev = blk.chrom


def _impute_block(raw: np.ndarray, in_analysis: np.ndarray) -> np.ndarray:
    """Mean-impute missing dosages over the analysed samples and zero the other rows (regenie's get_G).

    Works in place on ``raw`` when it is a writable float64 array (the readers yield a fresh one per
    block), in a few whole-array passes: missing calls are common (a few per variant) in real data.
    """
    g = raw if (raw.dtype == np.float64 and raw.flags.writeable) else np.array(raw, dtype=np.float64)
    out = ~in_analysis
    if out.any():
        g[out] = 0.0
    colsum = g.sum(axis=0)
    if not np.isnan(colsum).any():
        return g
    miss = np.isnan(g)
    np.copyto(g, 0.0, where=miss)
    n_obs = int(in_analysis.sum()) - miss.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = g.sum(axis=0) / n_obs
    np.copyto(g, mean[None, :], where=miss)
    return g


def _check_variance(scale: np.ndarray, ids: Sequence[str]) -> None:
    """regenie stops on a variant whose residualised sd is below 1e-6 (monomorphic, or all-missing)."""
    low = np.flatnonzero(~(scale >= ridge.NUMTOL))
    if low.size:
        i = int(low[0])
        raise RegenieError(
            f"!! Uh-oh, SNP {ids[i]} has low variance (={scale[i]:g}). Remove monomorphic and very rare "
            "variants from step 1 (e.g. plink2 --mac 100 --write-snplist, then --extract)."
        )


def _check_folds_have_both_classes(
    traits: Step1Traits, mask: np.ndarray, bounds: list[tuple[int, int]]
) -> None:
    """regenie's set_folds check: a K-fold BT needs cases and controls in every fold."""
    for a, z in bounds:
        m = mask[a:z]
        n = m.sum(axis=0)
        s = np.where(m, traits.y_raw[a:z], 0.0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = (s / n) * (1 - s / n)
        for p in np.flatnonzero(v < ridge.NUMTOL):
            raise RegenieError(
                f"one of the folds has only cases/controls for phenotype '{traits.names[p]}'. "
                "Either use smaller #folds (option --cv) or use LOOCV (option --loocv)."
            )


def _allocate_level0(
    n_traits: int, n: int, n_pred: int, lowmem_prefix: str | None
) -> tuple[list[np.ndarray], list[Path]]:
    """Level-0 predictions per trait, predictor-major (n_pred × n, so a block writes J contiguous rows):
    in memory, or with --lowmem in <prefix>_l0_Y<i> files (regenie's name and layout), removed at the end."""
    if lowmem_prefix is None:
        return [np.empty((n_pred, n)) for _ in range(n_traits)], []
    arrays, paths = [], []
    try:
        for p in range(n_traits):
            path = Path(f"{lowmem_prefix}_l0_Y{p + 1}")
            paths.append(path)
            arrays.append(np.memmap(path, dtype=np.float64, mode="w+", shape=(n_pred, n)))
    except OSError as exc:
        for path in paths:
            path.unlink(missing_ok=True)
        raise RegenieError(
            f"cannot write temporary level 0 predictions to '{lowmem_prefix}_l0_Y*': {exc}"
        ) from exc
    return arrays, paths


def _chromosome_columns(blocks: list[Block], l0: int) -> list[tuple[int, slice]]:
    """Level-0 predictor columns of each chromosome, in the order chromosomes appear in the file."""
    out: list[tuple[int, slice]] = []
    for b, blk in enumerate(blocks):
        if out and out[-1][0] == blk.chrom:
            out[-1] = (blk.chrom, slice(out[-1][1].start, (b + 1) * l0))
        else:
            out.append((blk.chrom, slice(b * l0, (b + 1) * l0)))
    return out


def _level1(
    w: np.ndarray,
    yp: np.ndarray,
    traits: Step1Traits,
    p: int,
    mask: np.ndarray,
    neff: float,
    ncov: int,
    taus: np.ndarray,
    bounds: list[tuple[int, int]],
    loocv: bool,
    chrom_cols: list[tuple[int, slice]],
) -> TraitFit:
    """Level 1 for one trait: CV over the τ grid, pick the best, per-chromosome predictions (n × chromosomes)."""
    cols = [c for _, c in chrom_cols]
    betas: list[np.ndarray] = []
    if traits.binary:
        yr = np.where(mask, traits.y_raw[:, p], 0.0)
        off = traits.offset[:, p]
        try:
            if loocv:
                sums = ridge.level1_logistic_loocv(w, yr, off, mask, taus)
            else:
                betas, sums = ridge.level1_logistic_kfold(w, yr, off, mask, bounds, taus)
        except ridge.RidgeConvergenceError:
            return _fit(traits.names[p], p, None, neff, ncov, True, None)
        measure = sums.nll / neff
    else:
        if loocv:
            sums = ridge.level1_ridge_loocv(w, yp, taus, neff, ncov)
        else:
            betas, sums = ridge.level1_ridge_kfold(w, yp, bounds, taus)
        measure = (sums.sx2 + sums.sy2 - 2 * sums.sxy) / neff
    best = int(np.argmin(measure))  # first minimum, as regenie's strict '<' scan
    if loocv:
        if traits.binary:
            try:
                preds = ridge.loocv_logistic_predictions(w, yr, off, mask, float(taus[best]), cols)
            except ridge.RidgeConvergenceError:
                return _fit(traits.names[p], p, sums, neff, ncov, True, None, best)
        else:
            preds = ridge.loocv_ridge_predictions(w, yp, float(taus[best]), cols)
    else:
        preds = np.empty((w.shape[0], len(cols)))
        for (a, z), beta in zip(bounds, betas, strict=True):
            bj = beta[:, best]
            preds[a:z] = np.stack([w[a:z, c] @ bj[c] for c in cols], axis=1)
    return _fit(traits.names[p], p, sums, neff, ncov, traits.binary, preds, best)


def _fit(name, p, sums, neff, ncov, binary, preds, best=0) -> TraitFit:
    if sums is None:
        nan = np.array([np.nan])
        return TraitFit(name, p + 1, nan, nan, nan, nan if binary else None, 0, None)
    num = sums.sxy - sums.sx * sums.sy / neff
    rsq = num * num / ((sums.sx2 - sums.sx * sums.sx / neff) * (sums.sy2 - sums.sy * sums.sy / neff))
    mse = (sums.sx2 + sums.sy2 - 2 * sums.sxy) / neff
    nll = sums.nll / neff if binary else None
    return TraitFit(name, p + 1, np.empty(0), rsq, mse, nll, best, preds)


def _loco(preds: np.ndarray, chrom_cols: list[tuple[int, slice]], n_chrom: int) -> np.ndarray:
    """LOCO_c = Σ_c' pred_c' − pred_c; a chromosome absent from step 1 gets the whole prediction."""
    total = preds.sum(axis=1)
    loco = np.repeat(total[:, None], n_chrom, axis=1)
    for k, (chrom, _) in enumerate(chrom_cols):
        loco[:, chrom - 1] -= preds[:, k]
    return loco


def _log_fit(fit: TraitFit, binary: bool, log: Callable[[str], None]) -> None:
    log(f"phenotype {fit.index} ({fit.name}) : ")
    if fit.loco is None:
        log("Level 1 model did not converge. LOCO predictions calculations are skipped.")
        return
    for j, h2 in enumerate(fit.h2):
        line = f"  {h2:<5g} : Rsq = {fit.rsq[j]:g}, MSE = {fit.mse[j]:g}"
        if binary:
            line += f", -logLik/N = {fit.nll[j]:g}"
        log(line + ("<- min value" if j == fit.best else ""))
    log("  * making predictions...done")
    log("")


# --------------------------------------------------------------------------------------------------
# output files
# --------------------------------------------------------------------------------------------------


#: C++ ostream default formatting (6 significant digits), as regenie prints predictions.
_fmt = "{:.6g}".format


def write_step1(result: Step1Result, out: str, use_relative_path: bool = False) -> list[Path]:
    """Write ``<out>_<i>.loco`` per converged trait and ``<out>_pred.list``; return the paths written.

    Samples are the analysed ones ordered by the byte-wise sort of "FID_IID" (regenie's std::map); a
    sample masked for a trait reads NA. pred.list paths are absolute unless ``use_relative_path``.
    Each file is written under a temporary name and renamed, so no partial file is left behind.
    """
    order = sorted(
        (sid for sid, keep in zip(result.sample_ids, result.in_analysis, strict=True) if keep),
        key=lambda s: s.encode(),
    )
    index = {sid: i for i, sid in enumerate(result.sample_ids)}
    rows = np.array([index[s] for s in order], dtype=np.int64)
    header = "FID_IID " + "".join(s + " " for s in order) + "\n"
    written: list[Path] = []
    list_lines = []
    for fit in result.fits:
        if fit.loco is None:
            continue
        path = f"{out}_{fit.index}.loco"
        masked = np.flatnonzero(~result.mask[rows, fit.index - 1]).tolist()
        with atomic_output(Path(path)) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as fh:
            fh.write(header)
            for c in range(fit.loco.shape[1]):
                vals = fit.loco[rows, c]
                cells = list(map(_fmt, vals.tolist()))
                for i in masked:
                    cells[i] = "NA"
                fh.write(f"{c + 1} " + " ".join(cells) + " \n")
        written.append(Path(path))
        shown = path if use_relative_path else os.path.join(os.getcwd(), path)
        list_lines.append(f"{fit.name} {shown}\n")
    pred_list = Path(f"{out}_pred.list")
    with atomic_output(pred_list) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as fh:
        fh.writelines(list_lines)
    written.append(pred_list)
    return written
