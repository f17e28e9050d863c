"""The fetch task: `genoflows.fetch.fetch` with Prefect retries, backoff and a progress artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from genoflows.fetch import FetchResult, PermanentFetchError, fetch
from tasks.runtime import ProgressReporter, retry_unless, run_logger


@task(
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless(PermanentFetchError),  # 4xx, AccessDenied, disk full
    task_run_name="fetch {dest.name}",
)
def fetch_file(
    uri: str,
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    s3_endpoint_url: str | None = None,
    aws_credentials_block: str | None = None,
) -> FetchResult:
    """Bring `uri` to `dest` (verified, atomic; a no-op when `dest` is already there)."""
    from genoflows.fetch import s3_client

    logger = run_logger()
    progress = ProgressReporter(f"Downloading {Path(dest).name}")
    client = s3_client(s3_endpoint_url, aws_credentials_block) if uri.startswith("s3://") else None
    result = fetch(uri, Path(dest), md5=md5, sha256=sha256, size=size, progress=progress, s3_client=client)
    if result.downloaded:
        logger.info("fetched %s -> %s (%d bytes)", uri, result.path, result.size)
    else:
        logger.info("cached: %s already complete", result.path)
    return result
