"""Normalisation of truth and query for the local engine, and the cache of the normalised truth.

Both sides are normalised the same way against the reference: split multi-allelics and left-align
(`norm -f -m -any`), decompose MNPs (`norm -a`), sort, index. The steps are one pipeline of processes connected by
OS pipes carrying uncompressed BCF (`toolrun.run_pipeline`): nothing is compressed only to be decompressed by the
next step, no file sits between them, and they run at once. Normalising a GIAB truth set takes
minutes, so it is cached per truth + reference pair.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from genoflows.files import temp_path
from genoflows.giab.contigs import check_same_build, vcf_rename_plan
from genoflows.giab.query import InputError, check_vcf_file, index_path, require_records
from genoflows.toolrun import PIPE_IN, PIPE_OUT, PipelineError, run_pipeline, run_tool
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
    rename: dict[str, str] | None = None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> Path:
    """`vcf` normalised into `dst`, a BCF with its .csi (unique temp names, renamed at the end). BCF, not VCF text:
    both writing it here and reading it back for the matching skip formatting and parsing text.

    One pipeline (`run_pipeline`), no file between the steps: [rename contigs ->] split and left-align -> atomize
    -> sort, passing uncompressed BCF through OS pipes, so the steps run at once and nothing is compressed only to
    be decompressed again. The sorted output is BGZF level 1: it is read once or twice, and `sort` compresses in
    its single thread, where level 1 is the cheapest (the file is ~18 % larger than at the default level). `rename` ({old: new} contig names) adds the renaming as the first stage.
    A REF allele that disagrees with the reference stops with ReferenceMismatch naming the file.
    """
    vcf, reference, dst, work_dir = (Path(p).resolve() for p in (vcf, reference, dst, work_dir))
    work_dir.mkdir(parents=True, exist_ok=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dst)
    tmp_csi = Path(f"{tmp}.csi")
    map_file = temp_path(work_dir / f"{label}.rename-chrs.txt") if rename else None
    sort_tmp = Path(tempfile.mkdtemp(prefix=f".{label}.sort-", dir=dst.parent))
    try:
        stages: list[list[str]] = []
        if rename and map_file is not None:
            map_file.write_text("".join(f"{old}\t{new}\n" for old, new in rename.items()))
            stages.append(bcftools.rename_chrs_argv(vcf, PIPE_OUT, map_file, output_type="u"))
        stages += [
            bcftools.norm_argv(PIPE_IN if stages else vcf, PIPE_OUT, reference, output_type="u"),
            bcftools.atomize_argv(PIPE_IN, PIPE_OUT, reference, output_type="u"),
            bcftools.sort_argv(PIPE_IN, tmp, sort_tmp, output_type="b1"),
        ]
        mounts = [vcf.parent, reference.parent, *([map_file.parent] if map_file else [])]
        kw = {"log": log, "provenance_dir": provenance_dir, "mounts": mounts, "cwd": dst.parent}
        try:
            run_pipeline(stages, work_dir=work_dir, **kw)
        except PipelineError as exc:
            detail = " ".join(exc.tail).strip()
            if "mismatch" in detail.lower() or "REF_SEQ" in detail:
                raise ReferenceMismatch(
                    f"{label} {vcf}: REF alleles disagree with the reference {reference} ({detail[-300:]}). The "
                    f"{label} was probably called on another genome build or reference: benchmark it against the "
                    f"matching build."
                ) from exc
            raise
        run_tool(bcftools.index_argv(tmp, csi=True), **kw)
        tmp.replace(dst)
        tmp_csi.replace(f"{dst}.csi")  # after the data: an index is never newer than what it indexes
    finally:
        for p in (tmp, tmp_csi, *([map_file] if map_file else [])):
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
            return normalise(vcf, reference, dst, rename=_renaming(vcf, ref_contigs, label, log), **kw)
    return normalise(vcf, reference, work_dir / f"{label}.norm.bcf", rename=_renaming(vcf, ref_contigs, label, log),
                     **kw)


def _renaming(vcf: Path, ref_contigs: list[str], label: str, log: Log | None) -> dict[str, str]:
    mapping = vcf_rename_plan(vcf, ref_contigs, label=label)
    if mapping and log:
        shown = ", ".join(f"{a}->{b}" for a, b in list(mapping.items())[:4]) + (" ..." if len(mapping) > 4 else "")
        log(f"{label} {Path(vcf).name} names contigs differently from the reference; renaming {shown}")
    return mapping
