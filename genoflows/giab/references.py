"""Bring truth sets and the reference genome into the reference cache, verified and indexed.

The download itself is injected (`Fetcher`): the Prefect task passes `tasks.fetch.fetch_file` (retries, progress),
tests and scripts can pass `genoflows.fetch.fetch`. What lives here is the policy around it:
- a file already in the cache is used as it is (no network), after a size check against its pinned entry;
- otherwise a published md5 is looked up (`catalogue.checksum_sources`, first hit wins), the sha256 pinned by
  an earlier download is reused, and the download is verified against both;
- a fresh download is pinned (sha256 + size) in `<reference_dir>/giab-manifest.json`;
- a missing .tbi is built locally; a gzipped FASTA is decompressed once and faidx-indexed.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pysam
from filelock import FileLock

from genoflows.fetch import FetchResult, PermanentFetchError, TransientFetchError, fetch, file_digest
from genoflows.giab.catalogue import RemoteFile, TruthFiles
from genoflows.giab.checksums import Manifest, md5_for
from genoflows.giab.query import build_tbi

Log = Callable[[str], None]
Fetcher = Callable[..., FetchResult]  # fetch(uri, dest, md5=, sha256=) -> FetchResult


class CacheMismatch(RuntimeError):
    """A cached file no longer matches what was pinned when it was downloaded."""


@dataclass
class LocalTruth:
    """A truth set in the local cache."""

    label: str
    vcf: Path
    bed: Path | None


@dataclass
class Brought:
    path: Path
    downloaded: bool
    checksum: str  # how it was verified: "md5 <source>", "sha256 pin", "pinned now", "cached"


def find_published_md5(remote: RemoteFile, *, log: Log | None = None, attempts: int = 3) -> tuple[str | None, str | None]:
    """(md5, where it was found) from the first checksum source that lists the file, else (None, None).

    Checksum files are optional: a 404 moves on to the next name; a transient error is retried a few times
    and then skipped (the download is still pinned by sha256).
    """
    memo: dict[str, str | None] = {}
    for url in remote.md5_sources:
        if url not in memo:
            memo[url] = _read_small(url, attempts=attempts, log=log)
        text = memo[url]
        if text and (md5 := md5_for(text, remote.name, url)):
            return md5, url
    return None, None


def _read_small(url: str, *, attempts: int, log: Log | None) -> str | None:
    with tempfile.TemporaryDirectory(prefix="genoflows-md5-") as tmp:
        dest = Path(tmp) / "checksums"
        for attempt in range(1, attempts + 1):
            try:
                fetch(url, dest)
                return dest.read_text(errors="replace")[:1_000_000]
            except PermanentFetchError:
                return None
            except TransientFetchError as exc:
                if attempt == attempts:
                    if log:
                        log(f"could not read checksum file {url} ({exc}); continuing without it")
                    return None
                time.sleep(0.5 * attempt)
    return None


def bring(remote: RemoteFile, root: Path, fetcher: Fetcher, *, log: Log | None = None) -> Brought:
    """Make `root/remote.relpath` present and verified; download only when it is not cached."""
    dest = Path(root) / remote.relpath
    manifest = Manifest(root)
    pin = manifest.get(remote.relpath)
    if dest.exists():
        size = dest.stat().st_size
        if pin is not None and size != pin.size:
            raise CacheMismatch(
                f"{dest} has {size} bytes but was {pin.size} bytes when first downloaded from {pin.url}: the cache "
                f"was changed by hand or damaged; delete it and run again to re-download"
            )
        if pin is None:
            manifest.pin(remote.relpath, url=remote.url, sha256=file_digest(dest, "sha256"), size=size, md5_source=None)
        return Brought(dest, False, "cached")
    md5, md5_source = find_published_md5(remote, log=log)
    result = fetcher(remote.url, dest, md5=md5, sha256=pin.sha256 if pin else None)
    how = f"md5 from {md5_source}" if md5 else ("sha256 pinned earlier" if pin else "no published checksum")
    if pin is None:
        manifest.pin(
            remote.relpath,
            url=remote.url,
            sha256=file_digest(result.path, "sha256"),
            size=result.path.stat().st_size,
            md5_source=md5_source,
        )
        how += "; sha256 pinned now"
    if log:
        log(f"{dest.name}: {'downloaded' if result.downloaded else 'cached'}, verified by {how}")
    return Brought(result.path, result.downloaded, how)


def bring_truth(
    truth: TruthFiles,
    root: Path,
    fetcher: Fetcher,
    *,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> tuple[LocalTruth, list[Brought]]:
    """Truth VCF, its index (built locally when the mirror has none) and the confident-region BED."""
    got = [bring(truth.vcf, root, fetcher, log=log)]
    vcf = got[0].path
    try:
        got.append(bring(truth.tbi, root, fetcher, log=log))
    except PermanentFetchError as exc:
        if log:
            log(f"no index for {vcf.name} on the mirror ({exc}); indexing it locally")
        with FileLock(str(vcf.parent / f".{vcf.name}.tbi.lock")):
            if not Path(f"{vcf}.tbi").exists():
                build_tbi(vcf, log=log, provenance_dir=provenance_dir)
    bed = None
    if truth.bed is not None:
        got.append(bring(truth.bed, root, fetcher, log=log))
        bed = got[-1].path
    return LocalTruth(truth.label, vcf, bed), got


def indexed_fasta(path: Path, *, log: Log | None = None) -> Path:
    """An uncompressed, faidx-indexed FASTA next to `path` (decompressed once when `path` is gzipped)."""
    path = Path(path)
    if not path.name.endswith(".gz"):
        target = path
    else:
        target = path.with_name(path.name.removesuffix(".gz"))
    fai = Path(f"{target}.fai")
    with FileLock(str(target.parent / f".{target.name}.prepare.lock")):
        if target.exists() and fai.exists():
            return target
        if target != path:
            if log:
                log(f"decompressing {path.name} (hap.py and bcftools norm need a plain or bgzipped+faidx FASTA)")
            tmp = target.with_name(f".{target.name}.tmp")
            with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            pysam.faidx(str(tmp))
            Path(f"{tmp}.fai").replace(fai)
            tmp.replace(target)
        else:
            pysam.faidx(str(target))
    return target


def fasta_ready(fasta_relpath: str, root: Path) -> Path | None:
    """The prepared FASTA if the cache already has it (so a run needs no network at all)."""
    path = Path(root) / fasta_relpath
    target = path.with_name(path.name.removesuffix(".gz"))
    return target if target.exists() and Path(f"{target}.fai").exists() else None
