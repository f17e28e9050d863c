"""Normalisation of truth and query for the local engine, and the cache of the normalised truth.

Both sides are normalised the same way against the reference: split multi-allelics and left-align
(`norm -f -m -any`), decompose MNPs (`norm -a`), sort, index. Files passed between the steps are uncompressed
BCF (`.ubcf`): nothing is compressed only to be decompressed by the next step. Normalising a GIAB truth set takes
minutes, so it is cached per truth + reference pair.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from genoflows.giab.contigs import check_same_build, harmonise_vcf
from genoflows.giab.query import InputError, check_vcf_file, index_path, require_records
from genoflows.toolrun import ToolError, run_tool
from genoflows.tools import bcftools

Log = Callable[[str], None]


class ReferenceMismatch(ValueError):
    """REF alleles in a VCF disagree with the reference FASTA: wrong build or wrong reference."""


def normalise(
    vcf: Path,
    reference: Path,
    dst: Path,
    *,
    label: str,
    work_dir: Path,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> Path:
    """`vcf` normalised into `dst`, a BCF with its .csi (temp names, renamed at the end). BCF, not VCF text: both
    writing it here and reading it back for the matching skip formatting and parsing text.

    A REF allele that disagrees with the reference stops with ReferenceMismatch naming the file.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    split = work_dir / f".{label}.split.ubcf"
    atoms = work_dir / f".{label}.atoms.ubcf"
    tmp = dst.with_name(f".{dst.name}.tmp.bcf")
    sort_tmp = work_dir / f".{label}.sort"
    try:
        try:
            run_tool(bcftools.norm_argv(vcf, split, reference), log=log, provenance_dir=provenance_dir)
            run_tool(bcftools.atomize_argv(split, atoms, reference), log=log, provenance_dir=provenance_dir)
        except ToolError as exc:
            detail = " ".join(exc.tail).strip()
            if "mismatch" in detail.lower() or "REF_SEQ" in detail:
                raise ReferenceMismatch(
                    f"{label} {vcf}: REF alleles disagree with the reference {reference} ({detail[-300:]}). The "
                    f"{label} was probably called on another genome build or reference: benchmark it against the "
                    f"matching build."
                ) from exc
            raise
        split.unlink(missing_ok=True)
        sort_tmp.mkdir(exist_ok=True)
        run_tool(bcftools.sort_argv(atoms, tmp, sort_tmp), log=log, provenance_dir=provenance_dir)
        run_tool(bcftools.index_argv(tmp, csi=True), log=log, provenance_dir=provenance_dir)
        Path(f"{tmp}.csi").replace(f"{dst}.csi")
        tmp.replace(dst)
    finally:
        for p in (split, atoms, tmp, Path(f"{tmp}.csi")):
            p.unlink(missing_ok=True)
        shutil.rmtree(sort_tmp, ignore_errors=True)
    return dst


def cached_truth_path(truth: Path, reference: Path, cache_dir: Path) -> Path:
    """Where the normalised truth for this truth+reference pair is cached."""
    key_src = "|".join(
        f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (Path(truth), Path(reference))
    )
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    name = Path(truth).name.removesuffix(".vcf.gz")
    return cache_dir / "giab-normalised" / key / f"{name}.norm.bcf"


def check_input(vcf: Path, reference: Path, *, label: str, build: str | None = None) -> None:
    """What must hold before a VCF is compared: a whole BGZF file, indexed, of the reference's build, with records."""
    check_vcf_file(vcf, label)
    if index_path(vcf) is None:
        raise InputError(f"{label} {vcf} has no .tbi/.csi index next to it: index it with `tabix -p vcf {vcf}`")
    check_same_build(vcf, reference, label=label, build=build)
    require_records(vcf, label)


def prepare_side(
    vcf: Path,
    reference: Path,
    ref_contigs: list[str],
    *,
    label: str,
    work_dir: Path,
    build: str | None = None,
    cache_dir: Path | None = None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> Path:
    """Check, rename contigs to the reference's if needed, then normalise (cached for the truth when cache_dir is
    set)."""
    check_input(vcf, reference, label=label, build=build)
    kw = {"label": label, "work_dir": work_dir, "log": log, "provenance_dir": provenance_dir}
    if cache_dir is not None:
        dst = cached_truth_path(vcf, reference, cache_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(dst.parent / f".{dst.name}.lock")):
            if dst.exists() and Path(f"{dst}.csi").exists():
                if log:
                    log(f"{label}: using the normalised copy cached at {dst}")
                return dst
            renamed = harmonise_vcf(vcf, ref_contigs, label=label, work_dir=work_dir, log=log,
                                    provenance_dir=provenance_dir)
            return normalise(renamed, reference, dst, **kw)
    renamed = harmonise_vcf(vcf, ref_contigs, label=label, work_dir=work_dir, log=log, provenance_dir=provenance_dir)
    return normalise(renamed, reference, work_dir / f"{label}.norm.bcf", **kw)
