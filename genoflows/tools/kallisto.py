"""kallisto: command lines, the cached index, and parsers for its outputs (0.48 tested; no abundance.h5).

kallisto 0.48 accepts a FASTA without a single sequence, truncated .gz input and paired files of unequal
length with exit code 0, so the checks that catch those live here (`check_fasta`, `check_quant`).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock

from genoflows.fetch import file_digest
from genoflows.toolrun import TOOL_LOG, record_provenance, run_tool, tool_version

TOOL = "kallisto"
ABUNDANCE_COLUMNS = ["target_id", "length", "eff_length", "est_counts", "tpm"]


class QuantCheckError(RuntimeError):
    """kallisto finished but its output is not trustworthy (empty, wrong targets, reads missing)."""


class TranscriptomeError(ValueError):
    """The transcriptome FASTA is unreadable or has no usable sequences."""


@dataclass(frozen=True)
class RunInfo:
    """The parts of run_info.json that matter downstream."""

    n_targets: int
    n_processed: int
    n_pseudoaligned: int
    p_pseudoaligned: float
    kallisto_version: str
    index_version: int | None
    index: str | None = None  # the -i argument of the call, for checking runs share one index


def single_end_fragment(nominal_length: int | None, sd: float | None = None) -> tuple[float, float]:
    """amalgkit's rule for `-l/-s`: nominal_length if >= 200 else 200; sd = length / 10 unless given."""
    length = float(nominal_length) if nominal_length and nominal_length >= 200 else 200.0
    return length, float(sd) if sd else length / 10


def index_argv(fasta: Path, index: Path, k: int = 31) -> list[str]:
    return [TOOL, "index", "-i", str(index), "-k", str(k), str(fasta)]


def quant_argv(
    index: Path,
    out_dir: Path,
    fastqs: Sequence[Path],
    layout: Literal["paired", "single"],
    *,
    threads: int = 1,
    fragment: tuple[float, float] | None = None,
) -> list[str]:
    """`kallisto quant` for a paired (2 files) or single-end (1 file, needs -l/-s) run."""
    argv = [TOOL, "quant", "-i", str(index), "-o", str(out_dir), "-t", str(threads)]
    if layout == "paired":
        if len(fastqs) != 2:
            raise ValueError(f"paired quant needs 2 FASTQ files, got {len(fastqs)}")
    else:
        if len(fastqs) != 1:
            raise ValueError(f"single-end quant needs 1 FASTQ file, got {len(fastqs)}")
        length, sd = fragment or single_end_fragment(None)
        argv += ["--single", "-l", f"{length:g}", "-s", f"{sd:g}"]
    return argv + [str(f) for f in fastqs]


def _open_text(path: Path):
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", errors="replace") if gz else open(path, errors="replace")  # noqa: SIM115


def check_fasta(path: Path) -> list[str]:
    """Target names of a (gzipped) FASTA; TranscriptomeError when it is not a usable transcriptome."""
    names: list[str] = []
    seqlen = 0
    try:
        with _open_text(path) as fh:
            for n, line in enumerate(fh, start=1):
                if line.startswith(">"):
                    if names and seqlen == 0:
                        raise TranscriptomeError(f"{path}: sequence {names[-1]!r} is empty (line {n})")
                    names.append(line[1:].split()[0] if line[1:].split() else "")
                    seqlen = 0
                elif line.strip():
                    if not names:
                        raise TranscriptomeError(f"{path}: not a FASTA file (line {n} comes before any '>' header)")
                    seqlen += len(line.strip())
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TranscriptomeError(f"{path}: cannot read the transcriptome FASTA: {exc}") from exc
    if not names or seqlen == 0:
        raise TranscriptomeError(f"{path}: no sequences found; point the flow at a transcript FASTA (.fa/.fa.gz)")
    if len(set(names)) != len(names):
        raise TranscriptomeError(f"{path}: duplicate transcript names; kallisto needs unique target ids")
    return names


def index_key(fasta: Path, version: str | None = None, k: int = 31) -> str:
    """Cache key: FASTA content hash + kallisto version (index formats change between versions) + k."""
    version = version or tool_version(TOOL)
    return f"{file_digest(fasta, 'sha256')[:20]}-k{k}-kallisto{version}"


