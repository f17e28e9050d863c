"""What orchestration costs per tool call: the project's tool runner in Prefect tasks against bare Prefect tasks
calling subprocess.run and against a plain thread pool, N = 10, 100, 1000, side by side in one run.

Each configuration runs in its own Python process (so peak RSS is its own), with the same parallelism, on the
ephemeral API and on a local `prefect server` started here. The tool is `true`: every millisecond above the plain
pool's is orchestration. Prints per-call overhead (ms) over the plain pool, the ratio to bare Prefect tasks
(target ≤ 1.5) and the flow process's peak memory (target: flat in N beyond the results).

    python benchmarks/orchestration_overhead.py [--n 10 100 1000] [--workers 8] [--no-server]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
mode, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from genoflows.toolrun import run_tool
argv = ["true"]

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

if mode == "plain":
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: run_tool(argv), range(n)))
    wall = time.perf_counter() - t0
else:
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner
    from tasks.tooling import run_logged

    @task(persist_result=False, cache_policy=None)
    def bare(i: int) -> int:
        return subprocess.run(argv).returncode

    @task(persist_result=False, cache_policy=None)
    def project(i: int) -> int:
        return run_logged(argv).returncode

    chosen = bare if mode == "bare" else project

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers), persist_result=False)
    def fan(n: int) -> int:
        return sum(f.result() for f in chosen.map(range(n)))

    fan(1)  # warm-up: API start, imports
    t0 = time.perf_counter()
    fan(n)
    wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "peak_mib": peak_mib()}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, n: int, workers: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), str(workers)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(label: str, ns: list[int], workers: int, env: dict) -> None:
    print(f"\n{label}: per-call overhead over a plain thread pool (ms), peak RSS of the flow process (MiB)")
    print(f"{'N':>6} {'plain s':>8} {'bare ms':>8} {'project ms':>10} {'ratio':>6} {'bare MiB':>9} {'project MiB':>11}")
    for n in ns:
        plain, bare, project = (run(m, n, workers, env) for m in ("plain", "bare", "project"))
        ob = max(0.0, (bare["wall"] - plain["wall"]) / n * 1000)
        op = max(0.0, (project["wall"] - plain["wall"]) / n * 1000)
        ratio = op / ob if ob > 0 else float("nan")
        print(f"{n:>6} {plain['wall']:>8.2f} {ob:>8.2f} {op:>10.2f} {ratio:>6.2f} {bare['peak_mib']:>9.0f} "
              f"{project['peak_mib']:>11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--no-server", action="store_true", help="skip the local prefect server part")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"orchestration overhead, {os.cpu_count()} cores, load {load:.1f}, workers {args.workers}")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "PREFECT_HOME": home, "PREFECT_LOGGING_LEVEL": "WARNING",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        table("ephemeral API", args.n, args.workers, env)
        if args.no_server:
            return
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            import httpx

            url = f"http://127.0.0.1:{port}/api"
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(1)
            table(f"local prefect server ({url})", args.n, args.workers, {**env, "PREFECT_API_URL": url})
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
