"""Small bridges between plain domain code and a Prefect run: a logger and a progress reporter.

Domain functions take plain callables (`log`, `progress`); these give them the Prefect versions when a run
is active and quiet fallbacks otherwise, so the same code runs in a flow, in a test or in a script.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prefect.context import FlowRunContext, TaskRunContext

_fallback = logging.getLogger("genoflows")


def retry_unless(*permanent: type[BaseException]):
    """A Prefect `retry_condition_fn`: retry any failure except the `permanent` exception types
    (a 404, AccessDenied or a bad input fails on its first attempt instead of after every backoff)."""

    def condition(task, task_run, state) -> bool:
        try:
            state.result()
        except permanent:
            return False
        except BaseException:  # noqa: BLE001 - anything else is worth another attempt
            return True
        return False

    return condition


def transient_retry_options(*permanent: type[BaseException]) -> dict:
    """The one retry policy for calls to outside services (S3, HTTP mirrors, ENA, imputation servers).

    Exponential backoff from `GENOFLOWS_RETRY_BASE_DELAY_SECONDS`, capped at `GENOFLOWS_RETRY_MAX_DELAY_SECONDS`,
    `GENOFLOWS_RETRY_ATTEMPTS` times (the defaults ride out an outage of several minutes), never retrying the
    `permanent` exception types. Apply per call, so settings changed after import count:
    `some_task.with_options(**transient_retry_options(PermanentFetchError))`.
    """
    from genoflows.settings import get_settings

    s = get_settings()
    delays = [min(s.retry_max_delay_seconds, s.retry_base_delay_seconds * 2**i) for i in range(s.retry_attempts)]
    return {
        "retries": s.retry_attempts,
        "retry_delay_seconds": delays or 0,
        "retry_jitter_factor": 0.2,
        "retry_condition_fn": retry_unless(*permanent),
    }


def in_prefect_run() -> bool:
    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, else the `genoflows` logger."""
    if in_prefect_run():
        from prefect import get_run_logger

        return get_run_logger()
    return _fallback


def log_lines() -> Callable[[str], None]:
    """A line sink for tool output: the run log at INFO."""
    logger = run_logger()
    return logger.info


def artifact_key(*parts: str) -> str:
    """A valid Prefect artifact key from free text: lowercase letters, digits and dashes (at most 100 chars;
    a long one keeps a hash of the whole so keys stay distinct)."""
    import hashlib
    import re

    text = "-".join(parts)
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "artifact"
    if len(key) > 100:
        key = f"{key[:90].rstrip('-')}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return key


_progress_artifacts: dict[tuple[str, str], object] = {}  # (task run id, key) -> artifact id, across retries
_progress_lock = threading.Lock()


class ProgressReporter:
    """Feeds one keyed Prefect progress artifact from (done, total) callbacks, at most once per `interval` s.

    The artifact is created on the first callback whose total (or bytes so far) reaches `min_total` (default
    settings.progress_artifact_min_bytes), so small downloads make none; retries of the same task run update
    the same artifact in place. Outside a Prefect run it only remembers the numbers.
    """

    def __init__(self, description: str, *, key: str | None = None, interval: float = 2.0,
                 min_total: int | None = None):
        from genoflows.settings import get_settings

        self.description, self.interval = description, interval
        self.key = key or artifact_key(description)
        self.min_total = get_settings().progress_artifact_min_bytes if min_total is None else min_total
        self._artifact_id = None
        self._last = 0.0
        self._lock = threading.Lock()
        self.done, self.total = 0, None
        ctx = TaskRunContext.get()
        self._scope = str(ctx.task_run.id) if ctx is not None else None
        if self._scope is None and (flow_ctx := FlowRunContext.get()) is not None and flow_ctx.flow_run:
            self._scope = str(flow_ctx.flow_run.id)

    def _artifact(self, done: int, total: int | None):
        """The artifact id, created when this transfer is big enough to be worth one."""
        if self._artifact_id is not None or self._scope is None:
            return self._artifact_id
        if max(total or 0, done) < self.min_total:
            return None
        with _progress_lock:
            self._artifact_id = _progress_artifacts.get((self._scope, self.key))
            if self._artifact_id is None:
                from prefect.artifacts import create_progress_artifact

                self._artifact_id = create_progress_artifact(0.0, key=self.key, description=self.description)
                _progress_artifacts[(self._scope, self.key)] = self._artifact_id
        return self._artifact_id

    def __call__(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total
        now = time.monotonic()
        with self._lock:
            if not total or (now - self._last < self.interval and done < total):
                return
            artifact_id = self._artifact(done, total)
            if artifact_id is None:
                return
            self._last = now
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(artifact_id, min(100.0, 100.0 * done / total))
