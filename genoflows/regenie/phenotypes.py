"""Phenotype and covariate loading as regenie does it (src/Pheno.cpp pheno_read / covariate_read / setMasks).

* Files: header starts ``FID IID``, space or tab separated, ``.gz`` accepted; ``NA``/``nan``/``inf`` are
  missing; ``-9`` is a number (unlike PLINK). Samples are matched on ``FID_IID`` in any row order.
* Analysed samples = genotyped (after ``--keep``/``--remove``) ∩ phenotyped (≥1 non-missing trait, or all
  traits with ``--strict``, automatic with one trait) ∩ covariate file with no missing covariate; in
  genotype-file order.
* Per-trait mask (regenie ``masked_indivs``): BT missing values are always masked; QT missing values are
  masked in step 2 and mean-imputed in step 1.
* Binary traits: 0/1/NA, or 1/2/NA with ``--cc12`` (recoded to 0/1); anything else is an error.
* Covariates: intercept + numeric columns + one dummy per non-reference level of each ``--catCovarList``
  column (≤ ``--maxCatLevels`` levels). ``basis`` is regenie's orthonormal basis Q of that design
  (eigen-decomposition of CᵀC, eigenvalues below 1e-15 of the largest dropped, as regenie), ``k`` its rank.
* ``residualized_traits`` is regenie's ``residualize_phenotypes``: Y ← (Y − QQᵀY)·mask, scaled by
  sd_Y = ‖Y‖/√(N_eff − k).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from genoflows.regenie.errors import RegenieError

__all__ = ["AnalysisData", "covariate_basis", "load_analysis_data", "read_id_list", "expand_names"]

_MISSING = {"NA", "nan", "NaN", "NAN", "inf", "-inf", "Inf", "-Inf", "INF", "-INF"}
EIGEN_REL_TOL = 1e-15  # regenie param eigen_val_rel_tol


def expand_names(spec: list[str]) -> list[str]:
    """regenie's name lists: comma separated, ``Y{1:3}`` expands to Y1,Y2,Y3."""
    out: list[str] = []
    for item in spec:
        for name in item.split(","):
            name = name.strip()
            if not name:
                continue
            m = re.fullmatch(r"(.*)\{(\d+):(\d+)\}(.*)", name)
            if m:
                lo, hi = int(m.group(2)), int(m.group(3))
                out.extend(f"{m.group(1)}{i}{m.group(4)}" for i in range(lo, hi + 1))
            else:
                out.append(name)
    return out


def read_id_list(path: str | Path, option: str) -> set[str]:
    """``--keep``/``--remove`` file: FID IID per line, no header -> set of ``FID_IID`` keys."""
    p = Path(path)
    if not p.is_file():
        raise RegenieError(f"could not open file given to {option}: {p}")
    keys: set[str] = set()
    for n, line in enumerate(p.read_text().splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) < 2:
            raise RegenieError(f"{option} file {p} line {n}: expected FID IID.")
        keys.add(f"{f[0]}_{f[1]}")
    return keys


