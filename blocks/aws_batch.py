"""Which tool calls run as AWS Batch jobs, and where: configuration on the Prefect server, not in flow code."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import BaseModel, Field

from genoflows.batch import BatchConfig, BatchResources, BatchRunner, use_batch


class BatchToolResources(BaseModel):
    """What one tool's jobs ask for (e.g. regenie: 4 vCPU / 16384 MiB for 1K–10K samples)."""

    vcpus: float | None = Field(None, gt=0, description="vCPUs per job; empty = the job definition's")
    memory_mib: int | None = Field(None, gt=0, description="memory per job in MiB; empty = the job definition's")
    job_definition: str | None = Field(None, description="a job definition for this tool only (other image)")


class AwsBatch(Block):
    """Run the listed tools (regenie, kallisto, minimac4, …) as AWS Batch jobs; all others run in the flow."""

    _block_type_name = "Genoflows AWS Batch"
    _block_type_slug = "genoflows-aws-batch"
    _description = "AWS Batch queue, job definition, S3 staging prefix and per-tool vCPU/memory for heavy tool calls."

    aws_credentials: AwsCredentials = Field(default_factory=AwsCredentials, description="credentials and region")
    job_queue: str = Field(..., description="Batch job queue name or ARN")
    job_definition: str = Field(..., description="job definition whose image has genoflows and the tools")
    staging_uri: str = Field(..., pattern=r"^s3://[^/]+", description="s3:// prefix where inputs and outputs travel")
    tools: dict[str, BatchToolResources] = Field(
        default_factory=dict, description="tool name -> resources; only these tools go to Batch"
    )
    poll_initial_seconds: float = Field(2.0, gt=0, description="first describe_jobs interval")
    poll_max_seconds: float = Field(30.0, gt=0, description="longest describe_jobs interval")

    def runner(self) -> BatchRunner:
        config = BatchConfig(
            job_queue=self.job_queue,
            job_definition=self.job_definition,
            staging_uri=self.staging_uri,
            tools={name: BatchResources(**res.model_dump()) for name, res in self.tools.items()},
            poll_initial_seconds=self.poll_initial_seconds,
            poll_max_seconds=self.poll_max_seconds,
        )
        creds = self.aws_credentials
        return BatchRunner(config, creds.get_client("batch"), creds.get_client("s3"), creds.get_client("logs"))

    def applied(self) -> AbstractContextManager[None]:
        """Within the block, the configured tools run on Batch (for the current flow run's context only)."""
        return use_batch(self.runner())


def batch_for(block: AwsBatch | None) -> AbstractContextManager[None]:
    """`block.applied()`, or nothing when no block is given (every tool runs where the flow runs)."""
    return block.applied() if block is not None else nullcontext()
