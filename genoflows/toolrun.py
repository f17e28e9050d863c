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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import IO

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
    pipeline: dict | None = None  # for a stage of `run_pipeline`: {"stage": i, "of": n, "mode": "pipes"|"files"}


def _tool_name(argv0: str) -> str:
    return Path(argv0).name


# Images chosen by a ToolImages block for this context only: a contextvar, not os.environ, so two task runs
# on one worker's threads (or two flow runs in one process) never see or undo each other's choice.
_IMAGES: ContextVar[tuple[dict[str, str], str] | None] = ContextVar("genoflows_tool_images", default=None)


@contextmanager
def images_applied(images: Mapping[str, str], engine: str) -> Iterator[None]:
    """Within the block, `images` (tool -> image) and `engine` replace the settings' for this context and the
    threads/tasks started from it."""
    token = _IMAGES.set((dict(images), engine))
    try:
        yield
    finally:
        _IMAGES.reset(token)


def image_for(tool: str) -> str | None:
    """The container image configured for `tool`, if any (a ToolImages block applied here, else settings)."""
    current = _IMAGES.get()
    return (current[0] if current is not None else get_settings().tool_images).get(tool)


def container_engine() -> str:
    """docker or podman: the applied ToolImages block's engine, else settings.container_engine."""
    current = _IMAGES.get()
    return current[1] if current is not None else get_settings().container_engine


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
    interactive: bool = False,
) -> list[str]:
    """Wrap argv so it runs in `image` with the least it needs.

    `inputs` are bound read-only at the same paths inside; `workdir` is the one writable directory (bound
    read-write, the working directory); inputs at or below it are already covered by it. No network unless
    `network` (a tool that downloads), no capabilities, no privilege escalation, the caller's uid:gid so
    outputs belong to the caller. Engine and image are checked (allow-list, well-formed reference).
    `interactive` keeps the container's stdin attached (`-i`), for a pipeline stage that reads a pipe.
    """
    engine = check_engine(container_engine())
    check_image(image)
    wrapped = [engine, "run", "--rm", *(["-i"] if interactive else []), "--network", "bridge" if network else "none",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", f"{os.getuid()}:{os.getgid()}"]
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


# --- pipelines: tools connected by OS pipes --------------------------------------------------------------------


class _PipeEnd(str):
    """A place in a pipeline stage's argv where the pipe is: "-" (stdin/stdout) when stages are connected by pipes,
    a temp file's path when they run one after another (see `run_pipeline`)."""

    def __new__(cls, role: str) -> _PipeEnd:
        obj = super().__new__(cls, "-")
        obj.role = role
        return obj

    def __repr__(self) -> str:
        return f"PIPE_{self.role.upper()}"


PIPE_IN = _PipeEnd("in")  # this stage reads the previous stage's output here ("-": stdin)
PIPE_OUT = _PipeEnd("out")  # this stage writes the next stage's input here ("-": stdout)


class PipelineError(ToolError):
    """A stage of a pipeline failed; the message names the stage (number, tool, argv) and its exit status."""

    def __init__(self, stage: int, stages: int, tool: str, argv: Sequence[str], returncode: int,
                 tail: Sequence[str]):
        super().__init__(tool, argv, returncode, tail)
        self.stage, self.stages = stage, stages
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
        last = "\n".join(f"    {line}" for line in self.tail) or "    (no output)"
        self.args = (f"pipeline stage {stage} of {stages} ({tool}) {how}: {' '.join(self.argv)}\n"
                     f"  last output:\n{last}",)


class PipelineStopped(PipelineError, ToolStopped):
    """The pipeline was terminated because its caller asked to stop."""


def _check_stages(stages: Sequence[Sequence]) -> None:
    if not stages:
        raise ValueError("a pipeline needs at least one stage")
    for i, argv in enumerate(stages):
        n_in = sum(1 for a in argv if a is PIPE_IN)
        n_out = sum(1 for a in argv if a is PIPE_OUT)
        if n_in != (1 if i > 0 else 0) or n_out != (1 if i < len(stages) - 1 else 0):
            raise ValueError(
                f"pipeline stage {i + 1} ({' '.join(map(str, argv))}): every stage but the first reads PIPE_IN once, "
                f"every stage but the last writes PIPE_OUT once"
            )


def run_pipeline(
    stages: Sequence[Sequence[str | os.PathLike[str]]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] | None = None,
    provenance_dir: Path | None = None,
    mounts: Sequence[Path] = (),
    tail_lines: int = 30,
    stop: threading.Event | None = None,
    work_dir: Path | None = None,
) -> list[ToolRun]:
    """Run argv lists connected by OS pipes (no shell): stage i's `PIPE_OUT` feeds stage i+1's `PIPE_IN`.

    Why: tools that pass a file on (normalise -> atomize -> sort) spend much of their time compressing and
    decompressing files nobody keeps; a pipe costs neither, and the stages run at once on different cores.

    Like `run_tool` for each stage: its stderr (the last stage's stdout too) goes to `tools.log` as its own block,
    one summary line per stage goes to `log`, one provenance record per stage (with `pipeline`: stage, of, mode).
    The pipeline succeeds only when EVERY stage exits 0 (a stage whose input was cut short may still exit 0, so
    the last stage's status alone proves nothing). When a stage fails the others are terminated and PipelineError
    names the stage that failed first - not the ones that merely lost their pipe (SIGPIPE) or were terminated
    because of it. Nothing is written to disk but the stages' own outputs and the log (stderr is collected in
    anonymous temp files, which cannot outlive the process).

    Containers: a stage whose tool has an image runs in its own container (`container_argv`, with `-i` when it
    reads the pipe), connected to its neighbours by the same pipes; `mounts` and `cwd` as in `run_tool`.

    AWS Batch: a Batch job has no pipe to its neighbours. When a Batch runner is configured for any stage's tool,
    the stages run one after another through `run_tool` (each on Batch or here, as configured), `PIPE_OUT` and
    `PIPE_IN` becoming a unique temp file in `work_dir` (default `cwd`), removed when the pipeline ends.
    """
    _check_stages(stages)
    argvs = [[a if isinstance(a, _PipeEnd) else str(a) for a in argv] for argv in stages]
    if any(batch.runner_for(_tool_name(argv[0])) is not None for argv in argvs):
        return _run_stages_with_files(argvs, cwd=cwd, env=env, log=log, provenance_dir=provenance_dir,
                                      mounts=mounts, tail_lines=tail_lines, stop=stop, work_dir=work_dir or cwd)
    n = len(argvs)
    cmds, images = [], []
    for i, argv in enumerate(argvs):
        tool = _tool_name(argv[0])
        image = image_for(tool)
        if image is None and (local := which(argv[0])) is None:
            raise ToolNotFound(
                f"{tool} (pipeline stage {i + 1} of {n}) is not installed: install it (make setup installs the "
                f"Debian tools) or set GENOFLOWS_TOOL_IMAGES='{{\"{tool}\": \"<image>\"}}' to run it in a container"
            )
        plain = [str(a) for a in argv]
        cmds.append(container_argv(image, plain, mounts, cwd, interactive=i > 0) if image else [local, *plain[1:]])
        images.append(image)
    versions = [tool_version(_tool_name(argv[0])) for argv in argvs]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    full_env = {**os.environ, **(env or {})}
    errs = [tempfile.TemporaryFile() for _ in argvs]  # noqa: SIM115 - anonymous: gone with the last handle
    procs: list[subprocess.Popen] = []
    terminated: set[int] = set()
    seen_at: dict[int, int] = {}
    ended: dict[int, float] = {}  # when each stage's exit was first seen: its own wall time, which bounds the rest
    rounds = 0
    t0 = time.monotonic()
    try:
        upstream = None
        for i, cmd in enumerate(cmds):
            last = i == n - 1
            try:
                proc = subprocess.Popen(
                    cmd, cwd=cwd, env=full_env,
                    stdin=upstream if upstream is not None else subprocess.DEVNULL,
                    stdout=errs[i] if last else subprocess.PIPE, stderr=errs[i],
                )
            finally:
                if upstream is not None:
                    upstream.close()  # the next stage holds it now: it sees EOF / SIGPIPE when its neighbour ends
            procs.append(proc)
            upstream = proc.stdout
        while True:  # seen_at: stage -> the polling round its exit was first seen in
            codes = [p.poll() for p in procs]
            rounds += 1
            for i, c in enumerate(codes):
                if c is not None and i not in seen_at:
                    seen_at[i] = rounds
                    ended[i] = time.monotonic()
            if all(c is not None for c in codes):
                break
            stopping = stop is not None and stop.is_set()
            if stopping or any(c not in (None, 0) for c in codes):
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        terminated.add(i)
                        _terminate(p)
                continue
            if stop is not None:
                stop.wait(0.05)
            else:
                time.sleep(0.05)
    finally:
        for i, p in enumerate(procs):
            if p.poll() is None:  # an error while starting the stages: leave nothing running
                terminated.add(i)
                _terminate(p)
        now = time.monotonic()
        records = [_pipeline_record(i, n, argvs[i], cmds[i], procs[i].returncode, versions[i], images[i], started,
                                    round(ended.get(i, now) - t0, 3), errs[i], tail_lines, provenance_dir)
                   for i in range(len(procs))]
        tails = [_tail_of(errs[i], tail_lines) for i in range(len(procs))]
        for fh in errs:
            fh.close()
    for record in records:
        if provenance_dir is not None:
            record_provenance(provenance_dir, record)
        if log is not None:
            log(summary_line(record, Path(provenance_dir) / TOOL_LOG if provenance_dir is not None else None))
    failed = [i for i, r in enumerate(records) if r.returncode != 0]
    if failed:
        # The stage that failed first, not those that lost their pipe (SIGPIPE, or "Broken pipe" from tools that
        # ignore SIGPIPE) or were terminated because of it; same polling round: the upstream one (its neighbour
        # downstream may fail on the cut-off input).
        culprits = [i for i in failed if i not in terminated and records[i].returncode != -signal.SIGPIPE
                    and not any("broken pipe" in line.lower() for line in tails[i][-3:])]
        i = min(culprits or failed, key=lambda k: (seen_at.get(k, rounds), k))
        if log is not None:
            for line in tails[i][-10:]:
                log(f"[{records[i].tool}] {line}")
        error = PipelineStopped if stop is not None and stop.is_set() else PipelineError
        raise error(i + 1, n, records[i].tool, records[i].argv, records[i].returncode, tails[i])
    return records


def _terminate(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail_of(fh: IO[bytes], n: int) -> list[str]:
    fh.seek(0)
    tail: collections.deque[str] = collections.deque(maxlen=n)
    for raw in fh:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if line.strip():
            tail.append(line)
    return list(tail)


def _pipeline_record(i, n, argv, cmd, returncode, version, image, started, seconds, err, tail_lines,
                     provenance_dir) -> ToolRun:
    """One stage's ToolRun; its collected output appended to tools.log as its own block."""
    tool = _tool_name(argv[0])
    err.seek(0, os.SEEK_END)
    lines = 0
    err.seek(0)
    for _ in err:
        lines += 1
    log_path = log_offset = None
    if provenance_dir is not None:
        command = shlex.join(cmd).replace("\n", "\\n")
        header = f"### {started} {tool} {version} exit {returncode} (pipeline stage {i + 1} of {n}): {command}\n"
        Path(provenance_dir).mkdir(parents=True, exist_ok=True)
        log_path, log_offset = _append_log(Path(provenance_dir) / TOOL_LOG, header, err)
    return ToolRun(tool=tool, version=version, argv=[str(a) for a in argv], returncode=returncode, seconds=seconds,
                   image=image, started=started, tail=_tail_of(err, tail_lines)[-5:],
                   log=TOOL_LOG if log_path else None, log_offset=log_offset, lines=lines,
                   pipeline={"stage": i + 1, "of": n, "mode": "pipes"})


def _run_stages_with_files(argvs, *, cwd, env, log, provenance_dir, mounts, tail_lines, stop, work_dir
                           ) -> list[ToolRun]:
    """The Batch fallback of `run_pipeline`: one stage after another, a unique temp file between neighbours."""
    from genoflows.files import temp_path

    base = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    n = len(argvs)
    links = [temp_path(base / f"pipe-{i + 1}-to-{i + 2}") for i in range(n - 1)]
    records = []
    if log is not None:
        log(f"[pipeline] {n} stages run one after another with files between them: a stage runs on AWS Batch")
    try:
        for i, argv in enumerate(argvs):
            concrete = [str(links[i - 1]) if a is PIPE_IN else str(links[i]) if a is PIPE_OUT else a for a in argv]
            try:
                record = run_tool(concrete, cwd=cwd, env=env, log=log, provenance_dir=provenance_dir,
                                  mounts=[*mounts, *links[:i]], tail_lines=tail_lines, stop=stop)
            except ToolError as exc:
                error = PipelineStopped if isinstance(exc, ToolStopped) else PipelineError
                raise error(i + 1, n, exc.tool, exc.argv, exc.returncode, exc.tail) from exc
            record.pipeline = {"stage": i + 1, "of": n, "mode": "files"}
            records.append(record)
            if i > 0:
                links[i - 1].unlink(missing_ok=True)  # read: no longer needed
    finally:
        for link in links:
            link.unlink(missing_ok=True)
    return records


def _run_on_batch(runner, tool, argv, *, cwd, env, log, stop, provenance_dir, mounts) -> ToolRun:
    """One tool call as one Batch job (genoflows.batch): same argv, outputs back in the same places."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    lines: list[str] = []  # the job's output, for tools.log as a local call writes it (rnaseq-remote, issue 12)

    def forward(line: str) -> None:
        lines.append(line.removeprefix(f"[{tool}@batch] "))
        if log is not None:
            log(line)

    try:
        job = runner.run(tool, argv, cwd=cwd, env=env, log=forward, stop=stop,
                         extra_inputs=[m for m in mounts if Path(m).is_file()])
    except batch.BatchError as exc:  # the job's own last words in the error, its whole output in tools.log
        exc.tail = [line for line in lines if line.strip()][-5:]
        if exc.tail:
            exc.args = (f"{exc.args[0]}; its last output: {exc.tail[-1].strip()}", *exc.args[1:])
        if provenance_dir is not None and lines:
            _write_batch_log(provenance_dir, tool, argv, started, "failed", lines)
        raise
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
        record.log_offset = _write_batch_log(provenance_dir, tool, argv, started, f"exit {record.returncode}", lines)
        record.log, record.lines = TOOL_LOG, len(lines)
        record_provenance(provenance_dir, record)
    return record


def _write_batch_log(provenance_dir, tool: str, argv, started: str, how: str, lines: list[str]) -> int:
    """A Batch job's output appended to tools.log as a local call's is; returns where its block starts."""
    part = _partial_log(provenance_dir)
    try:
        part.write("".join(f"{line}\n" for line in lines))
        part.close()
        header = f"### {started} {tool} batch {how}: {shlex.join(list(argv))}\n"
        return _append_log(Path(provenance_dir) / TOOL_LOG, header, Path(part.name))[1]
    finally:
        part.close()
        Path(part.name).unlink(missing_ok=True)


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


def _append_log(path: Path, header: str, part: Path | IO[bytes]) -> tuple[Path, int]:
    """Append header + the partial file (a path, or an open binary file read from its start) as one block (a
    thread and a file lock: concurrent tools and processes writing the same directory never interleave); returns
    (path, offset of the block)."""
    with _log_lock, open(path, "ab") as out:
        fcntl.flock(out, fcntl.LOCK_EX)
        try:
            out.seek(0, os.SEEK_END)
            offset = out.tell()
            out.write(header.encode())
            if isinstance(part, Path):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                part.seek(0)
                shutil.copyfileobj(part, out)
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
