"""The three steps of one run, as plain functions: download (+verify), quantify (atomic), clean up.

The scheduler in `stream.py` calls these (through Prefect tasks in the flow); they know nothing about
concurrency. Layout on disk, per species:
  quant/<run>/{abundance.tsv,run_info.json}   complete runs only (renamed into place after checks)
  quant/.tmp-<run>-*                          a quantification in progress (removed at start)
  fastq/<run>/                                downloads in flight; empty at the end of a flow run
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genoflows import toolrun
from genoflows.fetch import fetch
from genoflows.files import atomic_output
from genoflows.rnaseq.metadata import Layout
from genoflows.rnaseq.sources import ResolvedRun
from genoflows.rnaseq.stream import FileLease, Stopped
from genoflows.toolrun import run_tool
from genoflows.tools import fasterq_dump, kallisto

Log = Callable[[str], None]
TOOL_LOG = toolrun.TOOL_LOG  # every tool call's full output (tools.log), kept beside abundance.tsv
FASTERQ_LOG = "fasterq-dump.log"  # fasterq-dump's, for runs converted from .sra


class TruncatedFastq(RuntimeError):
    """A FASTQ(.gz) ends mid-stream or mid-record, or paired files hold different read counts."""


@dataclass(frozen=True)
class SpeciesDirs:
    """Paths of one species' output tree."""

    root: Path

    @property
    def quant(self) -> Path:
        return self.root / "quant"

    @property
    def fastq(self) -> Path:
        return self.root / "fastq"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    def quant_dir(self, run: str) -> Path:
        return self.quant / run

    def is_complete(self, run: str) -> bool:
        d = self.quant_dir(run)
        return (d / "abundance.tsv").is_file() and (d / "run_info.json").is_file()

    def prepare(self) -> list[str]:
        """Create the tree and remove what an interrupted flow run left: FASTQs, partials, temp quant dirs."""
        removed = []
        for d in (self.quant, self.fastq):
            d.mkdir(parents=True, exist_ok=True)
        for p in list(self.fastq.iterdir()) + [p for p in self.quant.iterdir() if p.name.startswith(".tmp-")]:
            removed.append(str(p))
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        return removed


@dataclass(frozen=True)
class LocalRun:
    """A run whose FASTQs are on local disk and verified."""

    resolved: ResolvedRun
    layout: Layout
    files: tuple[Path, ...]
    expected_fragments: int | None
    downloaded_bytes: int
    seconds: float
    tool_logs: tuple[Path, ...] = ()  # e.g. fasterq-dump's output, kept beside the quantification

    @property
    def run(self) -> str:
        return self.resolved.run.run


@dataclass(frozen=True)
class QuantResult:
    run: str
    layout: Layout
    n_processed: int
    n_pseudoaligned: int
    p_pseudoaligned: float
    seconds: float
    source: str = ""
    notes: tuple[str, ...] = ()


