"""Stream runs through download -> quantify -> delete under a disk budget, with no batch barrier.

A run reserves its bytes before its download starts and gives them back once its FASTQs are deleted, so
the sum of reservations bounds the disk. Downloads run up to `max_downloads` at a time, quantifications
up to `quant_workers`; a run is quantified as soon as its download is verified, and freed bytes admit
the next runs. One run failing is recorded and the rest go on.

Admission order is largest first (sizes are resolved up front), so the last downloads, when fewer than
`max_downloads` remain, are short. When the largest waiting run (the head) does not fit, a smaller run may
go first only if it cannot delay the head by bytes: every in-flight run whose release alone would make room
for the head must still make room for it with the smaller run added. (Download slots are not held for the
head: when it fits it waits at most for one download to end.) A run that can never fit because bytes are
held by files that could not be deleted is failed at once, and smaller runs go on.

Interrupted (Ctrl-C, or Prefect's cancellation, which raises in the flow's thread), `run` sets the `stop`
event and re-raises at once without waiting for work in flight: nothing new starts, and steps that watch
the event (downloads, between chunks) end early. What is left on disk is cleared by the next flow run.

The three steps are plain callables, so the logic is tested with fakes; the flow passes functions that
call Prefect tasks. Work runs in a thread pool and each submission carries a copy of the caller's
context (what Prefect's ThreadPoolTaskRunner does), so tasks called there belong to the flow run.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


STOP_GRACE_SECONDS = 20.0  # after a stop, how long run() waits for its workers to notice before returning


class Stopped(RuntimeError):
    """The stream is stopping (interrupted or cancelled): raised by steps that see the stop event."""


class ByteBudget:
    """A byte semaphore for disk: non-blocking reserve, release, and the highest total ever reserved."""

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError(f"disk budget must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.reserved = 0
        self.high_water = 0
        self._lock = threading.Lock()

    def try_reserve(self, n: int) -> bool:
        with self._lock:
            if self.reserved + n > self.capacity:
                return False
            self.reserved += n
            self.high_water = max(self.high_water, self.reserved)
            return True

    def release(self, n: int) -> None:
        with self._lock:
            if n > self.reserved:
                raise RuntimeError(f"releasing {n} bytes but only {self.reserved} are reserved")
            self.reserved -= n


@dataclass(frozen=True)
class Job:
    key: str
    need_bytes: int
    payload: Any


@dataclass
class StreamReport:
    done: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    cleanup_failed: dict[str, str] = field(default_factory=dict)  # quantified, but files left on disk
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, key) for tests/benchmarks
    reserved_high_water: int = 0
    wall_seconds: float = 0.0


Event = Callable[[str, str, Any], None]


class StreamScheduler:
    """Run jobs through download/quant/cleanup callables; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        budget_bytes: int,
        max_downloads: int,
        quant_workers: int,
        download: Callable[[Any], Any],
        quant: Callable[[Any, Any], Any],
        cleanup: Callable[[Any], None],
        on_event: Event | None = None,
        largest_first: bool = True,
        stop: threading.Event | None = None,
    ):
        if max_downloads < 1 or quant_workers < 1:
            raise ValueError("max_downloads and quant_workers must be >= 1")
        self.budget = ByteBudget(budget_bytes)
        self.max_downloads, self.quant_workers = max_downloads, quant_workers
        self._download, self._quant, self._cleanup = download, quant, cleanup
        self._on_event = on_event
        self.largest_first = largest_first
        self.stop = stop or threading.Event()  # set when run() is interrupted; give it to the steps too
        self.report = StreamReport()
        self._t0 = 0.0
        self._held = 0  # bytes of runs whose files could not be deleted: reserved for good

    def _event(self, kind: str, key: str, info: Any = None) -> None:
        self.report.events.append((time.monotonic() - self._t0, kind, key))
        if self._on_event is not None:
            try:
                self._on_event(kind, key, info)
            except Exception:  # noqa: BLE001 - a progress display must never stop the pipeline
                _log.warning("progress callback failed on %s %s", kind, key, exc_info=True)

    def _fail(self, job: Job, reason: str) -> None:
        self.report.failed[job.key] = reason
        self._event("failed", job.key, reason)

    def _finish(self, job: Job) -> None:
        """Delete the run's files, then give its bytes back; if deletion fails the bytes stay reserved."""
        try:
            self._cleanup(job.payload)
        except Exception as exc:  # noqa: BLE001 - recorded; the disk is still in use, so is the budget
            self.report.cleanup_failed[job.key] = _reason(exc)
            self._held += job.need_bytes
            self._event("cleanup_failed", job.key, _reason(exc))
            return
        self.budget.release(job.need_bytes)

    def _exhausted(self, job: Job) -> None:
        self._fail(job, f"disk budget exhausted: {human_bytes(self._held)} of {human_bytes(self.budget.capacity)} "
                        f"still held by runs whose files could not be deleted ({', '.join(self.report.cleanup_failed)})")  # fmt: skip

    def _may_pass(self, head: Job, job: Job, in_flight: list[int]) -> bool:
        """May `job` start before the blocked `head`? Only if no single release that would admit the head is
        made too small by it (durations are unknown, so any in-flight run may end first), and, when only several
        releases together admit the head, only if the head fits after all of them with `job` still on disk."""
        free = self.budget.capacity - self.budget.reserved
        enough = [n for n in in_flight if free + n >= head.need_bytes]
        if enough:
            return job.need_bytes <= free + min(enough) - head.need_bytes
        # the head needs several releases: `job` may run if the head still fits once all of them are made
        return job.need_bytes <= free + sum(in_flight) - head.need_bytes

    def _start(self, fn: Callable, *args: Any) -> Any:
        if self.stop.is_set():
            raise Stopped("the stream is stopping: not started")
        return fn(*args)

    def run(self, jobs: Iterable[Job]) -> StreamReport:
        self._t0 = time.monotonic()
        pending: list[Job] = []
        for job in jobs:
            if job.need_bytes > self.budget.capacity:
                self._fail(job, f"needs {human_bytes(job.need_bytes)} ({job.need_bytes} bytes) of disk but the whole "
                                f"budget is {human_bytes(self.budget.capacity)} ({self.budget.capacity} bytes); "
                                "raise disk_budget to run it")  # fmt: skip
            else:
                pending.append(job)
        if self.largest_first:  # sizes are known up front: big runs first leave small ones for the tail
            pending.sort(key=lambda j: -j.need_bytes)
        downloads: dict[Future, Job] = {}
        quants: dict[Future, Job] = {}
        ready: deque[tuple[Job, Any]] = deque()
        pool = ThreadPoolExecutor(self.max_downloads + self.quant_workers, thread_name_prefix="stream")

        def submit(fn: Callable, *args: Any) -> Future:
            return pool.submit(contextvars.copy_context().run, self._start, fn, *args)

        try:
            while pending or downloads or quants or ready:
                while ready and len(quants) < self.quant_workers:
                    job, local = ready.popleft()
                    quants[submit(self._quant, job.payload, local)] = job
                    self._event("quant_started", job.key)
                in_flight = [j.need_bytes for j in (*downloads.values(), *quants.values(), *(j for j, _ in ready))]
                i = 0  # pending[0] is the head; pending[i > 0] may pass it (see the module docstring)
                while len(downloads) < self.max_downloads and i < len(pending):
                    job = pending[i]
                    if i == 0 and job.need_bytes > self.budget.capacity - self._held:
                        self._exhausted(pending.pop(0))  # can never fit: do not let it block the rest
                    elif (i == 0 or self._may_pass(pending[0], job, in_flight)) and self.budget.try_reserve(job.need_bytes):
                        pending.pop(i)
                        downloads[submit(self._download, job.payload)] = job
                        in_flight.append(job.need_bytes)
                        self._event("admitted", job.key, job.need_bytes)
                    else:
                        i += 1
                if not downloads and not quants:
                    if ready:
                        continue  # the top of the loop admits it
                    for job in pending:  # unreachable: with nothing running the head fits or has been failed
                        self._exhausted(job)
                    break
                done, _ = wait([*downloads, *quants], return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut in downloads:
                        job = downloads.pop(fut)
                        if (exc := fut.exception()) is not None:
                            self._fail(job, f"download: {_reason(exc)}")
                            self._finish(job)
                        else:
                            ready.append((job, fut.result()))
                            self._event("downloaded", job.key, fut.result())
                    else:
                        job = quants.pop(fut)
                        if (exc := fut.exception()) is not None:
                            self._fail(job, f"quant: {_reason(exc)}")
                            self._finish(job)
                        else:
                            self._finish(job)
                            self.report.done[job.key] = fut.result()
                            self._event("quantified", job.key, fut.result())
        except BaseException:  # KeyboardInterrupt, Prefect's TerminationSignal, or a bug: stop, do not wait
            self.stop.set()
            raise
        finally:
            if self.stop.is_set():  # workers see `stop` within seconds (tools are terminated, downloads end at
                pool.shutdown(wait=False, cancel_futures=True)  # their next chunk): wait for them, but boundedly,
                wait([*downloads, *quants], timeout=STOP_GRACE_SECONDS)  # so the caller's lock outlives them
            else:
                pool.shutdown(wait=True)
            self.report.reserved_high_water = self.budget.high_water
            self.report.wall_seconds = time.monotonic() - self._t0
        return self.report


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}"


def dir_bytes(path: Path) -> int:
    """Apparent size of everything under `path` (partial downloads included)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


class DiskSampler:
    """Samples a directory's size in a thread; `.high_water` is the largest size seen."""

    def __init__(self, path: Path, interval: float = 0.1):
        self.path, self.interval = Path(path), interval
        self.high_water = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="disk-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.high_water = max(self.high_water, dir_bytes(self.path))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.high_water = max(self.high_water, dir_bytes(self.path))