def ensure_index(
    fasta: Path,
    cache_dir: Path,
    *,
    k: int = 31,
    log: Callable[[str], None] | None = None,
    provenance_dir: Path | None = None,
) -> tuple[Path, list[str]]:
    """Build the index once per (FASTA, kallisto version); concurrent builders wait on a lock, then reuse."""
    targets = check_fasta(fasta)
    key = index_key(fasta, k=k)
    dest_dir = Path(cache_dir) / "kallisto" / key
    index = dest_dir / "transcripts.idx"
    dest_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest_dir) + ".lock"):
        if not index.exists():
            for stale in dest_dir.glob(".build-*"):  # a builder killed mid-way (we hold the lock now)
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=dest_dir))
            try:
                # kallisto's full output: tools.log of the build directory, kept beside the index as index.log
                record = run_tool(index_argv(fasta, tmp / "transcripts.idx", k), log=log, provenance_dir=tmp)
                os.replace(tmp / TOOL_LOG, dest_dir / "index.log")
                if provenance_dir is not None:
                    record.log, record.log_offset = str(dest_dir / "index.log"), 0
                    record_provenance(Path(provenance_dir), record)
                if not (tmp / "transcripts.idx").stat().st_size:
                    raise TranscriptomeError(f"kallisto wrote an empty index for {fasta}")
                os.replace(tmp / "transcripts.idx", index)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return index, targets


def parse_run_info(path: Path) -> RunInfo:
    """Read kallisto's run_info.json."""
    try:
        d = json.loads(Path(path).read_text())
        return RunInfo(
            n_targets=int(d["n_targets"]),
            n_processed=int(d["n_processed"]),
            n_pseudoaligned=int(d["n_pseudoaligned"]),
            p_pseudoaligned=float(d["p_pseudoaligned"]),
            kallisto_version=str(d.get("kallisto_version", "")),
            index_version=d.get("index_version"),
            index=_index_arg(str(d.get("call", ""))),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QuantCheckError(f"{path}: unreadable kallisto run_info.json ({exc})") from exc


def _index_arg(call: str) -> str | None:
    parts = call.split()
    for flag in ("-i", "--index"):
        if flag in parts[:-1]:
            return parts[parts.index(flag) + 1]
    return None


def read_abundance(path: Path) -> dict[str, tuple[float, float]]:
    """target_id -> (est_counts, tpm), in file order; QuantCheckError on a malformed table."""
    out: dict[str, tuple[float, float]] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh, delimiter="\t")
            header = next(reader, None)
            if header != ABUNDANCE_COLUMNS:
                raise QuantCheckError(f"{path}: unexpected header {header}; expected {ABUNDANCE_COLUMNS}")
            for row in reader:
                out[row[0]] = (float(row[3]), float(row[4]))
    except (OSError, ValueError, IndexError) as exc:
        raise QuantCheckError(f"{path}: unreadable abundance table ({exc})") from exc
    return out


def check_quant(
    out_dir: Path, targets: Sequence[str], expected_fragments: int | None, files: Sequence[Path] = ()
) -> RunInfo:
    """Verify a quant dir: table with exactly the index's targets, run_info present, no reads lost."""
    info = parse_run_info(out_dir / "run_info.json")
    table = read_abundance(out_dir / "abundance.tsv")
    if not table:
        raise QuantCheckError(f"{out_dir}/abundance.tsv is empty")
    if list(table) != list(targets):
        missing = len(set(targets) - set(table))
        raise QuantCheckError(f"{out_dir}/abundance.tsv targets differ from the index ({missing} missing)")
    names = ", ".join(Path(f).name for f in files) or "the FASTQ"
    if info.n_processed == 0:
        raise QuantCheckError(f"kallisto processed 0 reads from {names}: empty or unreadable")
    if expected_fragments and info.n_processed < expected_fragments:
        raise QuantCheckError(
            f"kallisto processed {info.n_processed} of {expected_fragments} expected reads/pairs from {names}: "
            "a FASTQ is truncated or the mates differ in length"
        )
    return info
