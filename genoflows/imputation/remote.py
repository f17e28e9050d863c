"""Submit once, resume, wait, download and verify: the server-side pipeline as plain functions.

Everything a rerun needs is in the job record (record.py): a record without a job id means "the submit
call may have reached the server", so the job is looked up by its name before anything is submitted again.
Every download GET is counted in the record before it is made (the server allows 10 per file).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pysam

from genoflows.imputation.cloudgene import CloudgeneClient, failure_text
from genoflows.imputation.errors import (
    BadZipPassword,
    CorruptDownload,
    DownloadLimitExhausted,
    ResultsRetired,
    ServerJobFailed,
)
from genoflows.imputation.polling import Clock, PollSchedule, wait_until_terminal
from genoflows.imputation.record import JobRecord, job_name_for, save_record
from genoflows.imputation.states import Phase
from genoflows.imputation.unzip import safe_extract

# Test hook for the kill-between-submit-and-record test: the process exits right after the server answered.
EXIT_AFTER_SUBMIT_ENV = "GENOFLOWS_TEST_EXIT_AFTER_SUBMIT"


@dataclass
class Submitted:
    record: JobRecord
    submitted_now: bool  # False: an existing remote job was resumed


def ensure_submitted(
    client: CloudgeneClient,
    record: JobRecord,
    record_dir: Path,
    files: list[Path],
    params: dict[str, str],
    *,
    resubmit: bool = False,
    run_id: str = "",
) -> Submitted:
    """Return the record with a job id, submitting only when no remote job for this key exists.

    `resubmit` submits a new job once per flow run (`run_id`): a retry of the same run resumes it instead."""
    if resubmit and record.job_id is not None and (not run_id or record.resubmitted_by != run_id):
        record.attempt += 1
        record.job_id, record.state, record.downloads = None, None, {}
        record.job_name = job_name_for(record.key, record.attempt)
        record.resubmitted_by = run_id
        record.history.append({"state": "resubmit", "at": "", "detail": "resubmit=true"})
        save_record(record_dir, record)
    if record.job_id is not None:
        return Submitted(record, False)
    found = client.find_job_by_name(record.job_name)  # the crash-between-submit-and-record case
    if found is not None:
        record.job_id = found["id"]
        record.note_state(client.phase(found)[0], "found on the server by its name")
        save_record(record_dir, record)
        return Submitted(record, False)
    save_record(record_dir, record)  # the intent is on disk before the call
    job_id = client.submit(files, params, record.job_name)
    if os.environ.get(EXIT_AFTER_SUBMIT_ENV):
        os._exit(137)
    record.job_id = job_id
    record.note_state("submitted", job_id)
    save_record(record_dir, record)
    return Submitted(record, True)


def wait_for_job(
    client: CloudgeneClient,
    record: JobRecord,
    record_dir: Path,
    *,
    schedule: PollSchedule | None = None,
    clock: Clock | None = None,
    on_change: Callable[[str, Phase, dict], None] | None = None,
) -> dict:
    """Poll with backoff until the job ends; raise with the server's own text unless it succeeded."""
    last: dict = {}

    def status() -> tuple[str, Phase]:
        job = client.status(record.job_id)
        last.clear()
        last.update(job)
        name, phase = client.phase(job)
        return name, phase

    def changed(name: str, phase: Phase) -> None:
        detail = f"position in queue {last.get('positionInQueue')}" if phase is Phase.QUEUED else ""
        record.note_state(name, detail)
        save_record(record_dir, record)
        if on_change is not None:
            on_change(name, phase, last)

    wait_until_terminal(status, schedule=schedule, clock=clock, on_change=changed)
    raise_unless_success(client, record, last)
    record.application = str(last.get("application") or "")
    save_record(record_dir, record)
    return dict(last)


def raise_unless_success(client: CloudgeneClient, record: JobRecord, last: dict) -> None:
    """Raise the right error for a job that ended without success, with the server's own text."""
    name, phase = client.phase(last)
    if phase is Phase.SUCCESS:
        return
    if phase is Phase.RETIRED:
        raise ResultsRetired(
            f"job {record.job_id} on {client.host}: results were retired (state {last.get('state')}); the server "
            f"deletes them after 7 days. Resubmit with resubmit=true."
        )
    raise ServerJobFailed(f"job {record.job_id} on {client.host} {name}: {failure_text(last)}")


