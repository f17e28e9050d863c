"""Where the GIAB truth sets and reference genomes live, relative to the configured mirror.

Layout of GIAB's `release/` tree (docs/giab-benchmarking.md), under `settings.giab_base_url` (NCBI, the s3://giab
mirror, a lab mirror or the test server):

- small variants v4.2.1, HG001-HG007, GRCh37/GRCh38:
  `<sample dir>/NISTv4.2.1/<build>/<HG>_<build>_1_22_v4.2.1_benchmark.vcf.gz` (+ `.tbi`) and the BED
  `..._benchmark_noinconsistent.bed` for HG002-HG004, `..._benchmark.bed` for the others;
- structural variants, HG002 only: Tier1 v0.6 (GRCh37 only, genome-wide):
  `HG002_NA24385_son/NIST_SV_v0.6/HG002_SVs_Tier1_v0.6.vcf.gz` (+ `.tbi`, `HG002_SVs_Tier1_v0.6.bed`), and CMRG v1.00
  (GRCh37 and GRCh38; 273 challenging medically relevant genes only):
  `HG002_NA24385_son/CMRG_v1.00/<build>/StructuralVariant/HG002_<build>_CMRG_SV_v1.00.vcf.gz` (+ `.tbi`, `.bed`).
  By default GRCh37 uses Tier1 v0.6 and GRCh38 uses CMRG v1.00 (the only GIAB SV benchmark released on GRCh38);
- reference FASTA per build: `settings.reference_fasta_urls`.

Checksums: NCBI publishes md5 files inconsistently, so each file carries a list of places an
md5 may be found; `checksum_sources` documents the names tried, in order, and for files of the release tree the
release's `current.tree` manifest comes last (`tree_sources`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

from genoflows.giab.checksums import TREE_NAME
from genoflows.giab.samples import genome, known_samples

BUILDS = ("GRCh38", "GRCh37")
NOINCONSISTENT = {"HG002", "HG003", "HG004"}
# Per-directory md5 listings seen on the GIAB FTP or common elsewhere; `<file>.md5` is tried first.
DIRECTORY_MD5_NAMES = ("md5sum", "md5sums.txt", "md5checksums.txt", "MD5SUMS")


class NoTruthSet(ValueError):
    """GIAB publishes no benchmark for this genome/build/variant type."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to bring into the reference cache: its URL, its cache path, where its md5 may be published."""

    url: str
    relpath: str
    md5_sources: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return PurePosixPath(self.relpath).name


@dataclass(frozen=True)
class TruthFiles:
    """A benchmark: variants, their index and the confident regions; `label` says which release."""

    label: str
    vcf: RemoteFile
    tbi: RemoteFile
    bed: RemoteFile | None


def checksum_sources(url: str, extra_names: tuple[str, ...] = ()) -> tuple[str, ...]:
    """URLs that may carry the md5 of `url`: `<url>.md5`, then the directory listings, in this order."""
    parent = url.rsplit("/", 1)[0]
    names = (*DIRECTORY_MD5_NAMES, *extra_names)
    return (f"{url}.md5", *(f"{parent}/{n}" for n in names))


def tree_sources(base_url: str) -> tuple[str, ...]:
    """Where a GIAB-layout mirror may publish `current.tree` (every file with its md5): at the top of the FTP,
    the directory holding `release/` (GIAB's own layout), then inside the release tree itself (a mirror of
    `release/` alone)."""
    base = base_url.rstrip("/")
    path = urlparse(base).path.rstrip("/")
    top = [f"{base.rsplit('/', 1)[0]}/{TREE_NAME}"] if path and path != "/" else []
    return (*top, f"{base}/{TREE_NAME}")


def _giab_file(base_url: str, relpath: str, extra_md5: tuple[str, ...] = ()) -> RemoteFile:
    url = f"{base_url.rstrip('/')}/{relpath}"
    return RemoteFile(url=url, relpath=f"giab/{relpath}",
                      md5_sources=(*checksum_sources(url, extra_md5), *tree_sources(base_url)))


def _check_build(build: str) -> None:
    if build not in BUILDS:
        raise NoTruthSet(f"unknown genome build {build!r}: choose one of {', '.join(BUILDS)}")


