"""Detect and fix contig naming mismatches (chr1 vs 1) between a query, a truth set and the reference.

GRCh38 GIAB files say `chr1`, GRCh37 ones `1`, and a lab's VCF may use either; comparing them as they are
would match nothing. The reference FASTA decides the names: every VCF/BED is renamed to it (with a log line
saying so), and a contig with no counterpart in the reference is an error, never a silent zero.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pysam

from genoflows.files import temp_path
from genoflows.toolrun import run_tool
from genoflows.tools import bcftools

Log = Callable[[str], None]


class ContigMismatch(ValueError):
    """A file has records on contigs the reference does not have under any naming."""


class BuildMismatch(ContigMismatch):
    """A file declares contig lengths (or an assembly) of another genome build than the reference's."""


# Lengths that tell the builds apart (chr1, chr20, chr21, chr22, chrX, chrM; GRCh37 and hg19 differ only in
# naming and in chrM: hg19 carries the old 16,571 bp Yoruba mitochondrion, GRCh37/hs37d5 the 16,569 bp rCRS).
BUILD_LENGTHS: dict[str, dict[str, int]] = {
    "GRCh37": {"1": 249_250_621, "20": 63_025_520, "21": 48_129_895, "22": 51_304_566, "X": 155_270_560, "M": 16_569},
    "hg19": {"1": 249_250_621, "20": 63_025_520, "21": 48_129_895, "22": 51_304_566, "X": 155_270_560, "M": 16_571},
    "GRCh38": {"1": 248_956_422, "20": 64_444_167, "21": 46_709_983, "22": 50_818_468, "X": 156_040_895, "M": 16_569},
    "T2T-CHM13": {"1": 248_387_328, "20": 66_210_255, "21": 45_090_682, "22": 51_324_926, "X": 154_259_566, "M": 16_569},
}
# Assembly names seen in `##assembly=` / `##reference=` header lines, by the build family they mean.
_ASSEMBLY_WORDS = (
    (re.compile(r"hg19|grch37|\bb37\b|hs37d5|g1k_v37|human_g1k", re.I), "GRCh37"),
    (re.compile(r"hg38|grch38|\bb38\b|gca_000001405\.15|hs38", re.I), "GRCh38"),
    (re.compile(r"chm13|t2t|\bhs1\b", re.I), "T2T-CHM13"),
)


def fasta_contigs(fasta: Path) -> list[str]:
    """Contig names of an indexed FASTA, in order (from its .fai)."""
    fai = Path(f"{fasta}.fai")
    if not fai.exists():
        raise FileNotFoundError(f"{fasta} has no .fai index: run `samtools faidx {fasta}`")
    return [line.split("\t", 1)[0] for line in fai.read_text().splitlines() if line.strip()]


def fasta_lengths(fasta: Path) -> dict[str, int]:
    """Contig name -> length of an indexed FASTA (from its .fai)."""
    fai = Path(f"{fasta}.fai")
    if not fai.exists():
        raise FileNotFoundError(f"{fasta} has no .fai index: run `samtools faidx {fasta}`")
    rows = (line.split("\t") for line in fai.read_text().splitlines() if line.strip())
    return {r[0]: int(r[1]) for r in rows}


def _bare(name: str) -> str:
    bare = name[3:] if name.lower().startswith("chr") else name
    return "M" if bare.upper() in ("M", "MT") else bare


def family(build: str | None) -> str | None:
    """GRCh37 and hg19 are one build for coordinates (names aside): both map to GRCh37."""
    return "GRCh37" if build == "hg19" else build


def looks_like(lengths: dict[str, int]) -> str | None:
    """The build whose distinguishing contig lengths these are (None when no known length matches).

    GRCh37 and hg19 share every length but chrM's, so without chrM the naming decides (`chr1` -> hg19)."""
    best, best_hits = None, 0
    for build, table in BUILD_LENGTHS.items():
        hits = 0
        for name, length in lengths.items():
            want = table.get(_bare(name))
            if want is None:
                continue
            if want != length:
                hits = -1
                break
            hits += 1
        if hits > best_hits:
            best, best_hits = build, hits
    if best in ("GRCh37", "hg19") and not any(_bare(n) == "M" for n in lengths):
        return "hg19" if any(n.lower().startswith("chr") for n in lengths) else "GRCh37"
    return best


