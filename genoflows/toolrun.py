"""Run an external tool from an argv list, keep its full output as a file, summarise it in the run log.

Every tool call in genoflows goes through `run_tool`: no shell; the tool's whole output is appended to
`tools.log` next to the outputs (beside `provenance.jsonl`, one headed block per call), the run log gets one
summary line per call (the last lines when it fails), the last lines are kept for the error message, and a provenance record (tool, version, argv,
exit code, duration, image, log file) is appended next to the outputs. So a run of 300 kallisto calls has a
readable log, and every word each tool said is still there.

A tool configured with an image runs in a container with the least it needs: its inputs mounted read-only,
one writable directory (its working directory), no network unless the call says it downloads, no
capabilities, no privilege escalation, the caller's uid.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from genoflows import batch
from genoflows.images import check_engine, check_image
from genoflows.settings import get_settings

PROVENANCE_FILE = "provenance.jsonl"
TOOL_LOG = "tools.log"

# How each tool reports its version: argv suffix and a regex whose first group is the version.
VERSION_COMMANDS: dict[str, tuple[list[str], str]] = {
    "bcftools": (["--version"], r"bcftools\s+(\S+)"),
    "tabix": (["--version"], r"tabix \(htslib\)\s+(\S+)"),
    "bgzip": (["--version"], r"bgzip \(htslib\)\s+(\S+)"),
    "samtools": (["--version"], r"samtools\s+(\S+)"),
    "kallisto": (["version"], r"kallisto, version\s+(\S+)"),
    "salmon": (["--version"], r"salmon\s+(\S+)"),
    "truvari": (["version"], r"Truvari v?(\S+)"),
    "hap.py": (["--version"], r"Hap\.py\s+v?(\S+)"),
    "fasterq-dump": (["--version"], r"fasterq-dump\s*:\s*(\S+)"),
    "plink2": (["--version"], r"PLINK v?(\S+)"),
    "minimac4": (["--version"], r"(?:minimac|Minimac)\S*\s+v?(\d\S*)"),
    "regenie": (["--version"], r"v?(\d+\.\d+\S*)"),
}


class ToolError(RuntimeError):
    """A tool exited non-zero; the message carries its argv and its last output lines."""

    def __init__(self, tool: str, argv: Sequence[str], returncode: int, tail: Sequence[str]):
        self.tool, self.argv, self.returncode, self.tail = tool, list(argv), returncode, list(tail)
        last = "\n".join(f"    {line}" for line in tail) or "    (no output)"
        super().__init__(f"{tool} exited with code {returncode}: {' '.join(self.argv)}\n  last output:\n{last}")


class ToolStopped(ToolError):
    """The tool was terminated because its caller asked to stop (a cancelled or interrupted flow run)."""


class ToolNotFound(RuntimeError):
    """The tool is neither on PATH nor configured as a container image."""


@dataclass
class ToolRun:
    """What one tool invocation did, as written to the provenance file."""

    tool: str
    version: str
    argv: list[str]
    returncode: int
    seconds: float
    image: str | None = None
    started: str = ""
    tail: list[str] = field(default_factory=list)
    log: str | None = None  # the file holding the full output, relative to the provenance directory
    log_offset: int | None = None  # where this call's block starts in it (bytes)
    lines: int = 0
    executor: dict | None = None  # where it ran when not here, e.g. {"batch_job_id", "queue", "job_definition"}


def _tool_name(argv0: str) -> str:
    return Path(argv0).name


def image_for(tool: str) -> str | None:
    """The container image configured for `tool`, if any (settings.tool_images)."""
    return get_settings().tool_images.get(tool)


def which(tool: str) -> str | None:
    """The executable for `tool`: on PATH, else beside this interpreter (tools pip installed into the venv,
    such as truvari, when the venv is not activated, e.g. under a Prefect worker)."""
    found = shutil.which(tool)
    if found is None and os.sep not in tool:
        found = shutil.which(tool, path=str(Path(sys.executable).parent))
    return found


def is_available(tool: str) -> bool:
    """True when `tool` can run here: on PATH or through a configured image."""
    return which(tool) is not None or image_for(tool) is not None


def container_argv(
    image: str,
    argv: Sequence[str],
    inputs: Sequence[Path],
    workdir: Path | None,
    *,
    network: bool = False,
) -> list[str]:
    """Wrap argv so it runs in `image` with the least it needs.

    `inputs` are bound read-only at the same paths inside; `workdir` is the one writable directory (bound
    read-write, the working directory); inputs at or below it are already covered by it. No network unless
    `network` (a tool that downloads), no capabilities, no privilege escalation, the caller's uid:gid so
    outputs belong to the caller. Engine and image are checked (allow-list, well-formed reference).
    """
    engine = check_engine(get_settings().container_engine)
    check_image(image)
    wrapped = [engine, "run", "--rm", "--network", "bridge" if network else "none", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--user", f"{os.getuid()}:{os.getgid()}"]
    writable = Path(workdir).resolve() if workdir is not None else None
    for m in sorted({Path(m).resolve() for m in inputs}):
        if writable is not None and m.is_relative_to(writable):
            continue
        wrapped += ["-v", f"{m}:{m}:ro"]
    if writable is not None:
        wrapped += ["-v", f"{writable}:{writable}:rw", "-w", str(writable)]
    return wrapped + [image, *argv]


@lru_cache(maxsize=64)
def _version_of(tool: str, image: str | None) -> str:
    spec = VERSION_COMMANDS.get(tool)
    if spec is None:
        return "unknown"
    args, pattern = spec
    cmd = [tool if image else (which(tool) or tool), *args]
    if image:
        cmd = container_argv(image, cmd, [], None)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(pattern, proc.stdout + "\n" + proc.stderr)
    return m.group(1) if m else "unknown"


def tool_version(tool: str) -> str:
    """The version string the tool reports about itself (cached per process)."""
    return _version_of(tool, image_for(tool))


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] | None = None,
    provenance_dir: Path | None = None,
    mounts: Sequence[Path] = (),
    stdout_path: Path | None = None,
    tail_lines: int = 30,
    use_image: bool = True,
    stop: threading.Event | None = None,
    network: bool = False,
) -> ToolRun:
    """Run argv (no shell); raise ToolError on a non-zero exit.

    The full output is appended to `<provenance_dir>/tools.log` (when a provenance_dir is given); `log`
    receives one summary line per call, plus the last lines when the tool fails. If the tool has a container
    image configured it runs there: `mounts` (its inputs) read-only, `cwd` the one writable directory,
    `network` only for tools that download. `stdout_path` captures stdout to a file (for tools whose stdout is
    data); stderr is then what is logged. Setting `stop` terminates the tool (SIGTERM, then SIGKILL) and raises
    ToolStopped: a cancelled flow run does not wait for a long quantification to finish.
    """
    argv = [str(a) for a in argv]
    tool = _tool_name(argv[0])
    if (batch_runner := batch.runner_for(tool)) is not None:  # configured to run as an AWS Batch job
        return _run_on_batch(batch_runner, tool, argv, cwd=cwd, env=env, log=log, stop=stop,
                             provenance_dir=provenance_dir, mounts=mounts)
    image = image_for(tool) if use_image else None
    if image is None and (local := which(argv[0])) is None:
        raise ToolNotFound(
            f"{tool} is not installed: install it (make setup installs the Debian tools) or set "
            f"GENOFLOWS_TOOL_IMAGES='{{\"{tool}\": \"<image>\"}}' to run it in a container"
        )
    cmd = container_argv(image, argv, mounts, cwd, network=network) if image else [local, *argv[1:]]
    version = tool_version(tool)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    lines = 0
    t0 = time.monotonic()
    full_env = {**os.environ, **(env or {})}
    out_handle = open(stdout_path, "wb") if stdout_path else None  # noqa: SIM115 - closed below
    part = _partial_log(provenance_dir) if provenance_dir is not None else None
    log_path = log_offset = None
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=full_env,
            stdout=out_handle if out_handle else subprocess.PIPE,
            stderr=subprocess.PIPE if out_handle else subprocess.STDOUT,
        )
        if stop is not None:
            threading.Thread(target=_terminate_when, args=(proc, stop), daemon=True).start()
        stream = proc.stderr if out_handle else proc.stdout
        assert stream is not None
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\r\n")
            lines += 1
            if part:
                part.write(line + "\n")
            if line.strip():
                tail.append(line)
        returncode = proc.wait()
        if part:
            part.close()
            command = shlex.join(cmd).replace("\n", "\\n")  # one header line, whatever the argv holds
            header = f"### {started} {tool} {version} exit {returncode}: {command}\n"
            log_path, log_offset = _append_log(Path(provenance_dir) / TOOL_LOG, header, Path(part.name))
    finally:
        if out_handle:
            out_handle.close()
        if part:
            part.close()
            Path(part.name).unlink(missing_ok=True)
    seconds = round(time.monotonic() - t0, 3)
    record = ToolRun(
        tool=tool,
        version=version,
        argv=argv,
        returncode=returncode,
        seconds=seconds,
        image=image,
        started=started,
        tail=list(tail)[-5:],
        log=TOOL_LOG if log_path else None,
        log_offset=log_offset,
        lines=lines,
    )
    if provenance_dir is not None:
        record_provenance(provenance_dir, record)
    if log is not None:
        log(summary_line(record, log_path))
        if returncode != 0:
            for line in list(tail)[-10:]:
                log(f"[{tool}] {line}")
    if returncode != 0:
        if stop is not None and stop.is_set():
            raise ToolStopped(tool, argv, returncode, list(tail))
        raise ToolError(tool, argv, returncode, list(tail))
    return record


def _run_on_batch(runner, tool, argv, *, cwd, env, log, stop, provenance_dir, mounts) -> ToolRun:
    """One tool call as one Batch job (genoflows.batch): same argv, outputs back in the same places."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    lines: list[str] = []  # the job's output, for tools.log as a local call writes it (rnaseq-remote, issue 12)

    def forward(line: str) -> None:
        lines.append(line.removeprefix(f"[{tool}@batch] "))
        if log is not None:
            log(line)

    job = runner.run(tool, argv, cwd=cwd, env=env, log=forward if provenance_dir is not None else log, stop=stop,
                     extra_inputs=[m for m in mounts if Path(m).is_file()])
    record = ToolRun(
        tool=tool,
        version="batch",
        argv=list(argv),
        returncode=(job.get("container") or {}).get("exitCode") or 0,
        seconds=round(time.monotonic() - t0, 3),
        image=(job.get("container") or {}).get("image"),
        started=started,
        executor={"batch_job_id": job.get("jobId"), "queue": runner.config.job_queue,
                  "job_definition": job.get("jobDefinition")},
    )
    if provenance_dir is not None:
        part = _partial_log(provenance_dir)
        try:
            part.write("".join(f"{line}\n" for line in lines))
            part.close()
            header = f"### {started} {tool} batch exit {record.returncode}: {shlex.join(record.argv)}\n"
            _, record.log_offset = _append_log(Path(provenance_dir) / TOOL_LOG, header, Path(part.name))
            record.log, record.lines = TOOL_LOG, len(lines)
        finally:
            part.close()
            Path(part.name).unlink(missing_ok=True)
        record_provenance(provenance_dir, record)
    return record


