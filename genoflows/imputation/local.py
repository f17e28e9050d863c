"""The local engine: minimac4 on this machine, producing what a server produces per chromosome
(`chr<N>.dose.vcf.gz` + `.tbi`, `chr<N>.info.gz`).

The reference panel is given as a VCF/BCF (compressed once with `minimac4 --compress-reference` and cached by
the panel's sha256) or as an `.msav` already. Unphased study genotypes are pre-phased with shapeit4.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from genoflows.files import atomic_output
from genoflows.imputation.errors import InputValidationError
from genoflows.imputation.remote import sha256_cached, sha256_of, verify_vcf
from genoflows.imputation.validate import chromosome_number
from genoflows.toolrun import run_tool
from genoflows.tools import minimac4, shapeit4


def panel_for(refpanel: str, chrom: str) -> Path:
    """The panel file for a chromosome: `refpanel` may hold `{chrom}` (e.g. `/panels/1kg.chr{chrom}.vcf.gz`)."""
    path = Path(refpanel.replace("{chrom}", chromosome_number(chrom)))
    if not path.exists():
        raise InputValidationError(
            f"reference panel {path} not found for chromosome {chrom}: give refpanel as a local VCF/.msav path, "
            f"with {{chrom}} where the chromosome number goes"
        )
    return path


def panel_digest(panel: Path, cache_dir: Path) -> str:
    """The panel's sha256, remembered per (path, size, mtime): a whole-genome panel is gigabytes, and hashing it
    on every run would cost each run seconds per chromosome that a hand-written loop never pays."""
    st = panel.stat()
    key = hashlib.sha256(f"{panel.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = Path(cache_dir) / "digests" / key
    if memo.exists():
        digest = memo.read_text().strip()
        if len(digest) == 64:
            return digest
    digest = sha256_of(panel)
    memo.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(memo) as tmp:
        tmp.write_text(digest)
    return digest


def compressed_panel(panel: Path, cache_dir: Path, log: Callable[[str], None] | None = None) -> Path:
    """`.msav` for a panel VCF, built once per panel checksum (temp name, check, rename; shared by runs)."""
    if panel.suffix == ".msav":
        return panel
    cache_dir = Path(cache_dir) / "minimac4"
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / f"{panel_digest(panel, cache_dir)}.msav"
    with FileLock(str(dest) + ".lock"):
        if dest.exists() and dest.stat().st_size > 0:
            return dest
        part = dest.with_name(dest.name + f".{os.getpid()}.part")
        try:
            run_tool(minimac4.compress_reference_argv(panel, part), log=log)
            if not part.exists() or part.stat().st_size == 0:
                raise InputValidationError(
                    f"minimac4 made no compressed panel from {panel.name}; check the panel VCF"
                )
            part.replace(dest)
        finally:
            part.unlink(missing_ok=True)
    return dest


def prephase(
    target: Path, panel: Path, chrom: str, work: Path, log: Callable[[str], None] | None = None
) -> Path:
    out = work / f"{target.name.split('.vcf')[0]}.phased.vcf.gz"
    run_tool(shapeit4.phase_argv(target, panel, chrom, out), log=log)
    verify_vcf(out)
    return out


def impute_chromosome(
    target: Path,
    msav: Path,
    chrom: str,
    out_dir: Path,
    *,
    r2_filter: float = 0.0,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Run minimac4 for one chromosome into out_dir; outputs appear only once complete and readable."""
    n = chromosome_number(chrom)
    out_dir.mkdir(parents=True, exist_ok=True)
    dose, info = out_dir / f"chr{n}.dose.vcf.gz", out_dir / f"chr{n}.info.gz"
    tmp_dose, tmp_info = out_dir / f".chr{n}.dose.part.vcf.gz", out_dir / f".chr{n}.info.part.gz"
    try:
        # The target's index is an input too (minimac4 queries the target by region): a Batch job or a
        # container must receive it beside the target.
        index = [Path(f"{target}{ext}") for ext in (".tbi", ".csi") if Path(f"{target}{ext}").exists()]
        run_tool(
            minimac4.impute_argv(msav, target, tmp_dose, tmp_info, threads=threads, min_r2=r2_filter or None),
            log=log,
            provenance_dir=out_dir,
            mounts=[Path(msav), Path(target), *index],
        )
        tmp_index = verify_vcf(tmp_dose)  # indexed once: a tabix index does not depend on the file's name
        tmp_info.replace(info)
        tmp_index.replace(Path(str(dose) + ".tbi"))
        tmp_dose.replace(dose)
    finally:
        for p in (tmp_dose, tmp_info, Path(str(tmp_dose) + ".tbi")):
            p.unlink(missing_ok=True)
    files = [dose, Path(str(dose) + ".tbi"), info]
    for f in files:  # checksummed here, in parallel with the other chromosomes, for the manifest
        sha256_cached(f)
    return files
