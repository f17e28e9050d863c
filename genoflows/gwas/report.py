"""What a scientist reads: top hits with lead variants per locus, genomic inflation, Manhattan and QQ plots."""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

GENOME_WIDE = 7.3  # -log10(5e-8)
CHISQ1_MEDIAN = 0.45493642311957283  # median of chi-square with 1 df


def read_results(path: Path) -> pd.DataFrame:
    """A `.regenie[.gz]` file as a table (CHROM kept as text: non-human names stay as they are)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        df = pd.read_csv(fh, sep=" ", dtype={"CHROM": str, "ID": str, "ALLELE0": str, "ALLELE1": str})
    for col in ("LOG10P", "BETA", "SE", "CHISQ", "A1FREQ"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def lambda_gc(df: pd.DataFrame) -> float:
    """Genomic inflation: median chi-square (1 df) over its expected median, from LOG10P (or CHISQ)."""
    if "CHISQ" in df and df["CHISQ"].notna().any():
        chisq = df["CHISQ"].dropna().to_numpy()
        return float(np.median(chisq) / CHISQ1_MEDIAN)
    logp = df["LOG10P"].dropna().to_numpy()
    if logp.size == 0:
        return float("nan")
    p = 10 ** (-float(np.median(logp)))
    z = NormalDist().inv_cdf(1 - min(max(p, 1e-300), 1.0) / 2) if p < 1 else 0.0
    return float(z * z / CHISQ1_MEDIAN)


@dataclass(frozen=True)
class TopHits:
    table: pd.DataFrame  # one row per hit, with `locus` and `lead` columns
    genome_wide: bool  # False = no hit reached the threshold; the table holds the best `n_best`


def top_hits(df: pd.DataFrame, *, threshold: float = GENOME_WIDE, n_best: int = 20, window_bp: int = 500_000) -> TopHits:
    """Hits at LOG10P >= threshold (else the `n_best` best), grouped into loci around lead variants."""
    valid = df[df["LOG10P"].notna()]
    hits = valid[valid["LOG10P"] >= threshold]
    genome_wide = not hits.empty
    if not genome_wide:
        hits = valid.nlargest(n_best, "LOG10P")
    hits = hits.sort_values("LOG10P", ascending=False, kind="stable").copy()
    leads: list[tuple[str, int, int]] = []  # chrom, pos, locus number
    locus, lead = [], []
    for chrom, pos in zip(hits["CHROM"], hits["GENPOS"], strict=True):
        for lc, lp, n in leads:
            if lc == chrom and abs(lp - pos) <= window_bp:
                locus.append(n)
                lead.append(False)
                break
        else:
            leads.append((chrom, int(pos), len(leads) + 1))
            locus.append(len(leads))
            lead.append(True)
    hits["locus"] = locus
    hits["lead"] = lead
    return TopHits(hits, genome_wide)


def lead_table(hits: TopHits) -> list[dict]:
    """Rows for the table artifact: one per locus, its lead variant and how many hits it holds."""
    t = hits.table
    rows = []
    for n, group in t.groupby("locus", sort=True):
        lead = group[group["lead"]].iloc[0]
        row = {"locus": int(n), "CHROM": lead["CHROM"], "GENPOS": int(lead["GENPOS"]), "ID": lead["ID"],
               "ALLELE1": lead["ALLELE1"], "LOG10P": round(float(lead["LOG10P"]), 3),
               "variants_in_locus": len(group)}
        for col in ("BETA", "SE", "A1FREQ"):
            if col in lead:
                row[col] = None if pd.isna(lead[col]) else float(f"{lead[col]:.6g}")
        rows.append(row)
    return rows


def _chrom_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["CHROM"]))  # order of appearance = file order


def manhattan_png(df: pd.DataFrame, dest: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df[df["LOG10P"].notna()]
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=90)
    offset, ticks, labels = 0, [], []
    for i, chrom in enumerate(_chrom_order(d)):
        sub = d[d["CHROM"] == chrom]
        x = sub["GENPOS"].to_numpy() - sub["GENPOS"].min() + offset
        ax.scatter(x, sub["LOG10P"], s=4, color=("#1f4e79", "#7fa7d1")[i % 2], linewidths=0)
        ticks.append((x.min() + x.max()) / 2 if len(x) else offset)
        labels.append(chrom)
        offset = (x.max() if len(x) else offset) + max(1, int(0.02 * (sub["GENPOS"].max() - sub["GENPOS"].min() + 1)))
    ax.axhline(GENOME_WIDE, color="#c0392b", lw=0.8, ls="--")
    ax.set_xticks(ticks, labels, rotation=45 if len(labels) > 12 else 0, fontsize=7)
    ax.set_ylabel("-log10(p)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, dest)


def qq_png(df: pd.DataFrame, dest: Path, title: str, lam: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = np.sort(df["LOG10P"].dropna().to_numpy())[::-1]
    n = obs.size
    exp = -np.log10((np.arange(1, n + 1) - 0.5) / n) if n else np.array([])
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=90)
    ax.scatter(exp, obs, s=4, color="#1f4e79", linewidths=0)
    top = max(exp.max() if n else 1, obs.max() if n else 1)
    ax.plot([0, top], [0, top], color="#c0392b", lw=0.8)
    ax.set_xlabel("expected -log10(p)")
    ax.set_ylabel("observed -log10(p)")
    lam_txt = "n/a" if math.isnan(lam) else f"{lam:.3f}"
    ax.set_title(f"{title}\nλGC = {lam_txt}", fontsize=9)
    fig.tight_layout()
    return _save(fig, dest)


def _save(fig, dest: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = dest.with_name(dest.stem + ".part.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(dest)
    return dest