def count_fastq_records(path: Path) -> int:
    """Read a FASTQ(.gz, any number of gzip members) to the end; TruncatedFastq when it is cut short."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    lines, tail = 0, b"\n"
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                lines += chunk.count(b"\n")
                tail = chunk[-1:]
    except EOFError as exc:  # gzip's word for a stream that stops before its end marker
        raise TruncatedFastq(f"{path.name}: gzip stream ends early (truncated download or file)") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:  # CRC error, garbage: as unusable as a cut file
        raise TruncatedFastq(f"{path.name}: corrupt gzip data ({exc}); the file must be downloaded again") from exc
    lines += 0 if tail == b"\n" else 1
    if lines % 4:
        raise TruncatedFastq(f"{path.name}: {lines} lines is not a whole number of FASTQ records")
    return lines // 4


def verify_fastqs(layout: Layout, files: tuple[Path, ...]) -> int:
    """Count records in every file; paired mates must agree. Used when no expected count is published."""
    counts = [count_fastq_records(f) for f in files]
    if layout == "paired" and counts[0] != counts[1]:
        raise TruncatedFastq(f"mates differ: {files[0].name} has {counts[0]} reads, {files[1].name} {counts[1]}")
    if counts[0] == 0:
        raise TruncatedFastq(f"{files[0].name} holds no reads")
    return counts[0]


def _check(stop: threading.Event | None, run: str) -> None:
    if stop is not None and stop.is_set():
        raise Stopped(f"{run}: download stopped, the flow run is stopping")


def _resumable_bytes(dest: Path) -> int:
    """Bytes a resumed fetch of `dest` will not transfer again: fetch resumes http(s) from `<dest>.part`."""
    part = dest.with_name(dest.name + ".part")
    return part.stat().st_size if part.exists() else 0


def download_file(
    res: ResolvedRun,
    i: int,
    fastq_root: Path,
    *,
    lease: FileLease | None = None,
    on_bytes: Callable[[int], None] | None = None,
    s3_client=None,
    stop: threading.Event | None = None,
) -> Path:
    """Fetch and verify file `i` of a run (one attempt; resumes a partial file). Within `lease.attempt()` the
    transfer holds a connection and its bytes; a failure frees the connection (and bytes when nothing is kept)."""
    f = res.files[i]
    run = res.run.run
    run_dir = fastq_root / run
    run_dir.mkdir(parents=True, exist_ok=True)
    dest = run_dir / f.name
    seen = [_resumable_bytes(dest)]  # already on disk from an earlier attempt: not downloaded now

    def progress(done: int, total: int | None) -> None:
        if lease is not None:
            lease.check()
        _check(stop, run)
        if done < seen[0]:  # the transfer started over (range ignored, or S3, which does not resume)
            seen[0] = 0
        if on_bytes and done > seen[0]:
            on_bytes(done - seen[0])
        seen[0] = max(seen[0], done)
        if lease is not None and total is not None and done >= total:
            lease.transferred()  # every byte is in: the connection goes to the next file while this one is verified

    with lease.attempt(kept=lambda: _resumable_bytes(dest)) if lease else contextlib.nullcontext():
        return fetch(f.uri, dest, md5=f.md5, size=f.size, progress=progress, s3_client=s3_client,
                     repeat_is_bad_source=True).path  # a run corrupt at the source fails after two transfers


def finish_download(
    res: ResolvedRun,
    paths: list[Path],
    *,
    threads: int = 2,
    log: Log | None = None,
    stop: threading.Event | None = None,
) -> LocalRun:
    """The downloaded files as quantifiable reads: an `.sra` converted by fasterq-dump, read counts checked."""
    t0 = time.monotonic()
    run = res.run.run
    expected = res.expected_fragments
    logs: tuple[Path, ...] = ()
    if res.needs_conversion:
        _check(stop, run)
        sra = paths[0]
        fasterq_dump.check_sra_magic(sra)
        out, tmp = sra.parent / "dump", sra.parent / "dump-tmp"
        shutil.rmtree(out, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
        tool_log = sra.parent / FASTERQ_LOG  # fasterq-dump's full output, joined to the run's results
        run_tool(fasterq_dump.dump_argv(sra, out, tmp, threads), log=log, provenance_dir=tmp, stop=stop)
        os.replace(tmp / TOOL_LOG, tool_log)
        logs = (tool_log,)
        shutil.rmtree(tmp, ignore_errors=True)
        sra.unlink()
        layout, files = fasterq_dump.collect_outputs(out, run)
        paths = files
    else:
        layout = res.layout or ("paired" if len(paths) == 2 else "single")
    if expected is None:
        expected = verify_fastqs(layout, tuple(paths))
    size = sum(f.size or 0 for f in res.files)
    return LocalRun(res, layout, tuple(paths), expected, size, round(time.monotonic() - t0, 3), logs)


def download_run(
    res: ResolvedRun,
    fastq_root: Path,
    *,
    threads: int = 2,
    log: Log | None = None,
    on_bytes: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> LocalRun:
    """A whole run, file after file, then `finish_download` (scripts, tests and the benchmark's batch scheme)."""
    paths = []
    for i in range(len(res.files)):
        _check(stop, res.run.run)
        paths.append(download_file(res, i, fastq_root, on_bytes=on_bytes, stop=stop))
    return finish_download(res, paths, threads=threads, log=log, stop=stop)


def quantify_run(
    local: LocalRun,
    index: Path,
    targets: list[str],
    dirs: SpeciesDirs,
    *,
    threads: int = 1,
    fragment: tuple[float, float] | None = None,
    log: Log | None = None,
    stop: threading.Event | None = None,
) -> QuantResult:
    """kallisto into a temp dir, check everything, then rename to quant/<run> (the done marker).
    Setting `stop` terminates kallisto; the temp dir is removed and nothing is marked done."""
    t0 = time.monotonic()
    run = local.run
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{run}-", dir=dirs.quant))
    final = dirs.quant_dir(run)
    try:
        if local.layout == "single" and fragment is None:
            nominal = local.resolved.run.nominal_length
            fragment = kallisto.single_end_fragment(nominal)
            if not nominal or nominal < 200:
                notes.append(f"single-end fragment length defaulted to -l {fragment[0]:g} -s {fragment[1]:g} "
                             f"(nominal_length {nominal or 'missing'}; amalgkit's rule); set fragment_length to override")  # fmt: skip
        argv = kallisto.quant_argv(index, tmp, local.files, local.layout, threads=threads, fragment=fragment)
        run_tool(argv, log=log, provenance_dir=tmp, stop=stop)  # full output -> tmp/tools.log, a summary -> log
        info = kallisto.check_quant(tmp, targets, local.expected_fragments, files=local.files)
        keep = {"abundance.tsv", "run_info.json", "provenance.jsonl", TOOL_LOG}
        for extra in tmp.iterdir():
            if extra.name not in keep:
                extra.unlink()
        for tool_log in local.tool_logs:  # the conversion's log joins kallisto's
            if tool_log.is_file():
                shutil.copyfile(tool_log, tmp / tool_log.name)
        for name in ("run_info.json", "provenance.jsonl", TOOL_LOG):  # record where the result lives, not the temp dir
            _replace_in_file(tmp / name, str(tmp), str(final))
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is not
        if final.exists():  # an older, incomplete or superseded result: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return QuantResult(run, local.layout, info.n_processed, info.n_pseudoaligned, info.p_pseudoaligned,
                       round(time.monotonic() - t0, 3), local.resolved.source, tuple(notes))  # fmt: skip


def _replace_in_file(path: Path, old: str, new: str) -> None:
    """Rewrite a small text file with `old` replaced (JSON-escaped too), atomically; absent files are fine."""
    if not path.is_file():
        return
    text = path.read_text()
    fixed = text.replace(old, new).replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
    if fixed != text:
        with atomic_output(path) as tmp:
            tmp.write_text(fixed)


def cleanup_run(fastq_root: Path, run: str) -> None:
    """Delete everything downloaded for the run (FASTQ, .sra, partials, locks); OSError if any of it stays."""
    path = fastq_root / run
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OSError(f"cannot delete {path}: {exc}; its files still use disk") from exc
    if path.exists():
        raise OSError(f"cannot delete {path}: it is still there after deletion")
