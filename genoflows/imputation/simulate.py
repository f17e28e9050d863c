"""A simulated imputation cohort (msprime): a phased reference panel, a study set with its truth, and the
study masked to array density, one bgzipped+indexed VCF per chromosome. Seeded, small, realistic: the
coalescent gives real linkage disequilibrium, which is what imputation exploits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pysam


@dataclass
class Cohort:
    panel: dict[str, Path] = field(default_factory=dict)  # chrom -> phased panel VCF
    truth: dict[str, Path] = field(default_factory=dict)  # chrom -> study genotypes at every site
    study: dict[str, Path] = field(default_factory=dict)  # chrom -> study genotypes at array sites
    fasta: Path | None = None


def contig_name(chrom: str, build: str) -> str:
    return f"chr{chrom}" if build == "hg38" else chrom


def _write(path: Path, contig: str, length: int, samples: list[str], rows, phased: bool) -> Path:
    header = pysam.VariantHeader()
    header.add_line(f"##contig=<ID={contig},length={length}>")
    header.add_line('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">')
    for s in samples:
        header.add_sample(s)
    with pysam.VariantFile(str(path), "wz", header=header) as out:
        for pos, ref, alt, haps in rows:
            rec = out.new_record(contig=contig, start=pos - 1, alleles=(ref, alt), id=f"{contig}:{pos}")
            for i, s in enumerate(samples):
                rec.samples[s]["GT"] = (int(haps[2 * i]), int(haps[2 * i + 1]))
                rec.samples[s].phased = phased
            out.write(rec)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return path


def make_cohort(
    out_dir: Path,
    *,
    chroms: tuple[str, ...] = ("20",),
    panel_size: int = 200,
    study_size: int = 40,
    length: int = 400_000,
    array_spacing: int = 4_000,
    build: str = "hg19",
    phased_study: bool = True,
    seed: int = 7,
) -> Cohort:
    """Simulate `panel_size + study_size` diploids per chromosome; the study keeps ~1 common site per
    `array_spacing` bp (an array's density), the truth keeps all sites."""
    import msprime

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cohort = Cohort()
    bases = "ACGT"
    fasta_records = []
    for k, chrom in enumerate(chroms):
        ts = msprime.sim_ancestry(
            panel_size + study_size,
            sequence_length=length,
            recombination_rate=1e-8,
            population_size=10_000,
            random_seed=seed + 11 * k,
        )
        ts = msprime.sim_mutations(ts, rate=1.5e-8, random_seed=seed + 13 * k)
        contig = contig_name(chrom, build)
        rows, seq = [], rng.choice(list(bases), size=length)
        last = 0
        for var in ts.variants():
            pos = int(var.site.position) + 1
            if len(var.alleles) != 2 or pos <= last or pos > length:
                continue
            last = pos
            ref = seq[pos - 1]
            alt = bases[(bases.index(ref) + 1 + int(rng.integers(3))) % 4]
            rows.append((pos, ref, alt, var.genotypes))
        fasta_records.append((contig, "".join(seq)))
        n_panel = 2 * panel_size
        panel_rows = [(p, r, a, g[:n_panel]) for p, r, a, g in rows]
        study_rows = [(p, r, a, g[n_panel:]) for p, r, a, g in rows]
        panel_ids = [f"REF{i:04d}" for i in range(panel_size)]
        study_ids = [f"S{i:04d}" for i in range(study_size)]
        array, next_pos = [], 0
        for row in study_rows:
            freq = row[3].mean()
            if row[0] >= next_pos and 0.05 <= freq <= 0.95:
                array.append(row)
                next_pos = row[0] + array_spacing
        if not phased_study:
            array = [(p, r, a, _unphase(g, rng)) for p, r, a, g in array]
        cohort.panel[chrom] = _write(
            out_dir / f"panel.chr{chrom}.vcf.gz", contig, length, panel_ids, panel_rows, True
        )
        cohort.truth[chrom] = _write(
            out_dir / f"truth.chr{chrom}.vcf.gz", contig, length, study_ids, study_rows, True
        )
        cohort.study[chrom] = _write(
            out_dir / f"study.chr{chrom}.vcf.gz", contig, length, study_ids, array, phased_study
        )
    fasta = out_dir / "reference.fa"
    with open(fasta, "w") as fh:
        for contig, seq in fasta_records:
            fh.write(f">{contig}\n")
            for i in range(0, len(seq), 80):
                fh.write(seq[i : i + 80] + "\n")
    pysam.faidx(str(fasta))
    cohort.fasta = fasta
    return cohort


def _unphase(g: np.ndarray, rng) -> np.ndarray:
    """Scramble the phase of heterozygotes (what an unphased array export looks like)."""
    g = g.copy()
    for i in range(0, len(g), 2):
        if g[i] != g[i + 1] and rng.random() < 0.5:
            g[i], g[i + 1] = g[i + 1], g[i]
    return g