def declared_assembly(header_lines: Iterable[str]) -> tuple[str, str] | None:
    """(build family, the header line) from `##assembly=` or `##reference=`, when it names a known build."""
    for line in header_lines:
        if line.startswith(("##assembly=", "##reference=")):
            for pattern, build in _ASSEMBLY_WORDS:
                if pattern.search(line):
                    return build, line.strip()
    return None


def check_same_build(vcf: Path, reference: Path, *, label: str, build: str | None = None) -> None:
    """Stop with BuildMismatch when `vcf` was made on another genome build than `reference`.

    Two checks on the header: every `##contig` with a length must have that length in the reference (under
    either naming), and a `##assembly`/`##reference` line naming a build must name the reference's (taken from
    its contig lengths, else `build`, the build the run asked for). Contig names alone cannot tell hg19 from
    GRCh38: both say chr20.
    """
    ref_lengths = fasta_lengths(reference)
    ref_by_bare = {_bare(n): (n, ln) for n, ln in ref_lengths.items()}
    with pysam.VariantFile(str(vcf)) as vf:
        declared = {name: rec.length for name, rec in vf.header.contigs.items() if rec.length}
        lines = str(vf.header).splitlines()
    ref_build = looks_like(ref_lengths) or build
    vcf_build = looks_like(declared)
    for name, length in declared.items():
        ref_name, ref_length = (name, ref_lengths[name]) if name in ref_lengths else ref_by_bare.get(_bare(name), (None, None))
        if ref_length is not None and ref_length != length:
            like = f"; the {label} looks like {vcf_build}" if vcf_build else ""
            ref_is = f" ({ref_build})" if ref_build else ""
            raise BuildMismatch(
                f"{label} {Path(vcf).name}: contig {name} is {length:,} bp in its header but {ref_name} is "
                f"{ref_length:,} bp in the reference {Path(reference).name}{ref_is}{like}. It was called on another "
                f"genome build: benchmark it with the matching build, or lift it over first."
            )
    said = declared_assembly(lines)
    if said is not None and ref_build is not None and said[0] != family(ref_build):
        raise BuildMismatch(
            f"{label} {Path(vcf).name} declares {said[1]!r} ({said[0]}) but the reference {Path(reference).name} is "
            f"{ref_build}: benchmark it against {said[0]}, or fix the header if the declaration is wrong."
        )


def vcf_contigs(vcf: Path) -> list[str]:
    """Contigs that carry records in an indexed VCF (header-only contigs do not count)."""
    with pysam.VariantFile(str(vcf)) as vf:
        if vf.index is None:
            raise FileNotFoundError(f"{vcf} has no index (.tbi/.csi): index it with `bcftools index -t {vcf}`")
        # The index lists header contigs too; keep those with at least one record.
        return [c for c in vf.index.keys() if next(iter(vf.fetch(c)), None) is not None]


def bed_contigs(bed: Path) -> list[str]:
    """Contig names in a BED (plain or gzipped), in first-seen order."""
    seen: dict[str, None] = {}
    opener = gzip.open if str(bed).endswith(".gz") else open
    with opener(bed, "rt") as fh:
        for line in fh:
            if line.strip() and not line.startswith(("#", "track", "browser")):
                seen.setdefault(line.split("\t", 1)[0], None)
    return list(seen)


def _alternatives(name: str) -> list[str]:
    bare = name[3:] if name.lower().startswith("chr") else name
    alts = [bare, f"chr{bare}"]
    if bare.upper() in ("M", "MT"):
        alts += ["MT", "chrM", "M", "chrMT"]
    return [a for a in alts if a != name]


