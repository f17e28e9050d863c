"""Benchmark: streaming RNA-seq quantification vs the physical floor and vs the old batch scheme.

A generated transcriptome and ~20 runs (sizes vary, paired and single) are served by a local ENA-like
HTTP server throttled to a fixed bandwidth per connection. Measured in one process:
  batch   download a batch of `max_downloads` runs in parallel, quantify them one by one, delete, repeat
          (amalgkit getfastq/quant with batches), same download concurrency, plain Python;
  stream  the `rnaseq_quant` Prefect flow (ephemeral API started beforehand, so its start-up is excluded).
Floor = max(total bytes / (bandwidth per connection x max_downloads), kallisto CPU seconds / cores).

    .venv/bin/python benchmarks/rnaseq_stream.py [--runs 20] [--bandwidth 1.0e6] [--max-downloads 4]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bandwidth", type=float, default=1.0e6, help="bytes/s per connection")
    ap.add_argument("--max-downloads", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--fragments", type=int, default=90_000, help="mean fragments per run")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rnaseq-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["GENOFLOWS_CACHE_DIR"] = str(work / "cache")

    import numpy as np

    from genoflows.testing import rnaseq_world as sim
    from genoflows.rnaseq.metadata import Run
    from genoflows.rnaseq.sources import Endpoints, resolve_all
    from genoflows.rnaseq.stages import SpeciesDirs, cleanup_run, download_run, quantify_run
    from genoflows.rnaseq.stream import DiskSampler, human_bytes
    from genoflows.settings import get_settings
    from genoflows.testing.http_server import FileServer
    from genoflows.tools import kallisto

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
    resolved, failed = resolve_all(runs, ["ena"], Endpoints(server.base_url, server.base_url + "/sra", server.base_url + "/sdl"))
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
    from prefect import flow

    from flows.rnaseq_quant import rnaseq_quant

    @flow
    def warm_up() -> int:
        return 0

    warm_up()  # starts the ephemeral Prefect API: not part of the measurement
    cpu1, t1 = child_cpu(), time.monotonic()
    summary = rnaseq_quant(
        metadata=str(work / "metadata.tsv"), species="Bench species", transcriptome=str(work / "transcripts.fa"),
        out_dir=str(work / "stream"), threads=args.threads, max_downloads=args.max_downloads,
        disk_budget=budget, sources=["ena"],
    )  # fmt: skip
    stream_wall = time.monotonic() - t1
    stream_cpu = child_cpu() - cpu1
    server.stop()
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
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