def summary_line(record: ToolRun, log_path: Path | None) -> str:
    """One line for the run log: what ran, how it ended, where its full output is."""
    where = f"; full log {log_path}" if log_path else ""
    how = "ok" if record.returncode == 0 else f"FAILED (exit {record.returncode}), last lines below"
    image = f" in {record.image}" if record.image else ""
    return f"[{record.tool}] {record.tool} {record.version}{image}: {how} in {record.seconds:.1f} s, " \
           f"{record.lines} output lines{where}"


_log_lock = threading.Lock()


def _partial_log(directory: Path):
    """A hidden file in `directory` collecting one call's output until it is appended to tools.log."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed and removed by run_tool
        "w", encoding="utf-8", dir=directory, prefix=f".{TOOL_LOG}.", suffix=".part", delete=False)


def _append_log(path: Path, header: str, part: Path) -> tuple[Path, int]:
    """Append header + the partial file as one block (a thread and a file lock: concurrent tools and processes
    writing the same directory never interleave); returns (path, offset of the block)."""
    with _log_lock, open(path, "ab") as out:
        fcntl.flock(out, fcntl.LOCK_EX)
        try:
            out.seek(0, os.SEEK_END)
            offset = out.tell()
            out.write(header.encode())
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out)
        finally:
            fcntl.flock(out, fcntl.LOCK_UN)
    return path, offset


def _terminate_when(proc: subprocess.Popen, stop: threading.Event) -> None:
    while proc.poll() is None:
        if stop.wait(0.25):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            return


def record_provenance(directory: Path, record: ToolRun) -> None:
    """Append one JSON line per tool run to `<directory>/provenance.jsonl`."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / PROVENANCE_FILE, "a") as fh:
        fh.write(json.dumps(asdict(record)) + "\n")


def read_provenance(directory: Path) -> list[dict]:
    """The provenance records written under `directory` (empty when none)."""
    path = directory / PROVENANCE_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