def rename_plan(names: Iterable[str], targets: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """({old: new} for names that exist in `targets` under the other convention, [names with no match])."""
    target_set = set(targets)
    mapping: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        if name in target_set:
            continue
        match = next((a for a in _alternatives(name) if a in target_set), None)
        if match is None:
            missing.append(name)
        else:
            mapping[name] = match
    return mapping, missing


def _describe(mapping: dict[str, str]) -> str:
    pairs = [f"{a}->{b}" for a, b in list(mapping.items())[:4]]
    more = f" and {len(mapping) - 4} more" if len(mapping) > 4 else ""
    return ", ".join(pairs) + more


def vcf_rename_plan(vcf: Path, reference_contigs: list[str], *, label: str) -> dict[str, str]:
    """{vcf contig: reference contig} for the contigs named differently (empty: nothing to rename).

    Raises ContigMismatch naming the file and the contigs when some have no counterpart in the reference.
    """
    mapping, missing = rename_plan(vcf_contigs(vcf), reference_contigs)
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ContigMismatch(
            f"{label} {vcf} has records on contigs that are not in the reference ({shown}); reference contigs "
            f"start {', '.join(reference_contigs[:5])}. Check that the {label} was called on the same genome "
            f"build as the reference, or remove those contigs (bcftools view -t ^{missing[0]})."
        )
    return mapping


def harmonise_vcf(
    vcf: Path,
    reference_contigs: list[str],
    *,
    label: str,
    work_dir: Path,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> Path:
    """Return `vcf`, or a copy with its contigs renamed to the reference's names (indexed).

    Raises ContigMismatch naming the file and the contigs when some have no counterpart in the reference.
    """
    mapping = vcf_rename_plan(vcf, reference_contigs, label=label)
    if not mapping:
        return vcf
    if log:
        log(f"{label} {Path(vcf).name} names contigs differently from the reference; renaming {_describe(mapping)}")
    work_dir.mkdir(parents=True, exist_ok=True)
    map_file = work_dir / f"{label}.rename-chrs.txt"
    map_file.write_text("".join(f"{old}\t{new}\n" for old, new in mapping.items()))
    out = work_dir / f"{label}.renamed.vcf.gz"
    tmp = temp_path(out)  # unique: nothing a concurrent or killed writer leaves can be taken for the copy
    try:
        run_tool(bcftools.rename_chrs_argv(vcf, tmp, map_file), log=log, provenance_dir=provenance_dir)
        run_tool(bcftools.index_argv(tmp), log=log, provenance_dir=provenance_dir)
        tmp.replace(out)
        Path(f"{tmp}.tbi").replace(f"{out}.tbi")
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.tbi").unlink(missing_ok=True)
    return out


def harmonise_bed(bed: Path, reference_contigs: list[str], *, label: str, work_dir: Path, log: Log | None = None) -> Path:
    """Return `bed`, or a plain-text copy with contigs renamed to the reference's (unknown contigs dropped)."""
    mapping, missing = rename_plan(bed_contigs(bed), reference_contigs)
    if not mapping and not missing:
        return bed
    if log and mapping:
        log(f"{label} {Path(bed).name} names contigs differently from the reference; renaming {_describe(mapping)}")
    if log and missing:
        log(f"{label} {Path(bed).name}: ignoring regions on contigs absent from the reference: {', '.join(missing[:8])}")
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"{label}.renamed.bed"
    tmp = work_dir / f".{label}.renamed.bed.tmp"
    opener = gzip.open if str(bed).endswith(".gz") else open
    dropped = set(missing)
    with opener(bed, "rt") as src, open(tmp, "w") as dst:
        for line in src:
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            chrom, rest = line.split("\t", 1)
            if chrom not in dropped:
                dst.write(f"{mapping.get(chrom, chrom)}\t{rest}")
    tmp.replace(out)
    return out


def harmonise_inputs(
    truth_vcf: Path,
    query_vcf: Path,
    bed: Path | None,
    reference: Path,
    *,
    label: str,
    work_dir: Path,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> tuple[Path, Path, Path | None]:
    """Truth, query and (optional) region BED with contigs named as in `reference`, for tools that compare
    them as given (hap.py, truvari). `label` prefixes the work-file names (e.g. "sv" -> sv-truth)."""
    contigs = fasta_contigs(reference)
    prefix = f"{label}-" if label else ""
    kw = {"work_dir": work_dir, "log": log, "provenance_dir": provenance_dir}
    truth_vcf = harmonise_vcf(truth_vcf, contigs, label=f"{prefix}truth", **kw)
    query_vcf = harmonise_vcf(query_vcf, contigs, label=f"{prefix}query", **kw)
    if bed is not None:
        bed = harmonise_bed(bed, contigs, label=f"{prefix}confident", work_dir=work_dir, log=log)
    return truth_vcf, query_vcf, bed
