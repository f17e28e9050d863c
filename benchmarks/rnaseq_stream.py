"""Benchmark: streaming RNA-seq quantification vs the physical floor, on two scenarios, side by side in one run.

Scenario "generated" (the original): one species, ~20 runs (sizes vary, paired and single) served by a local
ENA-like HTTP server throttled to a fixed bandwidth per connection; budget for the largest K+2 runs.
  batch   download a batch of `max_downloads` runs in parallel, quantify them one by one, delete, repeat
          (amalgkit getfastq/quant with batches), same download concurrency, plain Python;
  stream  the `rnaseq_quant` Prefect flow (ephemeral API started beforehand, so its start-up is excluded).
Scenario "real-shaped" (issue 7): three species in `rnaseq_multi_species`, a server that caps connections per
client and throttles each one, paired runs whose ENA listing puts an unpaired third file first, single-end runs,
a run corrupt on the server (fails after the retry policy), a run ENA does not have, an excluded run, and a disk
budget that holds only three runs at once; the indices are built inside the flow run.
Floor (both) = max(bytes of the runs / (bandwidth per connection x max_downloads), child CPU seconds / cores).

    .venv/bin/python benchmarks/rnaseq_stream.py [--runs 20] [--bandwidth 1.0e6] [--max-downloads 4] [--only real]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class ConnectionLog:
    """Per-connection busy intervals as the server sees them (body streaming only: refusals and routes are not
    busy), to show where connections sit idle: before the first byte, in gaps, and after the last byte."""

    def __init__(self, server):
        import threading

        self.intervals: list[tuple[float, float, str]] = []
        lock = threading.Lock()
        log = self

        class Recording(server._httpd.RequestHandlerClass):  # type: ignore[misc, valid-type]
            def _stream(self, fh, nbytes, *, corrupt):
                t0 = time.monotonic()
                try:
                    return super()._stream(fh, nbytes, corrupt=corrupt)
                finally:
                    with lock:
                        log.intervals.append((t0, time.monotonic(), self.path.rsplit("/", 1)[-1]))

        server._httpd.RequestHandlerClass = Recording

    def report(self, t_start: float, t_end: float, connections: int, step: float = 1.0) -> str:
        """Busy connections per `step` seconds from the flow's start, and where the idle connection-seconds are."""
        if not self.intervals:
            return "no downloads"
        first = min(a for a, _, _ in self.intervals)
        last = max(b for _, b, _ in self.intervals)
        n = int((t_end - t_start) / step) + 1
        busy = [0.0] * n
        for a, b, _ in self.intervals:
            i = int((a - t_start) / step)
            while a < b and i < n:
                edge = t_start + (i + 1) * step
                busy[i] += min(b, edge) - a
                a, i = min(b, edge), i + 1
        line = "".join(str(min(9, round(x / step))) for x in busy)
        window = sum(b - a for a, b, _ in self.intervals)
        mid_idle = connections * (last - first) - window
        names = [name for _, _, name in self.intervals]
        again = sorted({name for name in names if names.count(name) > 1})
        retried = "; ".join(f"{name} " + ", ".join(f"{a - t_start:.1f}-{b - t_start:.1f}" for a, b, n in
                                                    sorted(self.intervals) if n == name) for name in again)  # fmt: skip
        return (f"connections busy per {step:g} s (0-{connections}): {line}\n"
                f"  transferred more than once (s from the start): {retried or 'none'}\n"
                f"  first byte after {first - t_start:.1f} s; last byte {t_end - last:.1f} s before the end; "
                f"{len(self.intervals)} transfers; idle between first and last byte: {mid_idle:.1f} connection-s "
                f"(= {mid_idle / connections:.1f} s of all {connections})")