def small_truth(hg: str, build: str, base_url: str) -> TruthFiles:
    """The v4.2.1 small-variant benchmark of `hg` on `build` (chr1-22)."""
    _check_build(build)
    try:
        g = genome(hg)
    except KeyError:
        raise NoTruthSet(f"{hg!r} is not a GIAB genome; known: {known_samples()}") from None
    stem = f"{g.hg}_{build}_1_22_v4.2.1_benchmark"
    folder = f"{g.release_dir}/NISTv4.2.1/{build}"
    bed = f"{stem}_noinconsistent.bed" if g.hg in NOINCONSISTENT else f"{stem}.bed"
    extra = (f"{g.hg}_benchmark.md5",)  # seen next to HG005-7 v4.2.1 files in one tutorial
    return TruthFiles(
        label=f"GIAB {g.hg} NISTv4.2.1 {build} small variants",
        vcf=_giab_file(base_url, f"{folder}/{stem}.vcf.gz", extra),
        tbi=_giab_file(base_url, f"{folder}/{stem}.vcf.gz.tbi", extra),
        bed=_giab_file(base_url, f"{folder}/{bed}", extra),
    )


SV_BENCHMARKS = ("Tier1_v0.6", "CMRG_v1.00")
DEFAULT_SV_BENCHMARK = {"GRCh37": "Tier1_v0.6", "GRCh38": "CMRG_v1.00"}


def sv_truth(hg: str, build: str, base_url: str, benchmark: str | None = None) -> TruthFiles:
    """An HG002 SV benchmark: Tier1 v0.6 (GRCh37 only) or CMRG v1.00 (GRCh37, GRCh38); by default the one for
    `build` (DEFAULT_SV_BENCHMARK). GIAB publishes no SV benchmark for the other genomes."""
    _check_build(build)
    benchmark = benchmark or DEFAULT_SV_BENCHMARK[build]
    if benchmark not in SV_BENCHMARKS:
        raise NoTruthSet(f"unknown SV benchmark {benchmark!r}: choose one of {', '.join(SV_BENCHMARKS)}")
    if hg.upper() != "HG002" or (benchmark == "Tier1_v0.6" and build != "GRCh37"):
        raise NoTruthSet(
            f"GIAB publishes SV benchmarks for HG002 only (Tier1 v0.6 on GRCh37, CMRG v1.00 on GRCh37 and GRCh38), "
            f"not {benchmark} for {hg} on {build}: drop 'sv' from variant_types, or pass `truth` with your own SV "
            f"truth VCF and BED"
        )
    home = genome("HG002").release_dir
    if benchmark == "Tier1_v0.6":
        folder, stem = f"{home}/NIST_SV_v0.6", "HG002_SVs_Tier1_v0.6"
        label = "GIAB HG002 NIST_SV_v0.6 Tier1 GRCh37 structural variants"
    else:
        folder, stem = f"{home}/CMRG_v1.00/{build}/StructuralVariant", f"HG002_{build}_CMRG_SV_v1.00"
        label = f"GIAB HG002 CMRG v1.00 {build} structural variants (challenging medically relevant genes)"
    return TruthFiles(
        label=label,
        vcf=_giab_file(base_url, f"{folder}/{stem}.vcf.gz"),
        tbi=_giab_file(base_url, f"{folder}/{stem}.vcf.gz.tbi"),
        bed=_giab_file(base_url, f"{folder}/{stem}.bed"),
    )


def _custom_relpath(uri: str) -> str:
    """Cache path for a user-supplied URI: a short hash of the URI keeps same-named files apart."""
    digest = hashlib.sha1(uri.encode()).hexdigest()[:10]
    name = PurePosixPath(urlparse(uri).path).name or "file"
    return f"custom/{digest}/{name}"


def custom_truth(vcf: str, bed: str | None, tbi: str | None = None) -> TruthFiles:
    """A user-supplied truth set (non-GIAB samples); its index defaults to `<vcf>.tbi`."""
    tbi = tbi or f"{vcf}.tbi"
    vcf_rel = _custom_relpath(vcf)
    return TruthFiles(
        label=f"custom truth {vcf}",
        vcf=RemoteFile(vcf, vcf_rel, (f"{vcf}.md5",)),
        tbi=RemoteFile(tbi, f"{vcf_rel}.tbi", (f"{tbi}.md5",)),
        bed=RemoteFile(bed, _custom_relpath(bed), (f"{bed}.md5",)) if bed else None,
    )


def reference_fasta(build: str, fasta_urls: dict[str, str]) -> RemoteFile:
    """The reference FASTA for `build` as configured in settings.reference_fasta_urls."""
    _check_build(build)
    if build not in fasta_urls:
        raise NoTruthSet(
            f"no reference FASTA URL configured for {build}: set GENOFLOWS_REFERENCE_FASTA_URLS "
            f"(configured: {', '.join(fasta_urls) or 'none'})"
        )
    url = fasta_urls[build]
    name = PurePosixPath(urlparse(url).path).name
    return RemoteFile(url=url, relpath=f"references/{build}/{name}", md5_sources=checksum_sources(url))
