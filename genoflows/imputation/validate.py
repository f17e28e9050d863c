"""Check input VCFs before anything leaves the machine, and split multi-chromosome files.

What the servers require (IS2 input validation): bgzipped, indexed, sorted VCFs with one chromosome per
file, `chr` prefix for hg38 and none for hg19, at least 20 samples, unique sample ids. Every problem raises
InputValidationError naming the file and what to do about it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pysam

from genoflows.imputation.errors import InputValidationError

MIN_SERVER_SAMPLES = 20
_AUTOSOMES = {str(i) for i in range(1, 23)} | {"X"}


@dataclass(frozen=True)
class VcfSummary:
    path: Path
    chrom: str
    samples: int
    records: int
    phased: bool


def chromosome_number(contig: str) -> str:
    """'chr20' / '20' -> '20' (the servers' file names use the bare number)."""
    return re.sub(r"^chr", "", contig)


def check_naming(path: Path, contig: str, build: str) -> None:
    has_chr = contig.startswith("chr")
    if build == "hg38" and not has_chr:
        raise InputValidationError(
            f"{path.name}: chromosome '{contig}' has no 'chr' prefix, but build hg38 requires it "
            f"(e.g. chr{contig}). Rename contigs with `bcftools annotate --rename-chrs`, or use build='hg19' "
            f"if the data is GRCh37."
        )
    if build == "hg19" and has_chr:
        raise InputValidationError(
            f"{path.name}: chromosome '{contig}' has a 'chr' prefix, but build hg19 requires none "
            f"(e.g. {chromosome_number(contig)}). Rename contigs with `bcftools annotate --rename-chrs`, or use "
            f"build='hg38' if the data is GRCh38."
        )
    if chromosome_number(contig) not in _AUTOSOMES:
        raise InputValidationError(
            f"{path.name}: chromosome '{contig}' is not one of 1-22 or X; remove it before imputation."
        )


def _open(path: Path) -> pysam.VariantFile:
    if not path.exists():
        raise InputValidationError(f"{path}: file not found; check the input URI")
    with open(path, "rb") as fh:
        magic = fh.read(18)
    if magic[:2] != b"\x1f\x8b" or b"BC" not in magic[12:16]:
        raise InputValidationError(
            f"{path.name}: not bgzip-compressed (plain text or gzip): compress it with `bgzip` "
            f"(or `bcftools view -Oz -o {path.stem}.vcf.gz`) and index it with `tabix -p vcf`."
        )
    try:
        return pysam.VariantFile(str(path))
    except (OSError, ValueError) as exc:
        _check_unique_samples(
            path, _header_samples(path)
        )  # htslib refuses duplicate ids with a vague message
        raise InputValidationError(
            f"{path.name}: not a readable VCF ({exc}); check the file is a VCF"
        ) from exc


def _header_samples(path: Path) -> list[str]:
    """Sample ids from the #CHROM line, read as text (works where htslib refuses the header)."""
    import gzip

    try:
        with gzip.open(path, "rt", errors="replace") as fh:
            for line in fh:
                if line.startswith("#CHROM"):
                    return line.rstrip("\n").split("\t")[9:]
                if not line.startswith("#"):
                    break
    except (OSError, EOFError):
        pass
    return []


def _check_unique_samples(path: Path, samples: list[str]) -> None:
    dups = sorted(s for s, n in Counter(samples).items() if n > 1)
    if dups:
        raise InputValidationError(
            f"{path.name}: duplicate sample ids {dups[:5]}: make them unique (`bcftools reheader -s`)."
        )


def has_index(path: Path) -> bool:
    return any(Path(str(path) + ext).exists() for ext in (".tbi", ".csi"))


def contigs_with_records(path: Path) -> list[str]:
    """Contigs that hold records, in file order (reads the index when there is one)."""
    if has_index(path):
        try:
            idx = pysam.TabixFile(str(path))
            return [c for c in idx.contigs if next(idx.fetch(c), None) is not None]
        except (OSError, ValueError):
            pass
    seen: list[str] = []
    with _open(path) as vf:
        for rec in vf:
            if not seen or seen[-1] != rec.chrom:
                seen.append(rec.chrom)
    return seen


def validate_vcf(
    path: Path,
    *,
    build: str,
    for_server: bool,
    reference_fasta: Path | None = None,
    min_samples: int = MIN_SERVER_SAMPLES,
) -> VcfSummary:
    """Validate one single-chromosome input; returns what the flow needs to know about it."""
    path = Path(path)
    vf = _open(path)
    with vf:
        samples = list(vf.header.samples)
        _check_unique_samples(path, samples)
        if for_server and len(samples) < min_samples:
            raise InputValidationError(
                f"{path.name}: {len(samples)} samples; imputation servers require at least {min_samples}. "
                f"Add samples, or impute locally with service='local'."
            )
        if not samples:
            raise InputValidationError(f"{path.name}: no samples (a sites-only VCF); give genotypes.")
        fasta = pysam.FastaFile(str(reference_fasta)) if reference_fasta else None
        chrom, last_pos, n, phased, ref_mismatch = None, 0, 0, True, []
        for rec in vf:
            if chrom is None:
                chrom = rec.chrom
                check_naming(path, chrom, build)
            elif rec.chrom != chrom:
                raise InputValidationError(
                    f"{path.name}: holds more than one chromosome ({chrom}, {rec.chrom}); the flow splits "
                    f"multi-chromosome inputs, give one file per chromosome or one file for all."
                )
            if rec.pos < last_pos:
                raise InputValidationError(
                    f"{path.name}: not sorted ({rec.chrom}:{rec.pos} after position {last_pos}); "
                    f"sort with `bcftools sort -Oz` and index again with `tabix -p vcf`."
                )
            last_pos = rec.pos
            n += 1
            if phased and n <= 200:
                phased = all(s.phased or all(a is None for a in s.alleles) for s in rec.samples.values())
            if fasta is not None and rec.ref:
                try:
                    ref = fasta.fetch(rec.chrom, rec.pos - 1, rec.pos - 1 + len(rec.ref)).upper()
                except (KeyError, ValueError):
                    ref = ""
                if ref != rec.ref.upper():
                    ref_mismatch.append(f"{rec.chrom}:{rec.pos} {rec.ref}!={ref or '?'}")
        if chrom is None:
            raise InputValidationError(f"{path.name}: no variant records; check the file.")
        if not has_index(path):
            raise InputValidationError(
                f"{path.name}: no index (.tbi/.csi) beside it: run `tabix -p vcf {path.name}` "
                f"(servers and the local engine read by region)."
            )
        if ref_mismatch:
            share = len(ref_mismatch) / n
            if share > 0.01:
                raise InputValidationError(
                    f"{path.name}: {len(ref_mismatch)} of {n} REF alleles differ from the reference "
                    f"{Path(reference_fasta).name} (e.g. {ref_mismatch[:3]}): wrong build or strand; "
                    f"check the build or fix with `bcftools norm --check-ref s -f <fasta>`."
                )
    return VcfSummary(path=path, chrom=chrom, samples=len(samples), records=n, phased=phased)


def split_by_chromosome(path: Path, out_dir: Path) -> list[Path]:
    """One bgzipped, indexed VCF per chromosome of a multi-chromosome input (already-single files pass through)."""
    path = Path(path)
    contigs = contigs_with_records(path)
    if len(contigs) <= 1:
        return [path]
    if not has_index(path):
        raise InputValidationError(
            f"{path.name}: a multi-chromosome VCF needs an index to be split: run `tabix -p vcf {path.name}`."
        )
    if len(set(contigs)) != len(contigs):
        raise InputValidationError(
            f"{path.name}: not sorted (chromosomes interleaved); sort with `bcftools sort -Oz`."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    with _open(path) as vf:
        for contig in contigs:
            dest = out_dir / f"{path.name.split('.vcf')[0]}.{contig}.vcf.gz"
            part = dest.with_name(dest.name + ".part")
            with pysam.VariantFile(str(part), "wz", header=vf.header) as out:
                for rec in vf.fetch(contig):
                    out.write(rec)
            part.replace(dest)
            pysam.tabix_index(str(dest), preset="vcf", force=True)
            outputs.append(dest)
    return outputs