class SchedulerTrace:
    """Samples the stream scheduler of the flow run (bytes reserved, connections held and wanted, runs in kallisto)
    every `interval` seconds, to tell an idle connection waiting for bytes from one waiting for work."""

    def __init__(self, interval: float = 0.25):
        import threading

        from genoflows.rnaseq import stream

        self.interval, self.samples, self.schedulers = interval, [], []
        self._stop = threading.Event()
        original = stream.StreamScheduler.__init__
        trace = self

        def init(sched, *a, **kw):
            original(sched, *a, **kw)
            trace.schedulers.append(sched)

        stream.StreamScheduler.__init__ = init
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for s in self.schedulers[-1:]:
                ev = s.report.events
                started = sum(1 for e in ev if e[1] == "quant_started")
                ended = sum(1 for e in ev if e[1] in ("quantified",)) + sum(
                    1 for e in ev if e[1] == "failed" and any(x[1] == "quant_started" and x[2] == e[2] for x in ev))
                self.samples.append((time.monotonic(), s.budget.reserved / s.budget.capacity, s.conns.active,
                                     s.conns.demand, started - ended))

    def report(self, t_start: float, step: float = 1.0) -> str:
        self._stop.set()
        rows = {"reserved/budget x10": 1, "connections held": 2, "files wanting one": 3, "runs in quant": 4}
        lines = []
        for name, col in rows.items():
            buckets: dict[int, list[float]] = {}
            for row in self.samples:
                buckets.setdefault(int((row[0] - t_start) / step), []).append(row[col])
            n = max(buckets, default=-1) + 1
            vals = [max(buckets.get(i, [0])) for i in range(n)]
            vals = [v * 10 if col == 1 else v for v in vals]
            lines.append(f"  {name:<22} {''.join(str(min(9, int(v))) for v in vals)}")
        return "scheduler per 1 s (max of samples):\n" + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bandwidth", type=float, default=1.0e6, help="bytes/s per connection")
    ap.add_argument("--max-downloads", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--fragments", type=int, default=90_000, help="mean fragments per run")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--only", choices=["generated", "real"], help="run one scenario")
    ap.add_argument("--species-runs", type=int, default=7, help="runs per species in the real-shaped scenario")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rnaseq-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["GENOFLOWS_CACHE_DIR"] = str(work / "cache")

    os.environ.update({"GENOFLOWS_RETRY_ATTEMPTS": "3", "GENOFLOWS_RETRY_BASE_DELAY_SECONDS": "0.5",
                       "GENOFLOWS_RETRY_MAX_DELAY_SECONDS": "2"})  # the corrupt run: 3 retries, 0.5-2 s apart
    from prefect import flow

    @flow
    def warm_up() -> int:
        return 0

    warm_up()  # starts the ephemeral Prefect API: not part of the measurements
    figures = []
    if args.only != "real":
        figures.append(generated_scenario(args, work / "generated"))
    if args.only != "generated":
        figures.append(real_scenario(args, work / "real"))
    print("\nscenario        wall      floor    wall/floor  peak disk / budget")
    for name, wall, floor, peak, budget in figures:
        print(f"{name:<14} {wall:7.1f} s {floor:7.1f} s   {wall / floor:5.2f} x    {peak / budget:5.2f}"
              f"{'' if peak <= budget else '  EXCEEDED'}")  # fmt: skip
    print(f"load average at the end: {os.getloadavg()}")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def generated_scenario(args, work: Path) -> tuple[str, float, float, int, int]:
    import numpy as np

    from genoflows.rnaseq.metadata import Run
    from genoflows.rnaseq.sources import Endpoints, resolve_all
    from genoflows.rnaseq.stages import SpeciesDirs, cleanup_run, download_run, quantify_run
    from genoflows.rnaseq.stream import DiskSampler, human_bytes
    from genoflows.settings import get_settings
    from genoflows.testing import rnaseq_world as sim
    from genoflows.testing.http_server import FileServer
    from genoflows.tools import kallisto

    print("== generated scenario: one species, one connection per file, bandwidth-capped server")
    work.mkdir(parents=True)
    os.environ["GENOFLOWS_CACHE_DIR"] = str(work / "cache")  # the index is built beforehand, as it always was
    t_gen = time.monotonic()
    rng = np.random.default_rng(7)
    tx = sim.make_transcriptome(work / "transcripts.fa", n_genes=400, seed=7)
    (work / "srv").mkdir()
    server = FileServer(work / "srv", bandwidth_bytes_per_s=args.bandwidth).start()
    os.environ["GENOFLOWS_ENA_BASE_URL"] = server.base_url
    os.environ["GENOFLOWS_SRA_ODP_BASE_URL"] = server.base_url + "/sra"
    get_settings.cache_clear()
    catalog = sim.EnaCatalog(work / "srv")
    rows = []
    for i in range(args.runs):
        run = f"SRR{2000001 + i}"
        layout = "single" if i % 4 == 3 else "paired"
        n = int(args.fragments * rng.uniform(0.3, 1.7)) * (2 if layout == "single" else 1)
        s = sim.simulate_run(tx, work / "gen", run, layout=layout, n_fragments=n, seed=100 + i)
        catalog.add(s, host=server.base_url.split("://")[1])
        rows.append({"scientific_name": "Bench species", "run": run, "lib_layout": layout, "nominal_length": "250"})
    shutil.rmtree(work / "gen")
    server.add_route("/filereport", catalog.filereport_handler())
    sim.write_metadata(work / "metadata.tsv", rows)
    index, targets = kallisto.ensure_index(work / "transcripts.fa", work / "cache")
    runs = [Run(r["run"], "Bench_species", r["lib_layout"], 250) for r in rows]
    resolved, failed, _ = resolve_all(runs, ["ena"], Endpoints(server.base_url, server.base_url + "/sra", server.base_url + "/sdl"))
    assert not failed, failed
    sizes = sorted(r.reserve_bytes for r in resolved)
    total_bytes = sum(sizes)
    budget = int(sum(sizes[-(args.max_downloads + 2):]))  # the largest K+2 runs fit at once
    print(f"setup: {len(resolved)} runs, {human_bytes(total_bytes)} in total "
          f"({human_bytes(sizes[0])}..{human_bytes(sizes[-1])}), generated in {time.monotonic() - t_gen:.1f} s")  # fmt: skip
    print(f"bandwidth {human_bytes(args.bandwidth)}/s per connection x {args.max_downloads} downloads, "
          f"{args.threads} cores, disk budget {human_bytes(budget)}")  # fmt: skip

    # --- old scheme: batch of K downloads, then quantify each, then delete -------------------------------
    dirs = SpeciesDirs(work / "batch" / "Bench_species")
    dirs.prepare()
    t0, quant_cpu = time.monotonic(), 0.0
    with DiskSampler(dirs.fastq, 0.1) as batch_disk, ThreadPoolExecutor(args.max_downloads) as pool:
        for b in range(0, len(resolved), args.max_downloads):
            batch = resolved[b : b + args.max_downloads]
            locals_ = list(pool.map(lambda r: download_run(r, dirs.fastq), batch))
            c = child_cpu()
            for local in locals_:
                quantify_run(local, index, targets, dirs, threads=args.threads)
            quant_cpu += child_cpu() - c
            for r in batch:
                cleanup_run(dirs.fastq, r.run.run)
    batch_wall = time.monotonic() - t0
    assert all(dirs.is_complete(r.run.run) for r in resolved)

    # --- streaming: the Prefect flow -----------------------------------------------------------------------
    from flows.rnaseq_quant import rnaseq_quant

    conn_log = ConnectionLog(server)
    cpu1, t1 = child_cpu(), time.monotonic()
    summary = rnaseq_quant(
        metadata=str(work / "metadata.tsv"), species="Bench species", transcriptome=str(work / "transcripts.fa"),
        out_dir=str(work / "stream"), threads=args.threads, max_downloads=args.max_downloads,
        disk_budget=budget, sources=["ena"],
    )  # fmt: skip
    stream_wall = time.monotonic() - t1
    stream_cpu = child_cpu() - cpu1
    server.stop()
    print(conn_log.report(t1, t1 + stream_wall, args.max_downloads))
    assert summary["quantified"] == len(resolved) and not summary["failures"], summary

    net_floor = total_bytes / (args.bandwidth * args.max_downloads)
    kallisto_cpu = min(quant_cpu, stream_cpu)
    cpu_floor = kallisto_cpu / args.threads
    floor = max(net_floor, cpu_floor)
    print(f"kallisto CPU: {quant_cpu:.1f} s (batch, -t {args.threads}), {stream_cpu:.1f} s (stream, -t 1)")
    print(f"physical floor: {floor:.1f} s = max(network {net_floor:.1f} s, CPU {cpu_floor:.1f} s)")
    print(f"batch scheme:   {batch_wall:6.1f} s  = {batch_wall / floor:.2f} x floor; "
          f"peak disk {human_bytes(batch_disk.high_water)}")  # fmt: skip
    print(f"stream (flow):  {stream_wall:6.1f} s  = {stream_wall / floor:.2f} x floor, "
          f"{stream_wall / batch_wall:.2f} x batch (flow body {summary['wall_seconds']} s); "
          f"peak disk {human_bytes(summary['disk_high_water_bytes'])} sampled, "
          f"{summary['disk_reserved_high_water']} reserved, budget {human_bytes(budget)} "
          f"-> {'OK' if summary['disk_high_water_bytes'] <= budget else 'EXCEEDED'}")  # fmt: skip
    return "generated", stream_wall, floor, summary["disk_high_water_bytes"], budget