def finished_downloads(record: JobRecord, download_dir: Path) -> list[Path] | None:
    """The verified downloads of a job whose results were all fetched before (None if anything is missing):
    a rerun after success needs the server no more, even once it has retired the results."""
    if record.state != "downloaded" or not record.downloads:
        return None
    paths = []
    for name, entry in record.downloads.items():
        path = download_dir / name
        if not entry.get("sha256") or not path.exists() or sha256_of(path) != entry["sha256"]:
            return None
        paths.append(path)
    return paths


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_cached(path: Path) -> str:
    """sha256_of, remembered in this process per (path, size, mtime): an output hashed by the task that wrote
    it (in parallel with other chromosomes) is not read again, serially, by the manifest at the end."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_of(Path(path))
    return _DIGESTS[key]


def check_zip(path: Path, password: str | None) -> None:
    """Every entry's CRC is checked (this reads the whole zip): catches truncation, corruption, bad password."""
    try:
        from genoflows.imputation.unzip import _open_zip

        with _open_zip(path, aes=False) as zf:
            if password is not None:
                zf.setpassword(password.encode())
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
        raise CorruptDownload(f"{path.name}: not a readable zip ({exc})") from None
    except RuntimeError as exc:
        if "password" in str(exc).lower() or "encrypted" in str(exc).lower():
            raise BadZipPassword(
                f"{path.name}: the results password does not open it; check the Secret block holding the "
                f"password this job was submitted with."
            ) from None
        raise CorruptDownload(f"{path.name}: {exc}") from None
    if bad is not None:
        raise CorruptDownload(f"{path.name}: entry {bad} fails its CRC check")


def download_results(
    client: CloudgeneClient,
    job: dict,
    record: JobRecord,
    record_dir: Path,
    download_dir: Path,
    password: str | None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Download every listed file not already verified; a file that fails its check raises CorruptDownload
    (transient: the caller's retry downloads it again while the server still allows it)."""
    paths = []
    for remote in client.output_files(job):
        dest = download_dir / remote.safe_name
        done = record.downloads.get(remote.name, {})
        if done.get("sha256") and dest.exists() and sha256_of(dest) == done["sha256"]:
            paths.append(dest)
            continue
        if remote.downloads_left == 0:
            raise DownloadLimitExhausted(
                f"{remote.name}: no downloads left on the server (10 per file, {done.get('gets', 0)} made by "
                f"this pipeline); ask the server's operators to reset the limit, or resubmit with resubmit=true."
            )

        def count_get(name: str = remote.name) -> None:
            entry = record.downloads.setdefault(name, {"gets": 0})
            entry["gets"] = entry.get("gets", 0) + 1
            save_record(record_dir, record)

        left_after = remote.downloads_left - 1 if remote.downloads_left > 0 else -1
        try:
            n = client.download(remote, dest, on_get=count_get)
            if dest.suffix == ".zip":
                check_zip(dest, password)
        except CorruptDownload as exc:
            dest.unlink(missing_ok=True)
            raise CorruptDownload(f"{exc}; {left_after} downloads of it left on the server") from None
        record.downloads[remote.name].update(bytes=n, sha256=sha256_of(dest))
        save_record(record_dir, record)
        log(f"downloaded {remote.name} ({n} bytes); {left_after} downloads of it left on the server")
        paths.append(dest)
    record.note_state("downloaded", f"{len(paths)} files verified")
    save_record(record_dir, record)
    return paths


def unpack_and_verify(zips: list[Path], dest: Path, password: str | None, *, aes: bool = False) -> list[Path]:
    """Unpack each zip into `dest`, tabix-index every dose VCF and open it (header + first record)."""
    files: list[Path] = []
    for z in zips:
        files += safe_extract(z, dest, password, aes=aes)
    for f in list(files):
        if f.name.endswith(".dose.vcf.gz") or f.name.endswith(".empiricalDose.vcf.gz"):
            files.append(verify_vcf(f))
    return files


def verify_vcf(path: Path) -> Path:
    """Index a bgzipped VCF and read its header and first record; returns the index path."""
    try:
        pysam.tabix_index(str(path), preset="vcf", force=True, keep_original=True)
        with pysam.VariantFile(str(path)) as vf:
            if not list(vf.header.samples):
                raise CorruptDownload(f"{path.name}: a dose VCF without samples")
            next(iter(vf), None)
    except (OSError, ValueError) as exc:
        raise CorruptDownload(f"{path.name}: not a readable bgzipped VCF ({exc})") from None
    return Path(str(path) + ".tbi")
