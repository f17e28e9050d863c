"""An `s3://` out_dir for RNA-seq: the species tree lives on S3; a local scratch copy of it does the work.

A fresh machine (an ECS task with an empty disk) resumes exactly, because what the flow needs to know is on S3:

    <out>/<species>/quant/<run>/{abundance.tsv,run_info.json,provenance.jsonl,tools.log,...}   as a local run
    <out>/<species>/quant/<run>/.genoflows-done.json   the run's manifest (every file's size and sha256),
                                                       written LAST and only if absent (If-None-Match: *)
    <out>/<species>/{merged/<species>_{est_counts,tpm}.tsv, metadata.tsv, failed.tsv}   rewritten each flow run
    <index cache>/<kallisto index key>/{transcripts.idx,index.log}, index.json (size, sha256, k, targets; last)

A run is finished on S3 if and only if its manifest exists; a finished run is never uploaded again (so never
overwritten), its files are the manifest's. At the start of a flow run, the finished runs' tables
(abundance.tsv, run_info.json: what the merge reads) and failed.tsv come down into the scratch tree, each
verified by `genoflows.fetch.fetch` against the manifest's size and sha256 and by its content; the stream then
skips those runs exactly as it skips complete local runs. Each run's outputs go up as soon as it is quantified
(the data files with Content-MD5, which S3 checks, then the manifest), so a killed task loses only the runs in
flight. The merged tables, metadata.tsv and failed.tsv go up at the end.

The kallisto index cache is keyed like the local one (FASTA sha256 + k + kallisto version): a fresh machine
fetches the index instead of building it, verified by size, sha256 and its header (kallisto's index version, k
and the number of targets of the FASTA); an entry that fails is rebuilt and replaced.

One flow run at a time per S3 species tree: the ECS deployment has `concurrency_limit: 1` (the local file
lock only covers one machine). Plain functions taking a boto3 client; the Prefect tasks (retries) are in
tasks/rnaseq.py.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from genoflows.fetch import (
    ChecksumMismatch,
    ContentMismatch,
    PermanentFetchError,
    fetch,
    split_s3_uri,
)
from genoflows.files import safe_name, temp_path
from genoflows.remote import (  # noqa: F401 - MANIFEST, join, read_json, RemoteStateError: this module's API too
    MANIFEST,
    RemoteStateError,
    StateUnwritable,
    is_missing,
    is_remote,
    join,
    put_file,
    put_json,
    read_json,
)
from genoflows.rnaseq.stages import SpeciesDirs

#: What the merge needs of a finished run; the rest (logs, provenance) stays on S3 only.
RESTORED = ("abundance.tsv", "run_info.json")
SPECIES_FILES = ("metadata.tsv", "failed.tsv")
INDEX_FILES = ("transcripts.idx", "index.log")
RECORDS_PATHS = ("run_info.json", "provenance.jsonl", "tools.log")
INDEX_MANIFEST = "index.json"
RESTORE_THREADS = 16
KALLISTO_INDEX_VERSION = 10  # kallisto 0.46-0.48 write this as the index file's first 8 bytes


def scratch_root(out_uri: str, data_dir: Path) -> Path:
    """The local working copy of an s3:// out_dir: `<data_dir>/rnaseq-scratch/<hash of the URI>`."""
    return Path(data_dir) / "rnaseq-scratch" / hashlib.sha256(out_uri.rstrip("/").encode()).hexdigest()[:16]


def default_index_cache(out_uri: str) -> str:
    return join(out_uri, "kallisto-index-cache")


def _replace_in_file(path: Path, old: str, new: str) -> None:
    """Rewrite a small text file with `old` replaced, atomically (absent files are fine)."""
    if not path.is_file():
        return
    text = path.read_text(errors="surrogateescape")
    if old in text:
        tmp = temp_path(path)
        tmp.write_text(text.replace(old, new), errors="surrogateescape")
        tmp.replace(path)