def real_scenario(args, work: Path) -> tuple[str, float, float, int, int]:
    """Three species, ENA-shaped listings, a corrupt and a missing run, a per-client connection cap."""
    import numpy as np

    from flows.rnaseq_quant import RunsFailed, rnaseq_multi_species
    from genoflows.rnaseq.stream import human_bytes
    from genoflows.settings import get_settings
    from genoflows.testing import rnaseq_world as sim

    print("== real-shaped scenario: 3 species in one stream, connection cap, unpaired file first, corrupt/missing")
    work.mkdir(parents=True)
    (work / "srv").mkdir()
    rng = np.random.default_rng(11)
    server = sim.ena_server(work / "srv", max_connections=args.max_downloads,
                            bandwidth_bytes_per_s=args.bandwidth).start()  # fmt: skip
    host = server.base_url.split("://")[1]
    os.environ["GENOFLOWS_ENA_BASE_URL"] = server.base_url
    get_settings.cache_clear()
    catalog = sim.EnaCatalog(work / "srv")
    entries, sizes, expected_ok = [], [], 0
    for s_i, species in enumerate(("Camponotus floridanus", "Monomorium pharaonis", "Solenopsis invicta")):
        tx = sim.make_transcriptome(work / f"tx{s_i}.fa", n_genes=300, seed=20 + s_i)
        rows = []
        for i in range(args.species_runs):
            run = f"SRR{3000001 + 100 * s_i + i}"
            kind = ("excluded" if i == 0 else "missing" if i == 1 and s_i == 1 else
                    "corrupt" if i == 2 and s_i == 0 else "single" if i % 3 == 0 else "paired")  # fmt: skip
            layout = "single" if kind == "single" else "paired"
            n = int(args.fragments * rng.uniform(0.3, 1.7)) * (2 if layout == "single" else 1)
            if kind == "corrupt":  # each of its 4 attempts is a whole download: a small run, or it sets the tail
                n = int(args.fragments * 0.3)
            rows.append({"scientific_name": species, "run": run, "lib_layout": layout, "nominal_length": "250",
                         "exclusion": "low_quality" if kind == "excluded" else "no"})  # fmt: skip
            if kind in ("excluded", "missing"):
                continue  # not on the server (missing) / never asked for (excluded)
            s = sim.simulate_run(tx, work / "gen", run, layout=layout, n_fragments=n, seed=200 + 10 * s_i + i)
            third = None
            if layout == "paired":  # ENA lists the unpaired reads of a paired run first
                third = sim.simulate_run(tx, work / "gen3", run, layout="single", n_fragments=n // 20, seed=9).files[0]
            catalog.add(s, host=host, extra_unpaired=third, unpaired_first=third is not None)
            size = sum(f.stat().st_size for f in s.files)
            sizes.append(size)
            if kind == "corrupt":
                server.add_fault(s.files[0].name, "corrupt", times=100)
            else:
                expected_ok += 1
        shutil.rmtree(work / "gen", ignore_errors=True)
        shutil.rmtree(work / "gen3", ignore_errors=True)
        sim.write_metadata(work / f"meta{s_i}.tsv", rows)
        entries.append(f"  - {{species: {species}, metadata: meta{s_i}.tsv, transcriptome: tx{s_i}.fa}}")
    server.add_route("/filereport", catalog.filereport_handler())
    budget = int(sum(sorted(sizes)[-3:])) + 6 * 4096  # the largest three runs fit at once (+ fetch's small files)
    total_bytes = sum(sizes)
    (work / "ants.yaml").write_text(
        f"out_dir: out\ndisk_budget: {budget}\nmax_downloads: {args.max_downloads}\nthreads: {args.threads}\n"
        f"sources: [ena]\nspecies:\n" + "\n".join(entries) + "\n")  # fmt: skip
    os.environ["GENOFLOWS_CACHE_DIR"] = str(work / "cache")  # indices built inside the flow run
    get_settings.cache_clear()
    print(f"setup: {len(sizes)} runs on the server in 3 species, {human_bytes(total_bytes)}; budget {human_bytes(budget)} "
          f"(3 runs); {args.max_downloads} connections of {human_bytes(args.bandwidth)}/s, cap {args.max_downloads} at the server")  # fmt: skip
    conn_log, trace = ConnectionLog(server), SchedulerTrace()
    cpu1, t1 = child_cpu(), time.monotonic()
    state = rnaseq_multi_species(configs=str(work / "ants.yaml"), return_state=True)
    wall = time.monotonic() - t1
    cpu = child_cpu() - cpu1
    server.stop()
    print(conn_log.report(t1, t1 + wall, args.max_downloads))
    print(trace.report(t1))
    result = state.result(raise_on_failure=False)
    results = result.results if isinstance(result, RunsFailed) else result
    quantified = sum(r["newly_quantified"] for r in results.values())
    peak = max(r["disk_high_water_bytes"] for r in results.values())
    assert quantified == expected_ok, (quantified, expected_ok, state.message)
    net_floor = total_bytes / (args.bandwidth * args.max_downloads)
    cpu_floor = cpu / args.threads
    floor = max(net_floor, cpu_floor)
    print(f"flow run: {state.type.value}: {state.message}")
    print(f"physical floor: {floor:.1f} s = max(network {net_floor:.1f} s, CPU {cpu_floor:.1f} s incl. 3 index builds)")
    print(f"stream (multi-species flow): {wall:6.1f} s = {wall / floor:.2f} x floor; peak disk {human_bytes(peak)} "
          f"sampled, budget {human_bytes(budget)}; server: {server.max_active} connections at most, {server.refused} refused, "
          f"connections busy {100 * server.busy_seconds / (wall * args.max_downloads):.0f}% of the flow run")  # fmt: skip
    return "real-shaped", wall, floor, peak, budget


if __name__ == "__main__":
    main()
