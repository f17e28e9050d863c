"""Imputation accuracy against known genotypes: squared correlation of dosage with the true allele count,
per allele-frequency bin, next to minimac4's own Rsq estimate (R2 in the INFO field)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pysam

BINS = [0.0, 0.01, 0.05, 0.2, 0.5]
LABELS = ["<1%", "1-5%", "5-20%", "20-50%"]


def _truth(path: Path) -> dict[int, np.ndarray]:
    out = {}
    with pysam.VariantFile(str(path)) as vf:
        for rec in vf:
            out[rec.pos] = np.array(
                [sum(a for a in s["GT"] if a is not None) for s in rec.samples.values()], float
            )
    return out


def per_site(dose_vcf: Path, truth_vcf: Path) -> pd.DataFrame:
    """One row per imputed site present in the truth: MAF (truth), true r², minimac4's R2, typed or not."""
    truth = _truth(truth_vcf)
    rows = []
    with pysam.VariantFile(str(dose_vcf)) as vf:
        for rec in vf:
            t = truth.get(rec.pos)
            if t is None:
                continue
            ds = np.array(
                [s["DS"][0] if isinstance(s["DS"], tuple) else s["DS"] for s in rec.samples.values()], float
            )
            freq = t.mean() / 2
            maf = min(freq, 1 - freq)
            if maf == 0 or t.std() == 0 or ds.std() == 0:
                r2 = np.nan
            else:
                r2 = float(np.corrcoef(ds, t)[0, 1] ** 2)
            rows.append(
                {
                    "pos": rec.pos,
                    "maf": maf,
                    "r2": r2,
                    "rsq": float(rec.info.get("R2", np.nan)),
                    "typed": "TYPED" in rec.info,
                }
            )
    return pd.DataFrame(rows)


def by_maf_bin(sites: pd.DataFrame) -> pd.DataFrame:
    """Mean true r², mean minimac4 Rsq and their correlation, per MAF bin (imputed, untyped sites only)."""
    s = sites[(~sites["typed"]) & sites["r2"].notna() & (sites["maf"] > 0)].copy()
    s["maf_bin"] = pd.cut(s["maf"], BINS, labels=LABELS, include_lowest=False)
    rows = []
    for label, g in s.groupby("maf_bin", observed=False):
        corr = (
            float(np.corrcoef(g["r2"], g["rsq"])[0, 1]) if len(g) > 2 and g["rsq"].std() > 0 else float("nan")
        )
        rows.append(
            {
                "maf_bin": str(label),
                "sites": len(g),
                "mean_r2": round(float(g["r2"].mean()), 4),
                "mean_rsq": round(float(g["rsq"].mean()), 4),
                "rsq_vs_r2_corr": round(corr, 3),
            }
        )
    return pd.DataFrame(rows)


def common_mean_r2(sites: pd.DataFrame, maf_min: float = 0.05) -> float:
    s = sites[(~sites["typed"]) & sites["r2"].notna() & (sites["maf"] > maf_min)]
    return float(s["r2"].mean())
