"""Run one tool invocation as one AWS Batch job, so heavy steps leave the flow's machine unchanged in code.

The flow's machine and the Batch container do not share a disk, so files move through S3:

1. `plan_staging` reads the argv: every path it names that exists here is an input (a file with the index files
   beside it, or a prefix such as regenie's `--bed data/example` with its `example.*` siblings); the directory
   of every path is a working directory whose new files are the outputs (`--out results/chr1` → `results/`).
2. Inputs are uploaded under `<staging>/<job key>/in/` (skipped when an object of the same size and mtime is
   already there), and a JSON spec under `<staging>/<job key>/spec.json` tells the container what to do.
3. The job runs `python -m genoflows.batch_entry <spec uri>` in the job definition's image: it downloads the
   inputs below its scratch directory, rewrites the argv's paths to them, runs the tool, uploads new files of
   the working directories to `<staging>/<job key>/out/`.
4. Here, `describe_jobs` is polled with backoff (throttling slows it down, never fails it), the job's CloudWatch
   log lines are forwarded as they appear, a stop request terminates the job, and on success the outputs are
   downloaded into the same local directories the tool would have written locally.

Failures are classified for the caller's retry policy: a missing queue or job definition, denied credentials
and out-of-memory kills are permanent (retrying cannot help; an OOM names the memory the job had); a job whose
host went away (`Host EC2 ... terminated`, spot reclaim) is transient.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from urllib.parse import urlparse

from botocore.exceptions import ClientError

TERMINAL = {"SUCCEEDED", "FAILED"}
THROTTLED = {"TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded"}
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException"}
LOG_GROUP = "/aws/batch/job"
# Index files a tool finds beside its input without naming them (VCF/BCF, FASTA, BAM/CRAM): staged with it.
INDEX_SUFFIXES = (".tbi", ".csi", ".fai", ".gzi", ".bai", ".crai", ".bgi")  # .bgi: regenie reads <bgen>.bgi


class BatchError(RuntimeError):
    """A Batch job could not run or failed; the message names the job, queue and what to do."""

    tail: tuple[str, ...] | list[str] = ()  # the job's last output lines, when it ran (set by the tool runner)


class BatchPermanentError(BatchError):
    """Retrying will not help: missing queue/definition, access denied, out of memory, bad image, tool error."""


class BatchTransientError(BatchError):
    """Worth retrying: the host went away, throttling beyond the poll budget, a network failure."""


@dataclass(frozen=True)
class BatchResources:
    """What one tool's job asks for; None keeps the job definition's value."""

    vcpus: float | None = None
    memory_mib: int | None = None
    job_definition: str | None = None  # overrides the default job definition for this tool


@dataclass(frozen=True)
class BatchConfig:
    """Where tool jobs go; built from the `AwsBatch` block (blocks/aws_batch.py)."""

    job_queue: str
    job_definition: str
    staging_uri: str  # s3://bucket/prefix where inputs, outputs and specs travel
    tools: Mapping[str, BatchResources] = field(default_factory=dict)
    poll_initial_seconds: float = 2.0
    poll_max_seconds: float = 30.0
    timeout_seconds: float | None = None

    def resources_for(self, tool: str) -> BatchResources | None:
        """The resources of `tool` when it is configured to run on Batch, else None (runs locally)."""
        return self.tools.get(tool)


@dataclass
class Staging:
    """What crosses to the container: input files (local path -> key suffix) and working directories."""

    inputs: dict[str, str]
    workdirs: list[str]


def plan_staging(argv: Sequence[str], cwd: Path | None = None, extra_inputs: Sequence[Path] = ()) -> Staging:
    """The inputs and working directories an argv refers to (see the module docstring)."""
    inputs: dict[str, str] = {}
    workdirs: list[str] = []

    def add_input(p: Path) -> None:
        p = p.parent.resolve() / p.name  # a symlink keeps its own name and place (regenie's `recoded.bed` link)
        if p.is_file():
            inputs.setdefault(str(p), f"{len(inputs)}/{p.name}")
            for companion in (p.with_name(p.name + s) for s in INDEX_SUFFIXES):  # after the data: newer mtime
                if companion.is_file():
                    inputs.setdefault(str(companion), f"{len(inputs)}/{companion.name}")
        elif p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                inputs.setdefault(str(f), f"{len(inputs)}/{f.name}")

    def add_workdir(d: Path) -> None:
        d = str(d.resolve())
        if d not in workdirs:
            workdirs.append(d)

    for token in argv[1:]:
        value = token.split("=", 1)[1] if token.startswith("-") and "=" in token else token
        if not value or value.startswith("-") or "/" not in value and not Path(value).exists():
            continue
        p = Path(value) if Path(value).is_absolute() or cwd is None else Path(cwd) / value
        if p.is_file():
            add_input(p)
            add_workdir(p.parent)
        elif p.is_dir():
            add_workdir(p)
        elif p.parent.is_dir():
            siblings = sorted(p.parent.glob(p.name + ".*")) + sorted(p.parent.glob(p.name + "_*"))
            for s in siblings:
                if s.is_file():
                    add_input(s)
            add_workdir(p.parent)
    for extra in extra_inputs:
        add_input(Path(extra))
    if cwd is not None:
        add_workdir(Path(cwd))
    return Staging(inputs=inputs, workdirs=workdirs)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise BatchPermanentError(f"staging location {uri!r} is not an s3:// URI: set the AwsBatch block's staging_uri")
    return parsed.netloc, parsed.path.lstrip("/").rstrip("/")


class BatchRunner:
    """Submits, follows and collects one tool job at a time (one instance may serve many threads)."""

    def __init__(self, config: BatchConfig, batch_client, s3_client, logs_client, *, sleep=time.sleep):
        self.config, self.batch, self.s3, self.logs = config, batch_client, s3_client, logs_client
        self._sleep = sleep

    # --- staging -------------------------------------------------------------------------------------------
    def _upload_inputs(self, bucket: str, prefix: str, staging: Staging) -> dict[str, str]:
        """Upload inputs (content-addressed by path, size and mtime, so a rerun uploads nothing new)."""
        uris = {}
        for local, suffix in staging.inputs.items():
            st = Path(local).stat()
            key = f"{prefix}/inputs/{uuid.uuid5(uuid.NAMESPACE_URL, f'{local}|{st.st_size}|{st.st_mtime_ns}')}/{Path(suffix).name}"
            try:
                head = self.s3.head_object(Bucket=bucket, Key=key)
                fresh = head["ContentLength"] == st.st_size
            except ClientError:
                fresh = False
            if not fresh:
                self.s3.upload_file(local, bucket, key)
            uris[local] = f"s3://{bucket}/{key}"
        return uris

    def _download_outputs(self, bucket: str, out_prefix: str, workdirs: Sequence[str]) -> list[Path]:
        """Bring every object under out/<i>/ back into working directory i (temp name, then rename)."""
        written = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=out_prefix + "/"):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(out_prefix) + 1 :]
                index, _, name = rel.partition("/")
                if not index.isdigit() or int(index) >= len(workdirs) or not name or ".." in Path(name).parts:
                    raise BatchPermanentError(f"unexpected output object s3://{bucket}/{obj['Key']}")
                dest = Path(workdirs[int(index)]) / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
                try:
                    self.s3.download_file(bucket, obj["Key"], str(tmp))
                    if tmp.stat().st_size != obj["Size"]:
                        raise BatchTransientError(f"output {dest.name}: {tmp.stat().st_size} of {obj['Size']} bytes")
                    tmp.replace(dest)
                finally:
                    tmp.unlink(missing_ok=True)
                written.append(dest)
        return written

    # --- the job -------------------------------------------------------------------------------------------
    def submit(self, tool: str, argv: Sequence[str], job_key: str, spec_uri: str,
               env: Mapping[str, str] | None = None) -> dict:
        res = self.config.resources_for(tool) or BatchResources()
        requirements = []
        if res.vcpus is not None:
            requirements.append({"type": "VCPU", "value": f"{res.vcpus:g}"})
        if res.memory_mib is not None:
            requirements.append({"type": "MEMORY", "value": str(res.memory_mib)})
        overrides: dict = {
            "command": ["python", "-m", "genoflows.batch_entry", spec_uri],
            "environment": [{"name": k, "value": v} for k, v in sorted((env or {}).items())],
        }
        if requirements:
            overrides["resourceRequirements"] = requirements
        kwargs: dict = {
            "jobName": f"genoflows-{_job_safe(tool)}-{job_key[:12]}",
            "jobQueue": self.config.job_queue,
            "jobDefinition": res.job_definition or self.config.job_definition,
            "containerOverrides": overrides,
            "tags": {"genoflows:tool": tool, "genoflows:job-key": job_key},
        }
        if self.config.timeout_seconds:
            kwargs["timeout"] = {"attemptDurationSeconds": max(60, int(self.config.timeout_seconds))}
        try:
            return self.batch.submit_job(**kwargs)
        except ClientError as exc:
            raise _classify_client_error(exc, f"submitting {tool} to queue {self.config.job_queue!r} "
                                              f"with job definition {kwargs['jobDefinition']!r}") from None

    def describe(self, job_id: str) -> dict:
        """describe_jobs with backoff on throttling (a throttled poll is a slower poll, not a failure)."""
        delay = self.config.poll_initial_seconds
        for _ in range(30):
            try:
                jobs = self.batch.describe_jobs(jobs=[job_id])["jobs"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in THROTTLED:
                    self._sleep(delay)
                    delay = min(self.config.poll_max_seconds, delay * 2)
                    continue
                raise _classify_client_error(exc, f"describing Batch job {job_id}") from None
            if not jobs:
                raise BatchTransientError(f"Batch job {job_id} is not known to the queue (yet)")
            return jobs[0]
        raise BatchTransientError(f"describe_jobs for {job_id} stayed throttled; try again later")

    def forward_logs(self, stream: str | None, token: str | None, log: Callable[[str], None] | None,
                     tool: str) -> str | None:
        """Send new CloudWatch lines of the job's stream to `log`; returns the next token."""
        if not stream or log is None:
            return token
        while True:
            kwargs = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
            if token:
                kwargs["nextToken"] = token
            try:
                page = self.logs.get_log_events(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("ResourceNotFoundException", *THROTTLED):
                    return token  # the stream appears once the container starts; throttling: next poll
                raise
            for event in page.get("events", []):
                log(f"[{tool}@batch] {event['message']}")
            new = page.get("nextForwardToken")
            if not page.get("events") or new == token:
                return new or token
            token = new

    def run(
        self,
        tool: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        log: Callable[[str], None] | None = None,
        stop: Event | None = None,
        extra_inputs: Sequence[Path] = (),
    ) -> dict:
        """Run argv as one Batch job and bring its outputs back; returns the final job description."""
        bucket, base = split_s3(self.config.staging_uri)
        staging = plan_staging(argv, cwd, extra_inputs)
        job_key = uuid.uuid4().hex
        prefix = f"{base}/{job_key}" if base else job_key
        input_uris = self._upload_inputs(bucket, base or "staging", staging)
        spec = {
            "tool": tool,
            "argv": list(argv),
            "cwd": str(Path(cwd).resolve()) if cwd else None,
            "inputs": input_uris,
            "workdirs": staging.workdirs,
            "outputs": f"s3://{bucket}/{prefix}/out",
        }
        spec_key = f"{prefix}/spec.json"
        self.s3.put_object(Bucket=bucket, Key=spec_key, Body=json.dumps(spec).encode())
        submitted = self.submit(tool, argv, job_key, f"s3://{bucket}/{spec_key}", env)
        job_id = submitted["jobId"]
        if log:
            log(f"[{tool}@batch] submitted job {job_id} to queue {self.config.job_queue}")
        delay, token, started = self.config.poll_initial_seconds, None, time.monotonic()
        terminated = False
        while True:
            job = self.describe(job_id)
            token = self.forward_logs(job.get("container", {}).get("logStreamName"), token, log, tool)
            if job["status"] in TERMINAL:
                break
            if stop is not None and stop.is_set() and not terminated:
                self.batch.terminate_job(jobId=job_id, reason="genoflows: the Prefect flow run was cancelled")
                terminated = True
            if stop is not None:
                stop.wait(delay)
            else:
                self._sleep(delay)
            delay = min(self.config.poll_max_seconds, delay * 1.5)
            if self.config.timeout_seconds and time.monotonic() - started > self.config.timeout_seconds + 300:
                self.batch.terminate_job(jobId=job_id, reason="genoflows: timed out waiting for the job")
                raise BatchTransientError(f"Batch job {job_id} ({tool}) did not finish in time; it was terminated")
        job["genoflows"] = {"queue": self.config.job_queue, "terminated": terminated, "job_key": job_key}
        if job["status"] == "FAILED":
            raise failure_error(tool, job, self.config.job_queue, terminated)
        self._download_outputs(bucket, f"{prefix}/out", staging.workdirs)
        return job


def failure_error(tool: str, job: dict, queue: str, terminated: bool) -> BatchError:
    """Turn a FAILED job description into an error that says what happened and whether a retry can help."""
    container = job.get("container") or {}
    attempts = job.get("attempts") or []
    last = (attempts[-1].get("container") if attempts else None) or {}
    reason = container.get("reason") or last.get("reason") or ""
    status_reason = job.get("statusReason") or ""
    exit_code = container.get("exitCode", last.get("exitCode"))
    memory = container.get("memory")
    for req in container.get("resourceRequirements") or []:
        if req.get("type") == "MEMORY":
            memory = req.get("value")
    where = f"Batch job {job.get('jobId')} ({tool}) on queue {queue!r}"
    text = "; ".join(x for x in (status_reason, reason) if x)
    if terminated:
        return BatchPermanentError(f"{where} was terminated because the flow run was cancelled")
    if "OutOfMemory" in text or "memory" in reason.lower() and exit_code == 137:
        return BatchPermanentError(
            f"{where} ran out of memory with {memory} MiB: raise memory_mib for {tool} in the AwsBatch block"
        )
    if any(marker.lower() in text.lower() for marker in ("Host EC2", "spot", "instance terminated")):
        return BatchTransientError(f"{where} lost its host ({text}); it will be retried")
    if "CannotPullContainer" in text:
        return BatchPermanentError(f"{where}: the image could not be pulled ({text}); check the job definition")
    return BatchPermanentError(f"{where} failed with exit code {exit_code}: {text or 'no reason given'}")


def _classify_client_error(exc: ClientError, doing: str) -> BatchError:
    code = exc.response.get("Error", {}).get("Code", "")
    message = exc.response.get("Error", {}).get("Message", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in DENIED or status in (401, 403) or "AccessDenied" in message:
        code = code if code in DENIED else "AccessDenied"
        return BatchPermanentError(f"{doing}: access denied ({code}); the credentials need batch:SubmitJob, "
                                   f"batch:DescribeJobs, batch:TerminateJob and logs:GetLogEvents")
    if code in THROTTLED:
        return BatchTransientError(f"{doing}: throttled ({code})")
    if code == "ClientException":
        return BatchPermanentError(f"{doing}: {message} (create it with deployments/batch/setup.sh)")
    return BatchTransientError(f"{doing}: {code} {message}")


def _job_safe(tool: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in tool)[:40]


# --- which runner serves the current flow run ------------------------------------------------------------------
# A context variable, not process-wide state: Prefect copies the context into each task run, so every tool call
# made under `use_batch(...)` in a flow run sees the runner and nothing outside that run does.
_CURRENT: ContextVar[BatchRunner | None] = ContextVar("genoflows_batch_runner", default=None)


@contextmanager
def use_batch(runner: BatchRunner | None) -> Iterator[None]:
    """Within the block, tools configured in `runner.config.tools` run as Batch jobs (None: all run locally)."""
    token = _CURRENT.set(runner)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def runner_for(tool: str) -> BatchRunner | None:
    """The Batch runner that should run `tool` in this context, or None to run it here."""
    runner = _CURRENT.get()
    return runner if runner is not None and runner.config.resources_for(tool) is not None else None
