"""Stream runs through download -> quantify -> delete under a disk budget and a connection limit, no barriers.

Units: a *run* is admitted when its bytes fit the budget; its *files* then download in parallel, one
connection each. Bytes are reserved per file (plus, for an `.sra`, the room fasterq-dump needs), and given
back once the run's files are deleted, so the sum of reservations bounds the disk. Connections are the
download slots: runs are admitted while fewer files want a connection than there are connections, so every
connection stays busy while the budget allows (a few files more are admitted than there are connections: they
wait on a connection semaphore and take a freed connection at once). A run is quantified as soon as all its files are verified
(up to `quant_workers` at once); freed bytes admit the next runs. One run failing is recorded and the rest go on.

A file attempt that fails transiently is retried by its step (Prefect's retry policy) *without* holding a
connection while it waits, and, when nothing of it is left on disk, without holding its bytes either: the
scheduler admits other runs meanwhile, and the retry re-reserves its bytes with priority over new runs and takes
the next free connection before files waiting for their first attempt (a retry chain is sequential: every wait
behind other files would lengthen the tail). A transfer gives its connection back as soon as its last byte is
in (`FileLease.transferred`), so verifying the file (checksums, a full gzip/FASTQ read) never idles a connection.
When the final attempt of a file fails, the run's other files stop at their next chunk and the run fails.

Admission order is largest first (sizes are resolved up front), so the last downloads are short; files take
free connections in the order they were admitted. When the
largest waiting run (the head) does not fit, a smaller run may go first only if it cannot delay the head by
bytes: every in-flight run whose release alone would make room for the head must still make room for it with
the smaller run added. A run that can never fit because bytes are held by files that could not be deleted is
failed at once, and smaller runs go on. The budget and the connections may also be shared with other flow
runs (`SharedLimit`, a Prefect global concurrency limit): then a reservation must fit both.

A machine-wide failure (`fatal(exc)` true, e.g. disk full) stops admissions: runs not started are failed
with that reason and `report.fatal` says why, so the caller can fail the flow run.

Interrupted (Ctrl-C, or Prefect's cancellation, which raises in the flow's thread), `run` sets the `stop`
event and re-raises at once without waiting for work in flight: nothing new starts, and steps that watch
the event (downloads, between chunks) end early. What is left on disk is cleared by the next flow run.

The steps are plain callables, so the logic is tested with fakes; the flow passes functions that call
Prefect tasks. Work runs in a thread pool and each submission carries a copy of the caller's context (what
Prefect's ThreadPoolTaskRunner does), so tasks called there belong to the flow run.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

_log = logging.getLogger(__name__)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


STOP_GRACE_SECONDS = 20.0  # after a stop, how long run() waits for its workers to notice before returning
POLL_SECONDS = 0.2  # how often the scheduler looks again when it waits on others (retries, shared limits)


class Stopped(RuntimeError):
    """The stream is stopping (interrupted, cancelled, or the run failed): raised by steps that see the event."""


class SharedLimit(Protocol):
    """A counting semaphore shared with other processes (a Prefect global concurrency limit)."""

    def try_acquire(self, n: int) -> Any | None: ...  # a handle, or None when it does not fit now

    def release(self, handle: Any) -> None: ...


@dataclass
class Token:
    """Bytes reserved in a ByteBudget (and the shared limit's handle for them)."""

    n: int
    handle: Any = None


class ByteBudget:
    """A byte semaphore for disk: all-or-nothing `try_reserve`, a blocking `reserve` that goes before them
    (retries of files already admitted), release, and the highest total ever reserved."""

    def __init__(self, capacity: int, shared: SharedLimit | None = None):
        if capacity <= 0:
            raise ValueError(f"disk budget must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.shared = shared
        self.reserved = 0
        self.high_water = 0
        self._priority = 0
        self._cond = threading.Condition()
        self.shared_refused = False  # the shared limit said no in the current admission round

    def _take(self, sizes: list[int]) -> list[Token] | None:
        if self.reserved + sum(sizes) > self.capacity:
            return None
        tokens: list[Token] = []
        for n in sizes:
            handle = None
            if self.shared is not None and n > 0:
                handle = self.shared.try_acquire(n)
                if handle is None:
                    self.shared_refused = True
                    for t in tokens:
                        if t.handle is not None:
                            self.shared.release(t.handle)
                    return None
            tokens.append(Token(n, handle))
        self.reserved += sum(sizes)
        self.high_water = max(self.high_water, self.reserved)
        return tokens

    def try_reserve(self, sizes: list[int] | int) -> list[Token] | None:
        """Reserve all of `sizes` or nothing; never while a retry waits for bytes (it goes first)."""
        sizes = [sizes] if isinstance(sizes, int) else list(sizes)
        with self._cond:
            return None if self._priority else self._take(sizes)

    def reserve(self, n: int, stop: threading.Event | None = None) -> Token:
        """Block until `n` bytes fit (a retrying file taking back its share); Stopped when `stop` is set."""
        with self._cond:
            self._priority += 1
            try:
                while (got := self._take([n])) is None:
                    if stop is not None and stop.is_set():
                        raise Stopped("the stream is stopping: no bytes reserved")
                    self._cond.wait(POLL_SECONDS)
                return got[0]
            finally:
                self._priority -= 1

    def release(self, token: Token | int) -> None:
        token = Token(token) if isinstance(token, int) else token
        with self._cond:
            if token.n > self.reserved:
                raise RuntimeError(f"releasing {token.n} bytes but only {self.reserved} are reserved")
            self.reserved -= token.n
            if token.handle is not None and self.shared is not None:
                self.shared.release(token.handle)
            self._cond.notify_all()


class Connections:
    """Download slots: at most `limit` files transfer at once (and, if given, within a shared limit too).

    `demand` counts files that hold or want a connection; a file waiting for its retry, or verifying what it
    received, does not count."""

    def __init__(self, limit: int, shared_slot: Callable[[], contextlib.AbstractContextManager] | None = None):
        if limit < 1:
            raise ValueError(f"connections must be >= 1, got {limit}")
        self.limit = limit
        self._free = limit
        self._urgent = 0  # retries waiting for a connection: they go before first attempts
        self._line: deque[object] = deque()  # first attempts waiting, served in arrival (= admission) order
        self._cond = threading.Condition()
        self._shared_slot = shared_slot
        self._lock = threading.Lock()
        self.demand = 0
        self.active = 0
        self.max_active = 0
        self.on_free: Callable[[], None] | None = None

    def want(self, delta: int) -> None:
        with self._lock:
            self.demand += delta
        if delta < 0 and self.on_free is not None:
            self.on_free()  # a connection is free for another file: let the scheduler admit now

    def acquire(self, stop: threading.Event | None = None, *, urgent: bool = False) -> Held:
        """Take a connection (waiting, but Stopped when `stop` is set); give it back with `Held.release()`.
        `urgent` (a retry) goes before every file waiting for its first attempt: a failing file's retries are a
        chain of whole transfers, and each wait behind queued files would lengthen the stream's tail."""
        me = object()
        with self._cond:
            if urgent:
                self._urgent += 1
            else:
                self._line.append(me)
            try:
                while self._free == 0 or (not urgent and (self._urgent or self._line[0] is not me)):
                    if stop is not None and stop.is_set():
                        raise Stopped("the stream is stopping: no connection taken")
                    self._cond.wait(POLL_SECONDS)
                self._free -= 1
            finally:
                if urgent:
                    self._urgent -= 1
                else:
                    self._line.remove(me)
                self._cond.notify_all()  # the next in line may go
        held = Held(self)
        try:
            if self._shared_slot is not None:
                held.stack.enter_context(self._shared_slot())
        except BaseException:
            self._give_back()
            raise
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        return held

    def _give_back(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def slot(self, stop: threading.Event | None = None, *, urgent: bool = False) -> Iterator[Held]:
        held = self.acquire(stop, urgent=urgent)
        try:
            yield held
        finally:
            held.release()


class Held:
    """One connection taken from `Connections`; `release()` gives it back (once, however often it is called), so
    a transfer can free it as soon as its last byte is in, before the file is verified."""

    def __init__(self, conns: Connections):
        self.conns = conns
        self.stack = contextlib.ExitStack()  # the shared limit's slot, when there is one
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        with self.conns._lock:
            self.conns.active -= 1
        try:
            self.stack.close()
        finally:
            self.conns._give_back()


class FileLease:
    """What one file download holds: its bytes (maybe given back while it waits for a retry), its place in
    the connection demand, and the run's stop event. Steps wrap each attempt in `attempt()`, and call
    `transferred()` once the last byte is in: the connection goes to the next file while this one is verified."""

    def __init__(self, budget: ByteBudget, conns: Connections, token: Token, stop: threading.Event):
        self.budget, self.conns, self.stop = budget, conns, stop
        self.token: Token | None = token
        self.size = token.n
        self.counted = True  # in conns.demand (set at submission)
        self.attempts = 0
        self._held: Held | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.stop.is_set():
            raise Stopped("download stopped: the run failed or the flow run is stopping")

    @contextlib.contextmanager
    def attempt(self, kept: Callable[[], int] = lambda: 0) -> Iterator[None]:
        """One try at the file: take back its bytes if given away, take a connection, transfer. On failure the
        connection is freed and, when `kept()` says nothing is left on disk, the bytes too, until the next try."""
        self.check()
        with self._lock:
            self.attempts += 1
            if not self.counted:
                self.counted = True
                self.conns.want(+1)
        try:
            if self.token is None:
                self.token = self.budget.reserve(self.size, self.stop)
            with self.conns.slot(self.stop, urgent=self.attempts > 1) as held:
                self._held = held
                try:
                    yield
                finally:
                    self._held = None
        except BaseException:
            if self.token is not None and kept() == 0:
                token, self.token = self.token, None
                self.budget.release(token)
            raise
        finally:
            self.uncount()

    def transferred(self) -> None:
        """The transfer is over (the last byte arrived): free the connection now, keep the bytes; verification
        goes on without it."""
        held = self._held
        if held is not None:
            held.release()
            self.uncount()

    def uncount(self) -> None:
        with self._lock:
            if self.counted:
                self.counted = False
                self.conns.want(-1)

    def give_back(self) -> None:
        if self.token is not None:
            token, self.token = self.token, None
            self.budget.release(token)


@dataclass(frozen=True)
class Job:
    """A run: its whole reservation, the sizes of the files to download (one connection each; the rest of
    `need_bytes` is room for conversion), and what the steps get."""

    key: str
    need_bytes: int
    payload: Any
    files: tuple[int, ...] = ()

    @property
    def file_sizes(self) -> list[int]:
        return list(self.files) if self.files else [self.need_bytes]


@dataclass
class StreamReport:
    done: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    cleanup_failed: dict[str, str] = field(default_factory=dict)  # quantified, but files left on disk
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, key) for tests/benchmarks
    reserved_high_water: int = 0
    max_connections: int = 0
    fatal: str | None = None  # a machine-wide failure that stopped the stream
    wall_seconds: float = 0.0


Event = Callable[[str, str, Any], None]


@dataclass
class _RunState:
    job: Job
    tokens: list[Token]  # [file 0, file 1, ..., room for conversion]
    leases: list[FileLease]
    stop: threading.Event
    results: list[Any]
    futures: set[Future] = field(default_factory=set)
    error: str | None = None

    @property
    def held(self) -> int:
        return self.job.need_bytes


class StreamScheduler:
    """Run jobs through download(file)/quant/cleanup callables; see the module docstring for the rules.

    `download(payload, i, lease)` fetches file i of a run (wrapping each attempt in `lease.attempt()`);
    `quant(payload, [file results])` quantifies; `cleanup(payload)` deletes the run's files."""

    def __init__(
        self,
        *,
        budget_bytes: int,
        max_downloads: int,
        quant_workers: int,
        download: Callable[[Any, int, FileLease], Any],
        quant: Callable[[Any, list[Any]], Any],
        cleanup: Callable[[Any], None],
        on_event: Event | None = None,
        largest_first: bool = True,
        stop: threading.Event | None = None,
        shared_budget: SharedLimit | None = None,
        shared_slot: Callable[[], contextlib.AbstractContextManager] | None = None,
        fatal: Callable[[BaseException], bool] | None = None,
    ):
        if max_downloads < 1 or quant_workers < 1:
            raise ValueError("max_downloads and quant_workers must be >= 1")
        self.budget = ByteBudget(budget_bytes, shared_budget)
        self.conns = Connections(max_downloads, shared_slot)
        self.max_downloads, self.quant_workers = max_downloads, quant_workers
        self._download, self._quant, self._cleanup = download, quant, cleanup
        self._on_event = on_event
        self._fatal = fatal or (lambda exc: False)
        self.largest_first = largest_first
        self.stop = stop or threading.Event()  # set when run() is interrupted; give it to the steps too
        self.report = StreamReport()
        self._t0 = 0.0
        self._held = 0  # bytes of runs whose files could not be deleted: reserved for good
        # files admitted beyond the connections: they wait on the connection semaphore, so a freed connection is
        # taken at once instead of after the next task run starts (Prefect's start-up is not free)
        self.queue_ahead = max(2, max_downloads // 2)
        self._wake = threading.Event()
        self.conns.on_free = self._wake.set

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

    def _finish(self, st: _RunState) -> None:
        """Delete the run's files, then give its bytes back; if deletion fails the bytes stay reserved."""
        try:
            self._cleanup(st.job.payload)
        except Exception as exc:  # noqa: BLE001 - recorded; the disk is still in use, so is the budget
            self.report.cleanup_failed[st.job.key] = _reason(exc)
            self._held += st.job.need_bytes
            self._event("cleanup_failed", st.job.key, _reason(exc))
            return
        for lease in st.leases:
            lease.give_back()
        for token in st.tokens[len(st.leases):]:
            self.budget.release(token)

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
        return job.need_bytes <= free + sum(in_flight) - head.need_bytes

    def _reserve(self, job: Job) -> list[Token] | None:
        sizes = job.file_sizes
        extra = job.need_bytes - sum(sizes)
        return self.budget.try_reserve(sizes + ([extra] if extra > 0 else []))

    def _call(self, fn: Callable, *args: Any) -> Any:
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
        runs: dict[str, _RunState] = {}
        downloads: dict[Future, tuple[_RunState, int]] = {}
        quants: dict[Future, _RunState] = {}
        ready: deque[_RunState] = deque()
        pool = ThreadPoolExecutor(4 * self.max_downloads + self.quant_workers + 4, thread_name_prefix="stream")

        def submit(fn: Callable, *args: Any) -> Future:
            fut = pool.submit(contextvars.copy_context().run, self._call, fn, *args)
            fut.add_done_callback(lambda f: self._wake.set())
            return fut

        def admit() -> None:
            in_flight = [st.held for st in runs.values()]
            self.budget.shared_refused = False
            i = 0  # pending[0] is the head; pending[i > 0] may pass it (see the module docstring)
            while self.conns.demand < self.max_downloads + self.queue_ahead and i < len(pending) and not self.report.fatal:
                job = pending[i]
                if i == 0 and job.need_bytes > self.budget.capacity - self._held:
                    self._exhausted(pending.pop(0))  # can never fit: do not let it block the rest
                    continue
                tokens = self._reserve(job) if (i == 0 or self._may_pass(pending[0], job, in_flight)) else None
                if tokens is None:
                    if self.budget.shared_refused:  # other flow runs hold the shared bytes: ask again next round
                        break
                    i += 1
                    continue
                pending.pop(i)
                stop = threading.Event()
                st = _RunState(job, tokens, [], stop, [None] * len(job.file_sizes))
                runs[job.key] = st
                in_flight.append(job.need_bytes)
                self._event("admitted", job.key, job.need_bytes)
                for n, token in enumerate(tokens[: len(job.file_sizes)]):
                    lease = FileLease(self.budget, self.conns, token, stop)
                    st.leases.append(lease)
                    self.conns.want(+1)
                    fut = submit(self._download, job.payload, n, lease)
                    downloads[fut] = (st, n)
                    st.futures.add(fut)

        def end_download(fut: Future, st: _RunState, n: int) -> None:
            st.futures.discard(fut)
            st.leases[n].uncount()
            exc = fut.exception()
            if exc is not None and st.error is None:
                st.error = f"download: {_reason(exc)}"
                st.stop.set()  # the run's other files end at their next chunk
                if self._fatal(exc) and not self.report.fatal:
                    self.report.fatal = _reason(exc)
            elif exc is None:
                st.results[n] = fut.result()
            if st.futures:
                return
            if st.error is not None:
                self._fail(st.job, st.error)
                self._finish(st)
                del runs[st.job.key]
            else:
                ready.append(st)
                self._event("downloaded", st.job.key, st.results)

        try:
            while pending or runs:
                while ready and len(quants) < self.quant_workers:
                    st = ready.popleft()
                    quants[submit(self._quant, st.job.payload, st.results)] = st
                    self._event("quant_started", st.job.key)
                if self.report.fatal:
                    for job in pending:
                        self._fail(job, f"not started: {self.report.fatal}")
                    pending.clear()
                admit()
                if not runs:
                    for job in pending:  # unreachable: with nothing running the head fits or has been failed
                        self._exhausted(job)
                    break
                # poll while others may free what admission waits for (retry waits, shared limits)
                self._wake.wait(POLL_SECONDS if pending else None)
                self._wake.clear()
                done = [f for f in (*downloads, *quants) if f.done()]
                for fut in done:
                    if fut in downloads:
                        st, n = downloads.pop(fut)
                        end_download(fut, st, n)
                    else:
                        st = quants.pop(fut)
                        del runs[st.job.key]
                        if (exc := fut.exception()) is not None:
                            self._fail(st.job, f"quant: {_reason(exc)}")
                            if self._fatal(exc) and not self.report.fatal:
                                self.report.fatal = _reason(exc)
                            self._finish(st)
                        else:
                            self._finish(st)
                            self.report.done[st.job.key] = fut.result()
                            self._event("quantified", st.job.key, fut.result())
        except BaseException:  # KeyboardInterrupt, Prefect's TerminationSignal, or a bug: stop, do not wait
            self.stop.set()
            for st in runs.values():
                st.stop.set()
            raise
        finally:
            if self.stop.is_set():  # workers see `stop` within seconds (tools are terminated, downloads end at
                pool.shutdown(wait=False, cancel_futures=True)  # their next chunk): wait for them, but boundedly,
                wait([*downloads, *quants], timeout=STOP_GRACE_SECONDS)  # so the caller's lock outlives them
            else:
                pool.shutdown(wait=True)
            self.report.reserved_high_water = self.budget.high_water
            self.report.max_connections = self.conns.max_active
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
    """Samples the total size of one or several directories in a thread; `.high_water` is the largest seen."""

    def __init__(self, paths: Path | Iterable[Path], interval: float = 0.1):
        self.paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        self.interval = interval
        self.high_water = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="disk-sampler", daemon=True)

    def size(self) -> int:
        return sum(dir_bytes(p) for p in self.paths)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.high_water = max(self.high_water, self.size())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.high_water = max(self.high_water, self.size())
