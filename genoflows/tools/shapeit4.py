"""shapeit4 command lines (Debian's shapeit4 4.2): optional pre-phasing of unphased study genotypes
against the reference panel before minimac4."""

from __future__ import annotations

from pathlib import Path

TOOL = "shapeit4"


def phase_argv(
    target_vcf: Path,
    panel_vcf: Path,
    region: str,
    out_vcf: Path,
    *,
    threads: int = 1,
    genetic_map: Path | None = None,
    seed: int = 1,
) -> list[str]:
    """Phase `target_vcf` over `region` (a contig name); without a map shapeit4 assumes 1 cM/Mb."""
    argv = [TOOL, "--input", str(target_vcf), "--reference", str(panel_vcf), "--region", region]
    argv += ["--output", str(out_vcf), "--thread", str(threads), "--seed", str(seed)]
    if genetic_map is not None:
        argv += ["--map", str(genetic_map)]
    return argv
