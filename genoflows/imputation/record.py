"""The submit-once record: a JSON file in out_dir written before the submit call and updated atomically.

The submission key is the sha256 of the inputs' checksums, the parameters and the server; it goes into the
remote job's name, so a crash between the submit call and the record of the returned id can be repaired by
finding the job on the server by name. A rerun reads this record and resumes; only `resubmit` submits again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

RECORD_NAME = "imputation-job.json"
KEY_PREFIX = "gf-"


def submission_key(input_checksums: dict[str, str], params: dict, server: str) -> str:
    """sha256 over sorted (input name, sha256) pairs, the parameters and the server identity (URL + app)."""
    doc = {"inputs": sorted(input_checksums.items()), "params": params, "server": server}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def job_name_for(key: str, attempt: int = 0) -> str:
    """The remote job name carrying the key (first 20 hex chars; `-r<N>` for a deliberate resubmission)."""
    return f"{KEY_PREFIX}{key[:20]}" + (f"-r{attempt}" if attempt else "")


@dataclass
class JobRecord:
    """What this machine knows about one remote job; `job_id` None means 'submit call may be in flight'."""

    key: str
    job_name: str
    service: str
    server: str
    params: dict
    inputs: dict[str, str]
    attempt: int = 0
    job_id: str | None = None
    state: str | None = None
    submitted_at: str | None = None
    history: list[dict] = field(default_factory=list)
    downloads: dict[str, dict] = field(default_factory=dict)  # name -> {bytes, sha256, gets}
    application: str = ""  # the server's "<app name> <version>" (tool versions in the manifest)
    resubmitted_by: str = ""  # flow run that made the last deliberate resubmission
    runs: dict[str, str] = field(default_factory=dict)  # WES: chromosome -> run id (one run per chromosome)
    slot_lease: str | None = None  # Prefect lease of the account slot held while the job is active

    def note_state(self, state: str, detail: str = "") -> None:
        if not self.history or self.history[-1]["state"] != state:
            self.history.append({"state": state, "at": _now(), "detail": detail})
        self.state = state


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_path(out_dir: Path) -> Path:
    return Path(out_dir) / RECORD_NAME


def save_record(out_dir: Path, record: JobRecord) -> None:
    """Write atomically (temp file, fsync, rename) so a kill never leaves half a record."""
    path = record_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{RECORD_NAME}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(record), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_record(out_dir: Path) -> JobRecord | None:
    path = record_path(out_dir)
    if not path.exists():
        return None
    return JobRecord(**json.loads(path.read_text()))
