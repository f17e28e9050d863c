"""The streaming scheduler with fake steps: budget, concurrency, no barrier, failure isolation."""

from __future__ import annotations

import contextvars
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from genoflows.rnaseq.metadata import Run
from genoflows.rnaseq.sources import RemoteFile, ResolvedRun
from genoflows.rnaseq.stages import cleanup_run, download_file
from genoflows.rnaseq.stream import ByteBudget, Job, StreamScheduler
from genoflows.testing.http_server import FileServer


class FakeDisk:
    """Bytes 'on disk' per run: written as the download runs, removed by cleanup; tracks the maximum."""

    def __init__(self):
        self.lock = threading.Lock()
        self.used = self.max = 0
        self.files: dict[str, int] = {}
        self.active = {"download": 0, "quant": 0}
        self.max_active = {"download": 0, "quant": 0}

    def stage(self, kind: str, delta: int) -> None:
        with self.lock:
            self.active[kind] += delta
            self.max_active[kind] = max(self.max_active[kind], self.active[kind])

    def write(self, key: str, n: int) -> None:
        with self.lock:
            self.files[key] = self.files.get(key, 0) + n
            self.used += n
            self.max = max(self.max, self.used)

    def delete(self, key: str) -> None:
        with self.lock:
            self.used -= self.files.pop(key, 0)


