"""Run an external tool from an argv list, stream its output, record its version.

Every tool call in genoflows goes through `run_tool`: no shell, output lines handed to a callback as they
arrive (the Prefect task wrapper sends them to the run log), the last lines kept for the error message, and a
provenance record (tool, version, argv, exit code, duration, image) appended next to the outputs.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from genoflows import batch
from genoflows.settings import get_settings

PROVENANCE_FILE = "provenance.jsonl"

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


def container_argv(image: str, argv: Sequence[str], mounts: Sequence[Path], workdir: Path | None) -> list[str]:
    """Wrap argv so it runs in `image`, with each mount bound at the same path inside."""
    engine = get_settings().container_engine
    wrapped = [engine, "run", "--rm", "--network", "host"]
    for m in sorted({str(Path(m).resolve()) for m in mounts}):
        wrapped += ["-v", f"{m}:{m}"]
    if workdir is not None:
        wrapped += ["-w", str(Path(workdir).resolve())]
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
) -> ToolRun:
    """Run argv (no shell), streaming output lines to `log`; raise ToolError on a non-zero exit.

    If the tool has a container image configured it runs there, with `mounts` (and cwd) bound at the same
    paths. `stdout_path` captures stdout to a file (for tools whose stdout is data); stderr is then streamed.
    Setting `stop` terminates the tool (SIGTERM, then SIGKILL) and raises ToolStopped: a cancelled flow run
    does not wait for a long quantification to finish.
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
    cmd = container_argv(image, argv, [*mounts, *([cwd] if cwd else [])], cwd) if image else [local, *argv[1:]]
    version = tool_version(tool)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    full_env = {**os.environ, **(env or {})}
    out_handle = open(stdout_path, "wb") if stdout_path else None  # noqa: SIM115 - closed below
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
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            if log is not None:
                log(f"[{tool}] {line}")
        returncode = proc.wait()
    finally:
        if out_handle:
            out_handle.close()
    record = ToolRun(
        tool=tool,
        version=version,
        argv=argv,
        returncode=returncode,
        seconds=round(time.monotonic() - t0, 3),
        image=image,
        started=started,
        tail=list(tail)[-5:],
    )
    if provenance_dir is not None:
        record_provenance(provenance_dir, record)
    if returncode != 0:
        if stop is not None and stop.is_set():
            raise ToolStopped(tool, argv, returncode, list(tail))
        raise ToolError(tool, argv, returncode, list(tail))
    return record


def _run_on_batch(runner, tool, argv, *, cwd, env, log, stop, provenance_dir, mounts) -> ToolRun:
    """One tool call as one Batch job (genoflows.batch): same argv, outputs back in the same places."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    job = runner.run(tool, argv, cwd=cwd, env=env, log=log, stop=stop,
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
        record_provenance(provenance_dir, record)
    return record


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
