"""A local compute environment for moto's AWS Batch: jobs run as real local processes.

moto in server mode implements the Batch and CloudWatch Logs APIs, but its Docker-free backend marks every job
SUCCEEDED the moment it is submitted: nothing runs, nothing logs, nothing can be cancelled. Real AWS lets an
UNMANAGED compute environment's own agent run the jobs; this module is such an agent for the moto server running
in the test process. A submitted job goes RUNNABLE → RUNNING, its command (the job's container command, with
`python` meaning this interpreter) runs in a subprocess whose environment is the job's plus the S3/logs endpoint,
its output lines go to CloudWatch Logs (`/aws/batch/job`, the job's stream), `terminate_job` kills it, and it ends
SUCCEEDED or FAILED with its exit code. Faults a real queue shows are injected for the next jobs (`agent.faults = ["host", "ok", "oom"]`):
`oom` (exit 137, "OutOfMemoryError: Container killed due to memory usage"), `host` (the host goes away:
"Host EC2 (instance i-…) terminated."), and `throttle_describe(n)` makes the next n describe_jobs calls 429.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Agent:
    endpoint: str
    faults: list[str] = field(default_factory=list)  # the next jobs' fates: "oom" | "host" | "pull" | "ok"
    submitted: list[dict] = field(default_factory=list)  # the containerOverrides of every job, as received
    throttle_remaining: int = 0
    describe_calls: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)

    def throttle_describe(self, n: int) -> None:
        self.throttle_remaining = n

    def _run(self, job, fault: str | None) -> None:
        from moto.batch.models import JobStatus

        job.status = JobStatus.RUNNING
        logs = job._log_backend
        logs.ensure_log_group(job._log_group)
        logs.ensure_log_stream(job._log_group, job._stream_name)
        job.log_stream_name = job._stream_name

        def emit(line: str) -> None:
            logs.put_log_events(job._log_group, job._stream_name,
                                [{"timestamp": int(time.time() * 1000), "message": line}])

        overrides = job.container_overrides or {}
        command = list(overrides.get("command") or job.job_definition.container_properties.get("command", []))
        if command and command[0] == "python":
            command[0] = sys.executable
        env = {**os.environ, **{e["name"]: e["value"] for e in overrides.get("environment", [])}}
        env.update(AWS_ENDPOINT_URL=self.endpoint, AWS_BATCH_JOB_ID=job.job_id)
        reason, exit_code = None, None
        with tempfile.TemporaryDirectory(prefix="batch-scratch-") as scratch:
            env["GENOFLOWS_BATCH_SCRATCH"] = scratch
            if fault == "host":
                time.sleep(0.2)
                reason, exit_code = None, None
                job.job_stopped_reason = "Host EC2 (instance i-0123456789abcdef0) terminated."
            elif fault == "pull":  # the image never starts: what Batch reports for a missing or private image
                reason = ("CannotPullContainerError: pull image manifest has been retried 1 time(s): "
                          "failed to resolve ref registry.example/genoflows:missing: not found")
                job.job_stopped_reason = "Task failed to start"
            else:
                proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                reader = threading.Thread(target=lambda: [emit(raw.decode(errors="replace").rstrip("\n"))
                                                          for raw in proc.stdout], daemon=True)
                reader.start()
                while proc.poll() is None:
                    if job.stop:
                        proc.terminate()
                        proc.wait(10)
                        break
                    time.sleep(0.05)
                reader.join(5)
                exit_code = proc.returncode
                if fault == "oom":
                    exit_code, reason = 137, "OutOfMemoryError: Container killed due to memory usage"
        job.exit_code = exit_code
        if job.latest_attempt is not None:
            job.latest_attempt["container"].update({"exitCode": exit_code, **({"reason": reason} if reason else {})})
        if job.stop and job.job_stopped_reason is None:
            job.job_stopped_reason = "Terminated"
        job._mark_stopped(success=exit_code == 0 and not job.stop and fault is None)

    def start(self, job) -> None:
        from moto.batch.models import JobStatus

        self.submitted.append(dict(job.container_overrides or {}))
        job.status = JobStatus.RUNNABLE
        fault = self.faults.pop(0) if self.faults else None
        t = threading.Thread(target=self._run, args=(job, None if fault == "ok" else fault), daemon=True)
        self._threads.append(t)
        t.start()


@contextmanager
def local_batch(endpoint: str) -> Iterator[Agent]:
    """Within the block, jobs submitted to the moto server in this process run as local processes."""
    import httpx
    from moto.batch.models import BatchBackend
    from moto.batch_simple.models import BatchSimpleBackend
    from moto.core.exceptions import JsonRESTError
    from moto.moto_api import state_manager

    httpx.post(f"{endpoint}/moto-api/config", json={"batch": {"use_docker": False}}).raise_for_status()
    state_manager.set_transition("batch::job", {"progression": "manual", "times": 10**9})
    agent = Agent(endpoint)

    def mark(self, include_start_attempt, job):  # replaces "mark finished at once"
        self.backend._jobs[job.job_id] = job
        job.job_started_at = __import__("datetime").datetime.now()
        job.log_stream_name = job._stream_name
        if include_start_attempt:
            job._start_attempt()
        agent.start(job)

    original_describe = BatchBackend.describe_jobs

    def describe_jobs(self, job_ids):
        agent.describe_calls += 1
        if agent.throttle_remaining > 0:
            agent.throttle_remaining -= 1
            raise JsonRESTError("TooManyRequestsException", "Too Many Requests")
        return original_describe(self, job_ids)

    saved_mark = BatchSimpleBackend._mark_job_as_finished
    BatchSimpleBackend._mark_job_as_finished = mark
    BatchBackend.describe_jobs = describe_jobs
    try:
        yield agent
    finally:
        BatchSimpleBackend._mark_job_as_finished = saved_mark
        BatchBackend.describe_jobs = original_describe
        state_manager.unset_transition("batch::job")
        for t in agent._threads:
            t.join(10)


def create_queue(endpoint: str, *, queue: str = "genoflows-tools", definition: str = "genoflows-tool",
                 image: str = "genoflows:latest") -> None:
    """The compute environment, queue and job definition deployments/batch/ describes, on the moto server."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    try:
        role = iam.create_role(RoleName="genoflows-batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        role = iam.get_role(RoleName="genoflows-batch-service")["Role"]["Arn"]
    batch = boto3.client("batch", endpoint_url=endpoint, region_name="us-east-1")
    if not batch.describe_compute_environments(computeEnvironments=["genoflows-local"])["computeEnvironments"]:
        batch.create_compute_environment(computeEnvironmentName="genoflows-local", type="UNMANAGED",
                                         serviceRole=role)
    if not batch.describe_job_queues(jobQueues=[queue])["jobQueues"]:
        batch.create_job_queue(jobQueueName=queue, state="ENABLED", priority=1,
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "genoflows-local"}])
    batch.register_job_definition(
        jobDefinitionName=definition, type="container",
        containerProperties={"image": image, "command": ["python", "-m", "genoflows.batch_entry"],
                             "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                                      {"type": "MEMORY", "value": "2048"}]},
    )


def batch_block(endpoint: str, tools: Mapping[str, tuple[int, int]], *, bucket: str | None = None,
                prefix: str = "jobs", poll: tuple[float, float] = (0.1, 0.5)):
    """An AwsBatch block on the moto server, with its staging bucket, queue and job definition created: the
    tests' one way to send `tools` (name -> (vCPUs, memory MiB)) to Batch."""
    import uuid

    import boto3
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks.aws_batch import AwsBatch, BatchToolResources

    bucket = bucket or f"batch-staging-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    create_queue(endpoint)
    return AwsBatch(
        aws_credentials=AwsCredentials(region_name="us-east-1",
                                       aws_client_parameters=AwsClientParameters(endpoint_url=endpoint)),
        job_queue="genoflows-tools", job_definition="genoflows-tool", staging_uri=f"s3://{bucket}/{prefix}",
        tools={name: BatchToolResources(vcpus=v, memory_mib=m) for name, (v, m) in tools.items()},
        poll_initial_seconds=poll[0], poll_max_seconds=poll[1],
    )