def _read_fid_iid_table(path: str | Path, option: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise RegenieError(f"could not open {option} file : {p}")
    try:
        df = pd.read_csv(p, sep=r"\s+", dtype=str, keep_default_na=False, engine="python")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise RegenieError(f"could not read {option} file {p}: {exc}") from exc
    if list(df.columns[:2]) != ["FID", "IID"]:
        what = "phenotype" if option == "--phenoFile" else "covariate"
        raise RegenieError(f"header of {what} file {p} ({option}) must start with: FID IID.")
    df.index = df["FID"] + "_" + df["IID"]
    if df.index.duplicated().any():
        d = df.index[df.index.duplicated()][0]
        raise RegenieError(f"individual appears more than once in {option} file {p}: {d}")
    return df


def _to_double(col: pd.Series, name: str, option: str, path: str | Path) -> np.ndarray:
    vals = col.to_numpy(dtype=object)
    out = np.empty(len(vals))
    for i, v in enumerate(vals):
        if v in _MISSING or v == "":
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except ValueError:
            raise RegenieError(
                f"could not convert value '{v}' of column '{name}' in {option} file {path} to a number."
            ) from None
    return out


def covariate_basis(cov: np.ndarray) -> np.ndarray:
    """regenie getBasis: orthonormal basis of the columns of ``cov`` (N x c) from the eigenvectors of CᵀC."""
    xtx = cov.T @ cov
    d, v = np.linalg.eigh(xtx)
    keep = d > d[-1] * EIGEN_REL_TOL
    return (cov @ v[:, keep]) / np.sqrt(d[keep])


@dataclass
class AnalysisData:
    """Everything per sample that step 1 and step 2 need, rows in genotype-file order."""

    sample_index: np.ndarray  # positions in Genotypes.samples of the analysed samples
    fid: np.ndarray
    iid: np.ndarray
    trait_names: list[str]
    binary: bool
    y_raw: np.ndarray  # N x P, NaN = missing; BT coded 0/1
    mask: np.ndarray  # N x P bool, regenie's masked_indivs (True = sample used for that trait)
    covariates: np.ndarray  # N x c design incl. intercept (regenie new_cov before getBasis)
    covariate_names: list[str]
    n_genotyped: int = 0  # genotyped samples left after --keep/--remove (regenie params.n_samples)
    genotyped_index: np.ndarray | None = None  # their rows in Genotypes.samples (regenie's sample layout)
    basis: np.ndarray = field(init=False)  # N x k orthonormal basis Q
    n_removed: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.basis = covariate_basis(self.covariates)

    @property
    def n(self) -> int:
        return self.sample_index.size

    @property
    def k(self) -> int:
        return self.basis.shape[1]

    @property
    def keys(self) -> np.ndarray:
        return np.char.add(np.char.add(self.fid.astype(str), "_"), self.iid.astype(str))

    @property
    def n_eff(self) -> np.ndarray:
        return self.mask.sum(axis=0)

    def imputed_traits(self) -> np.ndarray:
        """Y with missing replaced by the trait mean over the analysed samples, then masked to 0 (regenie
        pheno_impute_miss). QT: mean of non-missing; BT: mean over the mask."""
        y = self.y_raw.copy()
        for j in range(y.shape[1]):
            ok = ~np.isnan(y[:, j]) & self.mask[:, j]
            mean = y[ok, j].mean() if ok.any() else 0.0
            y[np.isnan(y[:, j]), j] = mean
        return y * self.mask

    def residualized_traits(self) -> tuple[np.ndarray, np.ndarray]:
        """regenie residualize_phenotypes: returns (Y residualized and scaled, sd_Y per trait)."""
        y = self.imputed_traits()
        q = self.basis
        y = y - (q @ (q.T @ y)) * self.mask
        sd = np.linalg.norm(y, axis=0) / np.sqrt(self.n_eff - self.k)
        for j, s in enumerate(sd):
            if not s > 1e-8:
                raise RegenieError(f"phenotype '{self.trait_names[j]}' has sd=0.")
        return y / sd, sd


def load_analysis_data(
    geno_samples: pd.DataFrame,
    *,
    pheno_file: str | Path,
    pheno_cols: list[str] | None = None,
    covar_file: str | Path | None = None,
    covar_cols: list[str] | None = None,
    cat_covars: list[str] | None = None,
    binary: bool = False,
    cc12: bool = False,
    keep: str | Path | None = None,
    remove: str | Path | None = None,
    strict: bool = False,
    step: int = 1,
    force_qt: bool = False,
    max_cat_levels: int = 10,
) -> AnalysisData:
    """Match genotyped samples (``geno_samples`` with a ``key`` column) with the phenotype/covariate files."""
    if keep is not None and remove is not None:
        raise RegenieError("cannot use both --keep and --remove.")
    gkeys = geno_samples["key"].to_numpy(dtype=str)
    in_geno = np.ones(gkeys.size, dtype=bool)
    removed: dict[str, int] = {}
    if keep is not None:
        ks = read_id_list(keep, "--keep")
        in_geno &= np.isin(gkeys, list(ks))
        removed["--keep"] = int((~in_geno).sum())
    if remove is not None:
        rs = read_id_list(remove, "--remove")
        before = in_geno.sum()
        in_geno &= ~np.isin(gkeys, list(rs))
        removed["--remove"] = int(before - in_geno.sum())

    # --- phenotypes
    ph = _read_fid_iid_table(pheno_file, "--phenoFile")
    avail = list(ph.columns[2:])
    names = expand_names(pheno_cols) if pheno_cols else avail
    for nm in names:
        if nm not in avail:
            raise RegenieError(
                f"phenotype column '{nm}' not found in --phenoFile {pheno_file} (columns: {', '.join(avail)})."
            )
    if not names:
        raise RegenieError(f"no phenotype column in --phenoFile {pheno_file}.")
    ymat = np.column_stack([_to_double(ph[nm], nm, "--phenoFile", pheno_file) for nm in names])
    if binary:
        for j, nm in enumerate(names):
            col = ymat[:, j]
            if cc12:
                col = col - 1
                ymat[:, j] = col
            bad = ~np.isnan(col) & (col != 0) & (col != 1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                code = "1/2/NA" if cc12 else "0/1/NA"
                raise RegenieError(
                    f"a phenotype value is not {code} for individual: FID={ph['FID'].iat[i]} IID={ph['IID'].iat[i]} "
                    f"Y={ph[nm].iat[i]} (trait '{nm}' in --phenoFile {pheno_file}; use --cc12 for 1/2 coding)."
                )
    pos = pd.Series(np.arange(len(ph)), index=ph.index)
    prow = pos.reindex(gkeys).to_numpy()
    in_pheno = ~np.isnan(prow)
    y = np.full((gkeys.size, len(names)), np.nan)
    y[in_pheno] = ymat[prow[in_pheno].astype(int)]
    strict = strict or len(names) == 1
    observed = ~np.isnan(y)
    has_pheno = in_pheno & (observed.all(axis=1) if strict else observed.any(axis=1))

    # --- covariates
    cov_cols: list[np.ndarray] = [np.ones(gkeys.size)]
    cov_names = ["Intercept"]
    in_cov = np.ones(gkeys.size, dtype=bool)
    cat_covars = expand_names(cat_covars) if cat_covars else []
    if (covar_cols or cat_covars) and covar_file is None:
        raise RegenieError("you specified covariates (--covarCol/--covarColList/--catCovarList) without --covarFile.")
    if covar_file is not None:
        cv = _read_fid_iid_table(covar_file, "--covarFile")
        cavail = list(cv.columns[2:])
        wanted = expand_names(covar_cols) if covar_cols else [c for c in cavail if c not in cat_covars]
        for nm in wanted + cat_covars:
            if nm not in cavail:
                raise RegenieError(
                    f"covariate column '{nm}' not found in --covarFile {covar_file} (columns: {', '.join(cavail)})."
                )
        cpos = pd.Series(np.arange(len(cv)), index=cv.index).reindex(gkeys).to_numpy()
        in_cov = ~np.isnan(cpos)
        crow = np.where(in_cov, cpos, 0).astype(int)
        for nm in wanted:
            if nm in cat_covars:
                continue
            vals = _to_double(cv[nm], nm, "--covarFile", covar_file)[crow]
            in_cov &= ~np.isnan(vals)
            cov_cols.append(np.where(in_cov, vals, 0.0))
            cov_names.append(nm)
        for nm in cat_covars:
            raw = cv[nm].to_numpy(dtype=str)[crow]
            miss = np.isin(raw, list(_MISSING))
            in_cov &= ~miss
            levels = sorted(set(raw[in_cov & ~miss]))
            if len(levels) > max_cat_levels:
                raise RegenieError(
                    f"categorical covariate '{nm}' in --covarFile {covar_file} has {len(levels)} levels "
                    f"(more than --maxCatLevels {max_cat_levels})."
                )
            for lev in levels[1:]:
                cov_cols.append((raw == lev).astype(float))
                cov_names.append(f"{nm}_{lev}")

    analysed = in_geno & has_pheno & in_cov
    if not analysed.any():
        what = f"--phenoFile {pheno_file}" + (f" / --covarFile {covar_file}" if covar_file else "")
        raise RegenieError(
            f"no sample is shared between the genotype file and {what} (after --keep/--remove and missing "
            "values): check that FID/IID match."
        )
    idx = np.flatnonzero(analysed)
    y = y[idx]
    observed = ~np.isnan(y)
    if binary or step == 2:
        mask = observed.copy()
    else:
        mask = np.ones_like(observed)
    cov = np.column_stack([c[idx] for c in cov_cols])
    if cov.shape[1] >= idx.size:
        raise RegenieError("Number of covariates is greater than sample size!")
    if not binary and not force_qt:
        for j, nm in enumerate(names):
            if np.unique(y[observed[:, j], j]).size < 3:
                raise RegenieError(
                    f"phenotype '{nm}' has fewer than 3 distinct values: use --bt for a binary trait or --force-qt."
                )
    data = AnalysisData(
        sample_index=idx,
        fid=geno_samples["FID"].to_numpy(dtype=str)[idx],
        iid=geno_samples["IID"].to_numpy(dtype=str)[idx],
        trait_names=names,
        binary=binary,
        y_raw=y,
        mask=mask,
        covariates=cov,
        covariate_names=cov_names,
        n_genotyped=int(in_geno.sum()),
        genotyped_index=np.flatnonzero(in_geno),
        n_removed=removed,
    )
    return data
