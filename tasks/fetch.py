"""The fetch task: `genoflows.fetch.fetch` as a Prefect task with one keyed progress artifact per file.

Retries follow the project's one policy for outside services; apply it at call time so GENOFLOWS_RETRY_*
settings count (docs/fetch.md):

    fetch_file.with_options(**transient_retry_options(PermanentFetchError))(uri, dest, ...)

When the last attempt fails, the partial download kept for resuming is removed: no temp file survives.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from genoflows.fetch import FetchResult, PermanentFetchError, discard_partial, fetch, redact_url
from tasks.runtime import ProgressReporter, artifact_key, run_logger, transient_retry_options

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials


@task(
    # The project's policy as configured at import, for a bare call; callers apply it again at call time
    # (fetch_retry_options) so settings changed since count. Never retried: 4xx, AccessDenied, disk full, a bad
    # source file (PermanentFetchError and its subclasses).
    **transient_retry_options(PermanentFetchError),
    task_run_name="fetch {dest.name}",
    cache_policy=NO_CACHE,  # a block object among the parameters; fetch() is its own cache
)
def fetch_file(
    uri: str,
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    s3_endpoint_url: str | None = None,
    aws_credentials: AwsCredentials | None = None,
    kind: str | None = None,
    missing_ok: bool = False,
) -> FetchResult | None:
    """Bring `uri` to `dest`, verified (size, checksums, content of `kind`), atomically; a cache hit is
    re-checked and healed when it fails. `aws_credentials` is a prefect-aws AwsCredentials block object.
    `missing_ok`: a definite 404 returns None (the task completes) instead of failing."""
    from genoflows.fetch import s3_client

    logger = run_logger()
    dest = Path(dest)
    progress = ProgressReporter(f"Downloading {dest.name}", key=artifact_key("fetch", dest.name))
    client = s3_client(s3_endpoint_url, aws_credentials) if uri.startswith("s3://") else None
    try:
        result = fetch(uri, dest, md5=md5, sha256=sha256, size=size, kind=kind, progress=progress,
                       s3_client=client, log=logger.warning, missing_ok=missing_ok)
    except Exception:
        ctx = TaskRunContext.get()
        if ctx is None or ctx.task_run.run_count > ctx.task.retries:  # the last attempt: nothing to resume
            discard_partial(dest)
        raise
    if result is None:
        logger.info("%s: not published (404)", redact_url(uri))
    elif result.downloaded:
        logger.info("fetched %s -> %s (%d bytes, verified)%s", redact_url(uri), result.path, result.size,
                    "; replaced a cached copy that failed its check" if result.healed else "")
    else:
        logger.info("cached: %s already complete and verified", result.path)
    return result


def fetch_retry_options() -> dict:
    """`transient_retry_options(PermanentFetchError)`: the project's retry policy as configured now."""
    return transient_retry_options(PermanentFetchError)