def make(disk: FakeDisk, budget: int, *, fail_download=(), fail_quant=(), k=3, q=2, dl_time=0.02, q_time=0.01):
    def download(job_payload, i, lease):
        key, size = job_payload
        with lease.attempt():
            disk.stage("download", 1)
            try:
                for _ in range(4):
                    disk.write(key, size // 4)
                    time.sleep(dl_time * random.random())
                if key in fail_download:
                    raise OSError(f"connection reset for {key}")
                return f"local-{key}"
            finally:
                disk.stage("download", -1)

    def quant(job_payload, local):
        disk.stage("quant", 1)
        try:
            time.sleep(q_time)
            if job_payload[0] in fail_quant:
                raise RuntimeError("kallisto exited with code 1")
            return {"run": job_payload[0], "local": local}
        finally:
            disk.stage("quant", -1)

    return StreamScheduler(budget_bytes=budget, max_downloads=k, quant_workers=q, download=download, quant=quant,
                           cleanup=lambda p: disk.delete(p[0]))  # fmt: skip


def jobs(sizes):
    return [Job(f"r{i:02d}", s, (f"r{i:02d}", s)) for i, s in enumerate(sizes)]


def test_budget_and_concurrency_limits_hold():
    random.seed(1)
    disk = FakeDisk()
    sizes = [random.randrange(100, 1000, 4) for _ in range(40)]
    sched = make(disk, budget=2500, k=4, q=2)
    report = sched.run(jobs(sizes))
    assert len(report.done) == 40 and not report.failed
    assert disk.max <= 2500 and report.reserved_high_water <= 2500
    assert disk.max_active["download"] <= 4 and disk.max_active["quant"] <= 2
    assert sched.budget.reserved == 0 and disk.used == 0  # everything released and deleted


def test_no_batch_barrier_quant_starts_while_downloads_continue():
    disk = FakeDisk()
    report = make(disk, budget=10_000, k=2, q=1, dl_time=0.05).run(jobs([100] * 8))
    first_quant = min(t for t, kind, _ in report.events if kind == "quant_started")
    last_admit = max(t for t, kind, _ in report.events if kind == "admitted")
    assert first_quant < last_admit  # the first run is quantified before the last one even starts downloading


def test_freed_bytes_admit_the_next_run():
    disk = FakeDisk()
    report = make(disk, budget=1000, k=4, q=1).run(jobs([600, 600, 600]))  # only one fits at a time
    kinds = [(kind, key) for _, kind, key in report.events if kind in ("admitted", "quantified")]
    assert kinds == [("admitted", "r00"), ("quantified", "r00"), ("admitted", "r01"), ("quantified", "r01"),
                     ("admitted", "r02"), ("quantified", "r02")]  # fmt: skip
    assert disk.max <= 1000


def test_failures_are_isolated_and_release_their_bytes():
    disk = FakeDisk()
    sched = make(disk, budget=1000, fail_download={"r01"}, fail_quant={"r02"})
    report = sched.run(jobs([300, 300, 300, 300, 5000]))
    assert set(report.done) == {"r00", "r03"}
    assert report.failed["r01"].startswith("download: OSError: connection reset")
    assert report.failed["r02"].startswith("quant: RuntimeError")
    assert "whole budget is 1.0 kB (1000 bytes); raise disk_budget" in report.failed["r04"]
    assert sched.budget.reserved == 0 and disk.used == 0


def test_largest_first_and_backfill():
    disk = FakeDisk()
    report = make(disk, budget=1000, k=1, q=1).run(jobs([100, 900, 200]))
    admitted = [key for _, kind, key in report.events if kind == "admitted"]
    assert admitted == ["r01", "r00", "r02"]  # 900 first; then 100 fits beside it while 200 must wait



def test_a_smaller_run_never_takes_the_bytes_the_head_run_is_about_to_get():
    """Budget 1000: j1 (700) and j2 (100) start. When j1 ends, j0 (500) starts and 500 bytes stay free but the
    head j3 (500) does not fit. It will once j2 ends; j4 (400) fits now, but taking those bytes would keep j3
    waiting for a 500-byte run to end, and j3, the biggest left, would end alone at the tail. So j4 waits."""
    gates = {key: threading.Event() for key in ("j0", "j1", "j2", "j3", "j4")}

    def download(key: str, i, lease) -> str:
        assert gates[key].wait(10), f"{key} was never released"
        return key

    sched = StreamScheduler(budget_bytes=1000, max_downloads=8, quant_workers=8, download=download,
                            quant=lambda p, local: p, cleanup=lambda p: None)  # fmt: skip
    sizes = {"j0": 500, "j1": 700, "j2": 100, "j3": 500, "j4": 400}
    out = {}
    runner = threading.Thread(target=lambda: out.update(report=sched.run([Job(k, n, k) for k, n in sizes.items()])))
    runner.start()

    def until(kind: str, key: str) -> None:
        deadline = time.monotonic() + 5
        while not any(k == kind and j == key for _, k, j in list(sched.report.events)):
            assert time.monotonic() < deadline, f"no {kind} {key}: {sched.report.events}"
            time.sleep(0.005)
        time.sleep(0.05)  # let the scheduler finish that admission round

    until("admitted", "j2")  # fits beside j1 without delaying the head j0: j1 ending frees enough for it
    gates["j1"].set()
    until("admitted", "j0")
    gates["j2"].set()
    until("quantified", "j2")
    for gate in gates.values():
        gate.set()
    runner.join(10)
    admitted = [key for _, kind, key in out["report"].events if kind == "admitted"]
    assert admitted == ["j1", "j2", "j0", "j3", "j4"] and len(out["report"].done) == 5


def test_a_head_needing_several_releases_lets_only_harmless_runs_pass():
    """Budget 1000 with 300+300+300 in flight: the head (800) needs two of them to end. A 50-byte run cannot
    delay it (after all three end, 800 + 50 still fit), so it may pass; a 250-byte one could, so it waits."""
    sched = StreamScheduler(budget_bytes=1000, max_downloads=8, quant_workers=1, download=lambda p, i, lease: p,
                            quant=lambda p, local: p, cleanup=lambda p: None)  # fmt: skip
    for _ in range(3):
        assert sched.budget.try_reserve(300)
    head = Job("head", 800, None)
    assert sched._may_pass(head, Job("small", 50, None), [300, 300, 300])
    assert sched._may_pass(head, Job("edge", 200, None), [300, 300, 300])
    assert not sched._may_pass(head, Job("big", 250, None), [300, 300, 300])


def test_context_is_carried_into_worker_threads():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("flow", default="none")
    var.set("flow-run-1")
    seen = []
    sched = StreamScheduler(budget_bytes=10, max_downloads=2, quant_workers=1,
                            download=lambda p, i, lease: seen.append(var.get()), quant=lambda p, local: var.get(),
                            cleanup=lambda p: None)  # fmt: skip
    report = sched.run(jobs([1, 1]))
    assert seen == ["flow-run-1"] * 2 and set(report.done.values()) == {"flow-run-1"}


def test_byte_budget():
    b = ByteBudget(10)
    assert b.try_reserve(6) and not b.try_reserve(5) and b.try_reserve(4)
    b.release(10)
    assert b.reserved == 0 and b.high_water == 10
    with pytest.raises(RuntimeError):
        b.release(1)
    with pytest.raises(ValueError):
        ByteBudget(0)


def test_undeletable_files_keep_their_bytes_and_the_rest_fails_clearly():
    def cleanup(p):
        if p == "r00":
            raise PermissionError("read-only file system")

    def broken_progress(kind, key, info):
        raise RuntimeError("artifact API down")

    sched = StreamScheduler(budget_bytes=1000, max_downloads=2, quant_workers=1, download=lambda p, i, lease: p,
                            quant=lambda p, local: "ok", cleanup=cleanup, on_event=broken_progress)  # fmt: skip
    report = sched.run([Job("r00", 800, "r00"), Job("r01", 500, "r01"), Job("r02", 100, "r02")])
    assert report.done == {"r00": "ok", "r02": "ok"} and "PermissionError" in report.cleanup_failed["r00"]
    assert "disk budget exhausted: 800 B of 1.0 kB" in report.failed["r01"] and sched.budget.reserved == 800


def _chattr(flag: str, path: Path) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_an_undeletable_run_dir_fails_cleanup_and_keeps_its_bytes(tmp_path):
    """A real file that cannot be deleted (immutable attribute): cleanup_run raises, the scheduler keeps the bytes."""
    fastq = tmp_path / "fastq"
    for run in ("r00", "r01"):
        (fastq / run).mkdir(parents=True)
        (fastq / run / f"{run}_1.fastq").write_bytes(b"@r\nACGT\n+\nFFFF\n")
    stuck = fastq / "r00" / "r00_1.fastq"
    if not _chattr("+i", stuck):
        pytest.skip("cannot make a file immutable here (chattr +i needs root and a filesystem that supports it)")
    try:
        with pytest.raises(OSError, match="cannot delete .*r00"):
            cleanup_run(fastq, "r00")
        cleanup_run(fastq, "r01")
        cleanup_run(fastq, "r01")  # already gone is fine
        assert not (fastq / "r01").exists()
        sched = StreamScheduler(budget_bytes=1000, max_downloads=1, quant_workers=1, download=lambda p, i, lease: p,
                                quant=lambda p, local: "ok", cleanup=lambda p: cleanup_run(fastq, p))  # fmt: skip
        report = sched.run([Job("r00", 600, "r00")])
        assert report.done == {"r00": "ok"} and "cannot delete" in report.cleanup_failed["r00"]
        assert sched.budget.reserved == 600 and stuck.exists()
    finally:
        _chattr("-i", stuck)


def test_an_interrupt_during_a_long_download_returns_promptly(tmp_path):
    """Ctrl-C (Prefect's cancellation raises the same way in the flow's thread) while a throttled 3 MB download
    has ~20 s to go: run() re-raises at once, the download stops at its next chunk, nothing new starts, and
    the partial file is left for the next flow run's prepare()."""
    (tmp_path / "srv").mkdir()
    data = os.urandom(3_000_000)
    runs = ("SRR7000001", "SRR7000002")
    for run in runs:
        (tmp_path / "srv" / f"{run}.fastq.gz").write_bytes(data)
    stop, started = threading.Event(), threading.Event()
    with FileServer(tmp_path / "srv", bandwidth_bytes_per_s=150_000) as server:
        jobs = [Job(run, len(data), ResolvedRun(Run(run, "X", "single"), "explicit",
                                                (RemoteFile(server.url(f"{run}.fastq.gz"), f"{run}.fastq.gz", len(data)),),
                                                "single", len(data))) for run in runs]  # fmt: skip
        sched = StreamScheduler(budget_bytes=len(data) * 2, max_downloads=1, quant_workers=1, stop=stop,
                                download=lambda r, i, lease: download_file(r, i, tmp_path / "fastq", lease=lease,
                                                                           on_bytes=lambda n: started.set()),
                                quant=lambda r, local: "quantified", cleanup=lambda r: None)  # fmt: skip
        threading.Thread(target=lambda: started.wait(10) and os.kill(os.getpid(), signal.SIGINT), daemon=True).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            sched.run(jobs)
        assert time.monotonic() - t0 < 3 and stop.is_set()
        deadline = time.monotonic() + 3
        while [t for t in threading.enumerate() if t.name.startswith("stream")] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [t for t in threading.enumerate() if t.name.startswith("stream")], "a worker is still running"
    parts = list((tmp_path / "fastq").glob("*/*.fastq.gz.part"))  # one had the connection; the other was queued
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(data)


def test_slots_are_connections_and_a_runs_files_download_in_parallel():
    """4 connections, a budget for two paired runs at a time: the old run-counting scheme kept 2 connections busy;
    counting files, all 4 are (each run's two files in parallel)."""
    active, peak, lock = [0], [0], threading.Lock()
    per_run: dict[str, set[int]] = {}

    def download(p, i, lease):
        with lease.attempt():
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                per_run.setdefault(p, set()).add(active[0])
            time.sleep(0.05)
            with lock:
                active[0] -= 1
        return f"{p}_{i}"

    sched = StreamScheduler(budget_bytes=1000, max_downloads=4, quant_workers=1, download=download,
                            quant=lambda p, files: files, cleanup=lambda p: None)  # fmt: skip
    report = sched.run([Job(f"r{i}", 500, f"r{i}", (250, 250)) for i in range(6)])
    assert len(report.done) == 6 and report.done["r0"] == ["r0_0", "r0_1"]
    assert peak[0] == 4 and report.max_connections == 4
    assert report.reserved_high_water <= 1000


def test_a_file_waiting_for_its_retry_holds_no_connection_and_no_bytes():
    """One connection, budget for one run. r0's only file fails (nothing kept) and waits 0.4 s before its retry, as
    Prefect's retry does: meanwhile r1 gets the connection and the bytes; r0's retry then takes them back before
    r2, which was waiting longer."""
    attempts: dict[str, int] = {}
    timeline: list[tuple[str, str]] = []

    def download(p, i, lease):
        while True:
            try:
                with lease.attempt():
                    attempts[p] = attempts.get(p, 0) + 1
                    timeline.append(("start", p))
                    if p == "r0" and attempts[p] == 1:
                        raise OSError("connection reset")
                    time.sleep(0.6 if p == "r1" else 0.05)
                    return p
            except OSError:
                time.sleep(0.4)  # the retry delay, outside the attempt

    sched = StreamScheduler(budget_bytes=600, max_downloads=1, quant_workers=1, download=download,
                            quant=lambda p, files: p, cleanup=lambda p: None)  # fmt: skip
    report = sched.run([Job("r0", 600, "r0"), Job("r1", 500, "r1"), Job("r2", 400, "r2")])
    assert set(report.done) == {"r0", "r1", "r2"} and attempts["r0"] == 2
    assert timeline[:3] == [("start", "r0"), ("start", "r1"), ("start", "r0")]  # r1 used the wait; r0's retry next
    assert report.reserved_high_water <= 600


def test_a_machine_wide_failure_stops_admissions():
    def download(p, i, lease):
        if p == "r0":
            raise OSError(28, "No space left on device")
        time.sleep(0.05)
        return p

    sched = StreamScheduler(budget_bytes=200, max_downloads=1, quant_workers=1, download=download,
                            quant=lambda p, files: p, cleanup=lambda p: None,
                            fatal=lambda exc: isinstance(exc, OSError) and exc.errno == 28)  # fmt: skip
    report = sched.run([Job("r0", 200, "r0"), Job("r1", 100, "r1"), Job("r2", 100, "r2")])
    assert "No space left" in report.fatal and not report.done
    assert report.failed["r2"].startswith("not started: OSError")


def test_a_transfer_frees_its_connection_before_the_file_is_verified(tmp_path, monkeypatch):
    """One connection, two runs, real downloads from a real server. Verifying a file (checksums, a full gzip/FASTQ
    read) is slow here (0.5 s); the second file's request must reach the server while the first is still being
    verified, not after: the connection is free once the last byte is in."""
    import genoflows.fetch as fetch_mod

    (tmp_path / "srv").mkdir()
    runs = ("SRR7100001", "SRR7100002")
    data = os.urandom(200_000)
    for run in runs:
        (tmp_path / "srv" / f"{run}.fastq.gz").write_bytes(data)
    verifying: list[tuple[float, float]] = []
    real_verify = fetch_mod._verify_content

    def slow_verify(*args, **kwargs):
        t0 = time.monotonic()
        time.sleep(0.5)
        verifying.append((t0, time.monotonic()))
        return None if args[3] == "fastq" else real_verify(*args, **kwargs)  # random bytes are no FASTQ

    monkeypatch.setattr(fetch_mod, "_verify_content", slow_verify)
    requested: list[float] = []
    with FileServer(tmp_path / "srv") as server:
        handler = server._httpd.RequestHandlerClass

        class Timed(handler):  # type: ignore[misc, valid-type]
            def do_GET(self):  # noqa: N802
                requested.append(time.monotonic())
                super().do_GET()

        server._httpd.RequestHandlerClass = Timed
        jobs = [Job(run, len(data), ResolvedRun(Run(run, "X", "single"), "explicit",
                                                (RemoteFile(server.url(f"{run}.fastq.gz"), f"{run}.fastq.gz", len(data)),),
                                                "single", len(data))) for run in runs]  # fmt: skip
        sched = StreamScheduler(budget_bytes=len(data) * 2, max_downloads=1, quant_workers=1,
                                download=lambda r, i, lease: download_file(r, i, tmp_path / "fastq", lease=lease),
                                quant=lambda r, local: "quantified", cleanup=lambda r: None)  # fmt: skip
        report = sched.run(jobs)
    assert set(report.done) == set(runs) and report.max_connections == 1
    assert len(requested) == 2 and len(verifying) == 2
    first_verified = min(end for _, end in verifying)
    assert requested[1] < first_verified, "the second file waited for the first one's verification"


def test_a_retry_takes_the_next_connection_before_files_waiting_for_their_first():
    """One connection; r0's file fails four times in a row (a corrupt body), each retry 0.1 s after the failure, while
    the other runs' files transfer (0.15 s each) and two more wait for the connection (admitted ahead). Each retry
    of r0 goes next when the connection frees: a failing file's chain of attempts must not queue behind every new
    file, or a failing file at the end of a stream makes a long tail."""
    order: list[str] = []
    attempts: dict[str, int] = {}

    def download(p, i, lease):
        while True:
            try:
                with lease.attempt():
                    attempts[p] = attempts.get(p, 0) + 1
                    order.append(f"{p}#{attempts[p]}")
                    if p == "r0" and attempts[p] <= 4:
                        raise OSError("md5 mismatch")
                    time.sleep(0.15)
                    return p
            except OSError:
                time.sleep(0.1)  # the retry delay, outside the attempt

    sched = StreamScheduler(budget_bytes=10_000, max_downloads=1, quant_workers=1, download=download,
                            quant=lambda p, files: p, cleanup=lambda p: None, largest_first=False)  # fmt: skip
    report = sched.run([Job(f"r{i}", 100, f"r{i}") for i in range(8)])
    assert len(report.done) == 8
    assert order[0:9:2] == ["r0#1", "r0#2", "r0#3", "r0#4", "r0#5"], order  # every retry right after one transfer


def test_files_waiting_for_a_connection_get_it_in_arrival_order():
    """One connection held for 0.4 s while seven more files arrive 40 ms apart: they get it in that order (the
    scheduler admits in the order it wants the transfers to run), not in whatever order the threads wake."""
    started: list[str] = []

    def download(p, i, lease):
        time.sleep(0.04 * int(p[1:]))
        with lease.attempt():
            started.append(p)
            time.sleep(0.4 if p == "r0" else 0.01)
        return p

    sched = StreamScheduler(budget_bytes=10_000, max_downloads=1, quant_workers=1, download=download,
                            quant=lambda p, files: p, cleanup=lambda p: None, largest_first=False)  # fmt: skip
    sched.queue_ahead = 8  # all admitted at once
    report = sched.run([Job(f"r{k}", 100, f"r{k}") for k in range(8)])
    assert len(report.done) == 8 and started == [f"r{k}" for k in range(8)], started
