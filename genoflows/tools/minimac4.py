"""minimac4 command lines (Debian's minimac4 4.1.2).

The installed CLI differs from older docs: `--compress-reference` works but is not listed by `--help`;
the sites file (`-s`) is a sites-only VCF with R2/ER2/AF/MAF in INFO (what IS2 ships as `chr<N>.info.gz`),
not minimac3's tabular `.info`; `-O vcf.gz` writes a bgzipped VCF.
"""

from __future__ import annotations

from pathlib import Path

TOOL = "minimac4"


def compress_reference_argv(panel_vcf: Path, msav: Path) -> list[str]:
    """Reference panel VCF/BCF -> minimac4's compressed `.msav` (done once per panel, cached by checksum)."""
    return [TOOL, "--compress-reference", str(panel_vcf), "-o", str(msav)]


def impute_argv(
    msav: Path,
    target_vcf: Path,
    dose_vcf: Path,
    info: Path,
    *,
    threads: int = 1,
    min_r2: float | None = None,
    region: str | None = None,
) -> list[str]:
    """Impute one chromosome: GT, DS, HDS and GP per sample (the fields MIS2's dose VCFs carry)."""
    argv = [TOOL, str(msav), str(target_vcf), "-o", str(dose_vcf), "-O", "vcf.gz", "-s", str(info)]
    argv += ["-f", "GT,DS,HDS,GP", "-t", str(threads)]
    if min_r2:
        argv += ["--min-r2", str(min_r2)]
    if region:
        argv += ["-r", region]
    return argv