@dataclass(frozen=True)
class RemoteSpecies:
    """One species' tree on S3 (`uri`) and its local scratch copy (`dirs`)."""

    uri: str  # s3://bucket/prefix/<Genus_species>
    dirs: SpeciesDirs
    client: object

    @classmethod
    def open(cls, out_uri: str, species_dir: str, data_dir: Path, client) -> RemoteSpecies:
        split_s3_uri(out_uri)  # a clear error for s3:// without a bucket
        return cls(join(out_uri, species_dir), SpeciesDirs(scratch_root(out_uri, data_dir) / species_dir), client)

    def run_uri(self, run: str, name: str = "") -> str:
        return join(self.uri, "quant", safe_name(run, "run accession"), *([name] if name else []))

    def finished(self) -> set[str]:
        """Runs whose manifest is on S3 (one listing of quant/)."""
        bucket, prefix = split_s3_uri(join(self.uri, "quant") + "/")
        runs = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                run, _, name = obj["Key"][len(prefix):].partition("/")
                if name == MANIFEST:
                    runs.add(run)
        return runs

    def restore(self, runs: Iterable[str]) -> tuple[list[str], list[str]]:
        """Bring the finished `runs`' tables and failed.tsv into the scratch tree (verified); upload local
        complete runs S3 does not have yet (a flow run killed between quant and upload, same scratch).
        Returns (restored runs, uploaded runs)."""
        runs, on_s3 = list(runs), self.finished()
        restored = [r for r in runs if r in on_s3 and not self.dirs.is_complete(r)]
        with ThreadPoolExecutor(RESTORE_THREADS) as pool:  # hundreds of small tables: many requests in flight
            list(pool.map(self._restore_run, restored))
        uploaded = [r for r in runs if r not in on_s3 and self.dirs.is_complete(r) and self.upload_run(r)]
        failed = self.dirs.root / "failed.tsv"
        fetch_optional(self.client, join(self.uri, "failed.tsv"), failed)
        return restored, uploaded

    def _restore_run(self, run: str) -> None:
        manifest = read_json(self.client, self.run_uri(run, MANIFEST)) or {}
        files = manifest.get("files") or {}
        missing = [n for n in RESTORED if n not in files]
        if missing:
            raise RemoteStateError(f"{self.run_uri(run, MANIFEST)} lists no {missing}: delete "
                                   f"{self.run_uri(run)}/ so the run is quantified again")  # fmt: skip
        self.dirs.quant.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{run}-restore-", dir=self.dirs.quant))
        from genoflows.fetch import FetchError
        from genoflows.tools.kallisto import QuantCheckError, parse_run_info, read_abundance

        todo = f"if it was changed on purpose, delete {self.run_uri(run)}/ and the run is quantified again"
        try:
            try:
                for name in RESTORED:
                    meta = files[name]
                    fetch(self.run_uri(run, name), tmp / name, sha256=meta["sha256"], size=int(meta["size"]),
                          kind="text", s3_client=self.client)  # fmt: skip
                parse_run_info(tmp / "run_info.json")  # what the merge will read must parse
                if not read_abundance(tmp / "abundance.tsv"):
                    raise QuantCheckError(f"{self.run_uri(run, 'abundance.tsv')} is empty")
            except FetchError as exc:  # same kind (a transfer problem is retried), saying what to do
                raise type(exc)(f"finished run {run} on S3 fails its check: {exc}; {todo}") from exc
            except QuantCheckError as exc:
                raise RemoteStateError(f"finished run {run} on S3 fails its check: {exc}; {todo}") from exc
            for extra in tmp.iterdir():  # fetch's lock and verification records: not part of the result
                if extra.name not in RESTORED:
                    extra.unlink()
            tmp.chmod(0o755)
            final = self.dirs.quant_dir(run)
            if final.exists():
                shutil.rmtree(final)
            tmp.replace(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def upload_run(self, run: str) -> bool:
        """Upload a complete local run, manifest last. False (nothing written) when S3 already has it finished."""
        manifest_uri = self.run_uri(run, MANIFEST)
        if read_json(self.client, manifest_uri) is not None:
            return False
        local = self.dirs.quant_dir(run)
        for name in RECORDS_PATHS:  # they name where the result lives: S3, not the scratch copy that goes away
            _replace_in_file(local / name, str(self.dirs.root), self.uri)
        files = {}
        for path in sorted(p for p in local.iterdir() if p.is_file() and not p.name.startswith(".")):
            files[path.name] = put_file(self.client, path, self.run_uri(run, path.name))
        if not {"abundance.tsv", "run_info.json"} <= files.keys():
            raise RemoteStateError(f"{local} is not a complete run (abundance.tsv and run_info.json)")
        return put_json(self.client, manifest_uri, {"run": run, "files": files}, only_new=True)

    def upload_outputs(self, merged: Iterable[Path]) -> list[str]:
        """The species' merged tables, metadata.tsv and failed.tsv (deleted on S3 when there is none locally)."""
        uris = []
        for path in [*merged, *(self.dirs.root / n for n in SPECIES_FILES)]:
            rel = path.relative_to(self.dirs.root).as_posix()
            if path.is_file():
                put_file(self.client, path, join(self.uri, rel))
                uris.append(join(self.uri, rel))
            elif path.name == "failed.tsv":
                bucket, key = split_s3_uri(join(self.uri, rel))
                self.client.delete_object(Bucket=bucket, Key=key)
        return uris


def fetch_optional(client, uri: str, dest: Path) -> bool:
    """Fetch `uri` (verified by size and content) when it exists; False when it does not."""
    bucket, key = split_s3_uri(uri)
    try:
        size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except Exception as exc:
        if is_missing(exc):
            dest.unlink(missing_ok=True)
            return False
        raise
    fetch(uri, dest, size=size, s3_client=client)
    return True


# --- the kallisto index cache ----------------------------------------------------------------------------------


def check_index_header(path: Path, *, k: int, n_targets: int) -> None:
    """A kallisto 0.46-0.48 index starts with its format version (uint64), k and the number of targets (int32)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 16:
        raise RemoteStateError(f"{path}: {len(head)} bytes is not a kallisto index")
    version, kk, n = struct.unpack("<QiI", head)
    if (version, kk, n) != (KALLISTO_INDEX_VERSION, k, n_targets):
        raise RemoteStateError(f"{path}: kallisto index header says version {version}, k={kk}, {n} targets; "
                               f"expected version {KALLISTO_INDEX_VERSION}, k={k}, {n_targets} targets")  # fmt: skip


def restore_index(client, cache_uri: str, key: str, local_dir: Path, *, k: int, n_targets: int) -> str | None:
    """Fetch a cached index into `local_dir` (verified by size, sha256 and header). Returns None when the cache
    has no entry, else a problem text when the entry fails its checks (the caller rebuilds and replaces it),
    else "" (restored)."""
    entry = join(cache_uri, safe_name(key, "index key"))
    manifest = read_json(client, join(entry, INDEX_MANIFEST))
    if manifest is None:
        return None
    files = manifest.get("files") or {}
    if "transcripts.idx" not in files:
        return f"{entry}/{INDEX_MANIFEST} lists no transcripts.idx"
    local_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".restore-", dir=local_dir))
    try:
        for name, meta in files.items():
            if name not in INDEX_FILES:
                continue
            fetch(join(entry, name), tmp / name, sha256=meta["sha256"], size=int(meta["size"]), kind="data",
                  s3_client=client)  # fmt: skip
        check_index_header(tmp / "transcripts.idx", k=k, n_targets=n_targets)
    except (PermanentFetchError, ChecksumMismatch, ContentMismatch, KeyError, ValueError) as exc:  # a bad entry
        return f"{entry}: {exc}"  # is rebuilt and replaced; a network failure (TransientFetchError) is retried
    else:
        if (tmp / "index.log").is_file():
            (tmp / "index.log").replace(local_dir / "index.log")
        (tmp / "transcripts.idx").replace(local_dir / "transcripts.idx")  # the index last: its presence = done
        return ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def store_index(client, cache_uri: str, key: str, local_dir: Path, *, k: int, n_targets: int) -> str:
    """Upload a built index (and its build log), then its manifest; returns the entry's URI."""
    entry = join(cache_uri, safe_name(key, "index key"))
    files = {name: put_file(client, local_dir / name, join(entry, name))
             for name in INDEX_FILES if (local_dir / name).is_file()}  # fmt: skip
    put_json(client, join(entry, INDEX_MANIFEST), {"key": key, "k": k, "n_targets": n_targets, "files": files},
              only_new=False)  # fmt: skip
    return entry
