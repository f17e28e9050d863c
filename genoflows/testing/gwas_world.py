"""A generated GWAS cohort for tests, the demo and the benchmark: non-human chromosome names, planted signals.

Seeded numpy simulation: genotypes drawn per variant from a frequency in [0.05, 0.5] with a little missingness,
written as PLINK 1 BED (.bed/.bim/.fam; col 5 of .bim is the counted allele, as regenie's ALLELE1), a
quantitative trait with a few causal variants of known effect plus covariates and noise, and the covariates.
The causal variants are what a correct GWAS must report as its lead hits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_CHROMOSOMES = ("NC_036780.1", "NC_036781.1", "chrZ", "scaffold_1")
_CODE = {0: 0b11, 1: 0b10, 2: 0b00}  # copies of the .bim col-5 allele -> PLINK 2-bit code


@dataclass(frozen=True)
class Cohort:
    prefix: Path  # .bed/.bim/.fam
    phenotype: Path
    covariates: Path
    causal: dict[str, str]  # variant id -> chromosome
    chromosomes: tuple[str, ...]

    @property
    def directory(self) -> Path:
        return self.prefix.parent


def write_bed(prefix: Path, genotypes: np.ndarray, chrom: list[str], pos: list[int], ids: list[str],
              alleles: list[tuple[str, str]], samples: list[str]) -> None:
    """genotypes: (variants, samples) copies of allele 1, -1 = missing."""
    n_var, n = genotypes.shape
    nbytes = (n + 3) // 4
    codes = np.full(genotypes.shape, 0b01, dtype=np.uint8)  # missing
    for dose, code in _CODE.items():
        codes[genotypes == dose] = code
    padded = np.zeros((n_var, nbytes * 4), dtype=np.uint8)
    padded[:, :n] = codes
    packed = (padded[:, 0::4] | (padded[:, 1::4] << 2) | (padded[:, 2::4] << 4) | (padded[:, 3::4] << 6))
    with open(f"{prefix}.bed", "wb") as fh:
        fh.write(bytes([0x6C, 0x1B, 0x01]))
        fh.write(packed.astype(np.uint8).tobytes())
    with open(f"{prefix}.bim", "w") as fh:
        for c, p, i, (a1, a0) in zip(chrom, pos, ids, alleles, strict=True):
            fh.write(f"{c}\t{i}\t0\t{p}\t{a1}\t{a0}\n")
    with open(f"{prefix}.fam", "w") as fh:
        for s in samples:
            fh.write(f"{s} {s} 0 0 0 -9\n")


def make_cohort(
    directory: Path, *, n_samples: int = 400, variants_per_chrom: int = 300,
    chromosomes: tuple[str, ...] = DEFAULT_CHROMOSOMES, n_causal: int = 3, effect_sd: float = 0.55, seed: int = 7,
) -> Cohort:
    """Write the cohort under `directory` (idempotent for the same arguments)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = [f"S{i:05d}" for i in range(1, n_samples + 1)]
    chrom, pos, ids, alleles, rows = [], [], [], [], []
    bases = "ACGT"
    for c in chromosomes:
        p = np.sort(rng.choice(np.arange(1_000, 50_000_000, 97), size=variants_per_chrom, replace=False))
        for k, position in enumerate(p):
            freq = rng.uniform(0.05, 0.5)
            g = rng.binomial(2, freq, size=n_samples).astype(np.int8)
            g[rng.random(n_samples) < 0.01] = -1
            a1, a0 = rng.choice(list(bases), size=2, replace=False)
            chrom.append(c)
            pos.append(int(position))
            ids.append(f"{c}_v{k + 1}")
            alleles.append((str(a1), str(a0)))
            rows.append(g)
    geno = np.vstack(rows)
    # causal variants: on different chromosomes, common enough to be well powered
    causal: dict[str, str] = {}
    chrom_arr = np.array(chrom)
    for c in chromosomes[:n_causal]:
        idx = np.flatnonzero(chrom_arr == c)
        freqs = np.array([(geno[i][geno[i] >= 0]).mean() / 2 for i in idx])
        pick = int(idx[np.argmin(np.abs(freqs - 0.35))])
        causal[ids[pick]] = c
    age = rng.normal(50, 10, n_samples).round(1)
    sex = rng.integers(0, 2, n_samples)
    y = 0.02 * (age - 50) + 0.3 * sex
    for vid in causal:
        g = geno[ids.index(vid)].astype(float)
        g[g < 0] = np.nanmean(np.where(g >= 0, g, np.nan))
        y += effect_sd * (g - g.mean()) / g.std()
    y += rng.normal(0, 1, n_samples)
    prefix = directory / "cohort"
    write_bed(prefix, geno, chrom, pos, ids, alleles, samples)
    pheno = directory / "phenotype.txt"
    pheno.write_text("FID IID height\n" + "".join(f"{s} {s} {v:.5f}\n" for s, v in zip(samples, y, strict=True)))
    covar = directory / "covariates.txt"
    covar.write_text("FID IID age sex\n" + "".join(
        f"{s} {s} {a} {x}\n" for s, a, x in zip(samples, age, sex, strict=True)))
    (directory / "causal.json").write_text(json.dumps(causal))
    return Cohort(prefix, pheno, covar, causal, tuple(chromosomes))
