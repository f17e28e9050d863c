"""Run directories: finished work is never overwritten.

Each benchmark of a sample writes `<out_dir>/<sample_id>/run-<key>/`, where the key is a hash of what decides the
result: the input files' versions (S3 ETag and LastModified, or size and mtime of a local file), the truth set and
reference, the engine, the build and the variant types. A run works in a hidden temporary directory next to it and
renames it into place when everything is written (`run.json` last), so a run directory either is complete or does
not exist. A rerun with the same key finds the finished directory and does nothing; a changed input gets a new
key and a new directory, and the old one stays byte-identical. A failed run removes its temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from genoflows.giab import catalogue
from genoflows.giab.source import LabInput
from genoflows.settings import get_settings

RUN_RECORD = "run.json"


def identity(
    sample_id: str, genome: str | None, build: str, variant_types: list[str], small_engine: str | None,
    inputs: dict[str, LabInput], truth_vcf: str | None = None, truth_bed: str | None = None,
) -> dict:
    """Everything a run's result depends on: same identity, same result (so a finished run can stand for it)."""
    s = get_settings()
    if truth_vcf is not None:
        truth: dict = {"custom": {"vcf": truth_vcf, "bed": truth_bed}}
    else:
        assert genome is not None
        sets = {"small": catalogue.small_truth, "sv": catalogue.sv_truth}
        truth = {k: sets[k](genome, build, s.giab_base_url).vcf.url for k in variant_types}
    return {
        "sample_id": sample_id, "build": build, "variant_types": sorted(variant_types), "small_engine": small_engine,
        "inputs": {k: {"uri": f.uri, "size": f.size, "version": f.version, "index": f.index_uri,
                       "index_version": f.index_version} for k, f in inputs.items()},
        "truth": truth, "reference": s.reference_fasta_urls.get(build),
    }


def run_key(identity: dict) -> str:
    """A short stable hash of `identity` (a JSON-able description of everything the result depends on)."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_dir(sample_dir: Path, key: str) -> Path:
    return Path(sample_dir) / f"run-{key}"


def finished(sample_dir: Path, key: str) -> Path | None:
    """The finished run directory for `key`, or None. Finished means renamed into place, so complete."""
    final = run_dir(sample_dir, key)
    return final if (final / RUN_RECORD).is_file() else None


def start(sample_dir: Path, key: str) -> Path:
    """A fresh temporary directory for a run of `key` (unique: two concurrent runs never share one)."""
    tmp = Path(sample_dir) / f".run-{key}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    return tmp


def finish(tmp: Path, sample_dir: Path, key: str, identity: dict) -> Path:
    """Write run.json into `tmp` and rename it to the run directory. When a concurrent run of the same key got
    there first, its directory stands (same inputs, same result) and this one is removed."""
    record = {"key": key, "finished": datetime.now(UTC).isoformat(timespec="seconds"), **identity}
    (tmp / RUN_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    final = run_dir(sample_dir, key)
    try:
        tmp.rename(final)
    except OSError:
        if finished(sample_dir, key) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def discard(tmp: Path) -> None:
    """Remove a failed run's temporary directory (finished runs are never touched)."""
    if tmp.name.endswith(".tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
