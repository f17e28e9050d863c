"""Benchmark: the local imputation engine through Prefect vs a plain parallel loop, and the Cloudgene client's
status requests for a long queued+running job vs a fixed 10-s poll.

1. A generated cohort (msprime, seeded, kept between runs) of several chromosomes; panels compressed once
   beforehand (both sides use the same .msav). `loop` = the same minimac4 commands (genoflows.tools.minimac4)
   in a ThreadPoolExecutor with the flow's parallelism (4) plus tabix; `flow` = `impute(service="local")`
   (ephemeral API started beforehand; the flow also validates inputs, checks the panel cache, verifies and
   checksums outputs and writes the manifest). Flow runs alternate with loop runs; each round's ratio is
   flow / mean of the loops around it. Target ratio <= 1.10.
2. The local Cloudgene server runs `--speed` times faster than the wall clock; a job waits `--queued-hours`
   in the queue and runs `--running-hours`. The client polls with the project's schedule on a clock scaled the
   same way; a fixed 10-s poll is run against an identical job. Printed: status requests and how late each
   noticed completion (server time).

    .venv/bin/python benchmarks/imputation_local.py [--chroms 4] [--length 5000000] [--panel 500] [--study 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def local_engine(args, work: Path) -> None:
    import statistics

    from flows.imputation import impute
    from genoflows.imputation.local import compressed_panel
    from genoflows.imputation.simulate import make_cohort
    from genoflows.settings import get_settings
    from genoflows.toolrun import run_tool
    from genoflows.tools import minimac4

    chroms = tuple(str(c) for c in range(1, args.chroms + 1))
    # The cohort is seeded: simulate it once per size and keep it (simulating costs minutes, not what we time).
    cohort_dir = Path(args.cohort_cache) / f"c{args.chroms}-l{args.length}-p{args.panel}-s{args.study}-seed11"
    t0 = time.perf_counter()
    if not (cohort_dir / ".complete").exists():
        import shutil

        shutil.rmtree(cohort_dir, ignore_errors=True)
        make_cohort(
            cohort_dir,
            chroms=chroms,
            panel_size=args.panel,
            study_size=args.study,
            length=args.length,
            seed=11,
        )
        (cohort_dir / ".complete").touch()
    panel = {c: cohort_dir / f"panel.chr{c}.vcf.gz" for c in chroms}
    study = {c: cohort_dir / f"study.chr{c}.vcf.gz" for c in chroms}
    print(
        f"cohort: {len(chroms)} chromosomes x {args.length:,} bp, panel {args.panel}, study {args.study} "
        f"({time.perf_counter() - t0:.1f} s to simulate or load), {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    # What a user of minimac4 must do once either way: compress each panel. Both sides use these .msav files
    # (the flow finds them in its cache by the panel's checksum).
    msav = {c: compressed_panel(panel[c], get_settings().cache_dir) for c in chroms}
    workers = 4  # the flow's ThreadPoolTaskRunner(max_workers=4): same parallelism, same minimac4 -t 1

    def one(c: str, out: Path) -> None:
        dose = out / f"chr{c}.dose.vcf.gz"
        run_tool(minimac4.impute_argv(msav[c], study[c], dose, out / f"chr{c}.info.gz"))
        run_tool(["tabix", "-f", "-p", "vcf", str(dose)])  # a server-layout result is indexed

    def plain_loop(i: int) -> float:
        out = work / f"loop{i}"
        out.mkdir()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda c: one(c, out), chroms))
        return time.perf_counter() - t0

    def the_flow(i: int) -> float:
        t0 = time.perf_counter()
        impute(
            inputs=[str(study[c]) for c in chroms],
            service="local",
            refpanel=str(cohort_dir / "panel.chr{chrom}.vcf.gz"),
            out_dir=str(work / f"flow{i}"),
        )
        return time.perf_counter() - t0

    from prefect import flow

    @flow
    def warm() -> None:
        pass

    warm()  # the ephemeral API starts here, outside the timing
    # Alternate loop and flow so drift in the machine's load hits both sides; loop first and last.
    loops, flows = [plain_loop(0)], []
    for i in range(args.repeat):
        flows.append(the_flow(i))
        loops.append(plain_loop(i + 1))
        print(
            f"  round {i + 1}: loop {loops[-2]:.2f} s, flow {flows[-1]:.2f} s, loop {loops[-1]:.2f} s "
            f"(load {os.getloadavg()[0]:.2f})"
        )
    ratios = [f / ((a + b) / 2) for f, a, b in zip(flows, loops, loops[1:], strict=False)]
    print(
        f"local engine: plain loop median {statistics.median(loops):.2f} s, flow median "
        f"{statistics.median(flows):.2f} s; ratio flow/loop per round {', '.join(f'{r:.2f}' for r in ratios)}, "
        f"median {statistics.median(ratios):.2f} (target <= 1.10)"
    )


def polling(args, work: Path) -> None:
    from genoflows.imputation.cloudgene import CloudgeneClient
    from genoflows.imputation.polling import Clock, PollSchedule, wait_until_terminal
    from genoflows.imputation.simulate import make_cohort
    from genoflows.testing.cloudgene_server import CloudgeneServer

    cohort = make_cohort(work / "poll", chroms=("20",), panel_size=10, study_size=25, length=50_000)
    queued, running = args.queued_hours * 3600, args.running_hours * 3600
    rows = []
    for label, schedule in (
        ("genoflows backoff (30 s -> 300 s cap, 900 s while queued)", PollSchedule()),
        ("fixed 10-s poll (imputationbot)", PollSchedule(initial=10, factor=1.0, cap=10, queued_cap=10)),
    ):
        virtual = [0.0]  # one virtual clock for server and client: sleeping advances it at once
        clock = Clock(now=lambda v=virtual: v[0], sleep=lambda s, v=virtual: v.__setitem__(0, v[0] + s))
        with CloudgeneServer(
            tokens={"u": "t"}, clock=clock.now, queue_seconds=queued, run_seconds=running, export_seconds=60
        ) as server:
            with CloudgeneClient(server.base_url, "t", "imputationserver2") as client:
                job_id = client.submit([cohort.study["20"]], {"refpanel": "hapmap-2"}, "bench")
                t0 = time.perf_counter()
                wait_until_terminal(
                    lambda c=client, j=job_id: c.phase(c.status(j)), schedule=schedule, clock=clock
                )
                real = time.perf_counter() - t0
                late = clock.now() - (queued + running + 60)
            rows.append((label, server.status_requests, late, real))
    print(
        f"\nCloudgene status requests for a job queued {args.queued_hours} h and running {args.running_hours} h "
        f"(virtual clock):"
    )
    for label, n, late, real in rows:
        print(
            f"  {label:<58} {n:>6} requests, completion noticed {late:5.0f} s after it happened ({real:.1f} s real)"
        )
    print(f"  ratio fixed/backoff: {rows[1][1] / rows[0][1]:.1f}x fewer requests")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--chroms", type=int, default=4)
    p.add_argument("--length", type=int, default=5_000_000)
    p.add_argument("--panel", type=int, default=500)
    p.add_argument("--study", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3, help="flow runs, each between two loop runs")
    p.add_argument(
        "--cohort-cache",
        default=str(Path(tempfile.gettempdir()) / "genoflows-bench-imputation"),
        help="where the simulated cohort is kept between runs",
    )
    p.add_argument("--queued-hours", type=float, default=3.0)
    p.add_argument("--running-hours", type=float, default=4.0)
    p.add_argument("--skip-engine", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="imputation-bench-") as tmp:
        work = Path(tmp)
        os.environ["GENOFLOWS_CACHE_DIR"] = str(work / "cache")
        os.environ["GENOFLOWS_DATA_DIR"] = str(work / "data")
        polling(args, work)
        if not args.skip_engine:
            local_engine(args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
