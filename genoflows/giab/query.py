"""Make a lab's VCF/gVCF comparable: indexed, one sample, variant sites only.

A gVCF is mostly reference blocks (`<NON_REF>`/`<*>` ALT, GT 0/0); benchmarking tools want the variant
records alone, with the symbolic allele trimmed (shared/specs/giab-benchmarking.md section 5, step 1).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pysam

from genoflows.giab.samples import find_genome
from genoflows.toolrun import ToolError, run_tool
from genoflows.tools import bcftools

Log = Callable[[str], None]


class InputError(ValueError):
    """The lab's input cannot be used as it is; the message says what to do."""


def index_path(vcf: Path) -> Path | None:
    """The .tbi or .csi next to `vcf`, if any."""
    for suffix in (".tbi", ".csi"):
        candidate = Path(f"{vcf}{suffix}")
        if candidate.exists():
            return candidate
    return None


def build_tbi(vcf: Path, *, log: Log | None = None, provenance_dir: Path | None = None) -> Path:
    """`<vcf>.tbi`, built under a temp name and renamed, so an existing .tbi is always complete (a builder
    killed mid-write leaves only its own temp file; two builders never share one)."""
    tbi = Path(f"{vcf}.tbi")
    fd, name = tempfile.mkstemp(prefix=f".{tbi.name}.", suffix=".tmp", dir=tbi.parent)  # unique: builders may race
    os.close(fd)
    tmp = Path(name)
    try:
        run_tool(bcftools.index_argv(vcf, out=tmp), log=log, provenance_dir=provenance_dir)
        tmp.replace(tbi)
    finally:
        tmp.unlink(missing_ok=True)
    return tbi


def _is_bgzf(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(18)
    # gzip magic, FEXTRA flag, and the 'BC' subfield that marks BGZF blocks.
    return len(head) >= 14 and head[:2] == b"\x1f\x8b" and head[3] & 4 == 4 and head[12:14] == b"BC"


def ensure_indexed(vcf: Path, *, log: Log | None = None, provenance_dir: Path | None = None) -> Path:
    """Return the index of `vcf`, building a .tbi when there is none; clear errors for unusable files."""
    vcf = Path(vcf)
    existing = index_path(vcf)
    if existing is not None:
        if existing.stat().st_mtime + 1 < vcf.stat().st_mtime and log:
            log(f"warning: index {existing.name} is older than {vcf.name}; if results look wrong, re-index it")
        return existing
    if not _is_bgzf(vcf):
        raise InputError(
            f"{vcf} is not BGZF-compressed (plain gzip or text), so it cannot be indexed: recompress it with "
            f"`zcat {vcf.name} | bgzip > fixed.vcf.gz` and index it with `tabix -p vcf fixed.vcf.gz`"
        )
    if log:
        log(f"{vcf.name} has no index next to it; indexing it")
    try:
        build_tbi(vcf, log=log, provenance_dir=provenance_dir)
    except ToolError as exc:
        detail = " ".join(exc.tail)
        if "nsorted" in detail or "not sorted" in detail:
            raise InputError(
                f"{vcf} is not sorted by position ({detail.strip()}): sort it with "
                f"`bcftools sort -Oz -o sorted.vcf.gz {vcf.name}`, index it with `tabix -p vcf sorted.vcf.gz`, "
                f"and use the sorted file"
            ) from exc
        raise InputError(f"cannot index {vcf}: {detail.strip()}") from exc
    return Path(f"{vcf}.tbi")


def vcf_samples(vcf: Path) -> list[str]:
    with pysam.VariantFile(str(vcf)) as vf:
        return list(vf.header.samples)


def is_gvcf(vcf: Path) -> bool:
    """True when the header announces gVCF reference blocks (GATK `<NON_REF>`, DeepVariant `<*>`, GVCFBlock)."""
    with pysam.VariantFile(str(vcf)) as vf:
        text = str(vf.header)
    return "ID=NON_REF" in text or "##GVCFBlock" in text or "ID=*," in text


def choose_sample(vcf: Path, sample_id: str) -> str | None:
    """The sample column to benchmark: None for a single-sample VCF, else the one named like `sample_id`."""
    samples = vcf_samples(vcf)
    if not samples:
        raise InputError(f"{vcf} has no sample column (a sites-only VCF): genotypes are needed to benchmark")
    if len(samples) == 1:
        return None
    if sample_id in samples:
        return sample_id
    hg = find_genome(sample_id)
    same = [s for s in samples if hg is not None and find_genome(s) == hg]
    if len(same) == 1:
        return same[0]
    raise InputError(
        f"{vcf} has {len(samples)} samples ({', '.join(samples[:10])}) and none is unambiguously {sample_id!r}: "
        f"extract it with `bcftools view -s NAME` or name the file after the sample"
    )


def variant_sites(
    src: Path,
    dst: Path,
    *,
    sample_id: str,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> Path:
    """Write the variant records of `src` (gVCF or VCF) for one sample to `dst` (bgzipped + indexed).

    Drops reference blocks, no-calls and half-calls (bcftools `GT="alt"` does not match `./1`; see
    docs/giab-local-engine.md), and trims ALT alleles no genotype uses (`<NON_REF>`, `<*>`).
    """
    src, dst = Path(src), Path(dst)
    sample = choose_sample(src, sample_id)
    if log:
        kind = "gVCF" if is_gvcf(src) else "VCF"
        log(f"{src.name} is a {kind}; keeping variant sites{f' of sample {sample}' if sample else ''}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp.vcf.gz")
    run_tool(bcftools.gvcf_to_variants_argv(src, tmp, sample), log=log, provenance_dir=provenance_dir)
    run_tool(bcftools.index_argv(tmp), log=log, provenance_dir=provenance_dir)
    Path(f"{tmp}.tbi").replace(f"{dst}.tbi")
    tmp.replace(dst)
    return dst
