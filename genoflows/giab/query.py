"""Make a lab's VCF/gVCF comparable: indexed, one sample, variant sites only.

A gVCF is mostly reference blocks (`<NON_REF>`/`<*>` ALT, GT 0/0); benchmarking tools want the variant
records alone, with the symbolic allele trimmed (docs/giab-local-engine.md, "What it does", step 1).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pysam

from genoflows.files import atomic_output
from genoflows.giab.samples import find_genome
from genoflows.toolrun import ToolError, ToolRun, run_tool
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


# The empty BGZF block every complete BGZF file ends with (SAM/BAM spec 4.1.2); a cut-off upload lacks it.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def check_vcf_file(path: Path, label: str = "input") -> None:
    """Name a 0-byte or truncated (no BGZF end-of-file block) VCF before pysam or bcftools trip over it."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise InputError(
            f"{label} {path.name} is empty (0 bytes): the upload or export did not complete; write and upload it again"
        )
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(max(0, size - len(BGZF_EOF)))
        tail = fh.read()
    if head == b"\x1f\x8b" and _is_bgzf(path) and tail != BGZF_EOF:
        raise InputError(
            f"{label} {path.name} is truncated: it ends without the BGZF end-of-file block ({size:,} bytes), so it "
            f"was cut off while being written or uploaded; upload the complete file again"
        )


def require_records(vcf: Path, label: str = "input", *, shown: str | None = None, what: str = "variant records") -> None:
    """An input with no records gives all-zero metrics that look like a result: stop, naming the file
    (`shown`, when `vcf` is a derived file of it)."""
    quiet = pysam.set_verbosity(0)  # htslib would complain that a fresh, not yet indexed file has no index
    try:
        with pysam.VariantFile(str(vcf)) as vf:
            empty = next(iter(vf), None) is None
    finally:
        pysam.set_verbosity(quiet)
    if empty:
        raise InputError(
            f"{label} {shown or Path(vcf).name} has no {what}: nothing to benchmark. Check that it is the right file "
            f"(a gVCF of reference blocks only, or a failed variant calling, has none)"
        )


def _is_bgzf(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(18)
    # gzip magic, FEXTRA flag, and the 'BC' subfield that marks BGZF blocks.
    return len(head) >= 14 and head[:2] == b"\x1f\x8b" and head[3] & 4 == 4 and head[12:14] == b"BC"


def ensure_indexed(vcf: Path, *, log: Log | None = None, provenance_dir: Path | None = None) -> Path:
    """Return the index of `vcf`, building a .tbi when there is none; clear errors for unusable files."""
    vcf = Path(vcf)
    check_vcf_file(vcf)
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


# htslib's words for a body it could not decompress. bcftools 1.16 prints them and still exits 0, with the
# records before the bad block only: a cut-off input must not be benchmarked as if it were whole.
_READ_ERRORS = ("[E::bgzf_", "Inflate operation failed", "[E::bgzf_read]")


def refuse_read_errors(run: ToolRun, src: Path, label: str = "input") -> None:
    """InputError when a tool that exited 0 reported that it could not decompress `src` part-way."""
    bad = next((line for line in run.tail if any(marker in line for marker in _READ_ERRORS)), None)
    if bad is not None:
        raise InputError(
            f"{label} {Path(src).name} is corrupt: it could not be read to its end ({bad.strip()}); the file was "
            f"damaged in transfer or storage: upload it again (check it with `gzip -t {Path(src).name}`)"
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
    check_vcf_file(src)
    sample = choose_sample(src, sample_id)
    if log:
        kind = "gVCF" if is_gvcf(src) else "VCF"
        log(f"{src.name} is a {kind}; keeping variant sites{f' of sample {sample}' if sample else ''}")
    threads = min(4, os.cpu_count() or 1)
    # A unique temp name (two runs staging the same sample never share one), indexed, then renamed; on any error
    # the temp file and its index are removed (genoflows.files.atomic_output). The default compression level:
    # level 1 was measured no faster here (parsing the gVCF bounds this step; compression runs in --threads).
    with atomic_output(dst, index="tbi") as tmp:
        run = run_tool(bcftools.gvcf_to_variants_argv(src, tmp, sample, threads=threads), log=log,
                       provenance_dir=provenance_dir)
        refuse_read_errors(run, src)
        require_records(tmp, "input", shown=src.name, what="variant records (genotypes carrying an ALT allele)")
    return dst
