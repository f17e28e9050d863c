"""What orchestration costs per tool call: the project's tool runner in Prefect tasks against bare Prefect tasks
calling subprocess.run and against a plain thread pool, N = 10, 100, 1000, side by side in one run, under each
of the settings that change it (MODES: `task.map`, `tasks.runners.run_bounded` with and without waiting for
event delivery, the console handler at WARNING, 10 calls per task run).

Each setting runs in its own Python process (so peak RSS is its own), with the same parallelism, on the
ephemeral API and on a local `prefect server` started here. The tool is `true`: every millisecond above the plain
pool's is orchestration. Prints per-call overhead (ms) over the plain pool until the flow returns and until the
API has every event and log line, the ratio to bare Prefect tasks (target ≤ 1.5) and the flow process's peak
memory (target: flat in N beyond the results). What each setting bought: docs/scale.md.

    .venv/bin/python benchmarks/orchestration_overhead.py [--n 10 100 1000] [--workers 8]
        [--window 64] [--modes bare project delivered console both batched] [--no-server]
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
import json, resource, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
mode, n, workers, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
from genoflows.toolrun import run_tool
argv = ["true"]

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

if mode == "plain":
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: run_tool(argv), range(n)))
    wall = delivered = time.perf_counter() - t0
else:
    from prefect import flow, task
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.task_runners import ThreadPoolTaskRunner
    from tasks.runners import run_bounded
    from tasks.tooling import run_logged

    @task(persist_result=False, cache_policy=None)
    def bare(i: int) -> int:
        return subprocess.run(argv).returncode

    @task(persist_result=False, cache_policy=None)
    def project(i: int) -> int:
        return run_logged(argv).returncode

    @task(persist_result=False, cache_policy=None)
    def project_batch(ids: list[int]) -> int:
        return sum(run_logged(argv).returncode for _ in ids)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers), persist_result=False)
    def fan(n: int) -> int:
        if mode == "bare":
            return sum(f.result() for f in bare.map(range(n)))
        if mode == "project":
            return sum(f.result() for f in project.map(range(n)))
        if mode == "batched":
            ids = list(range(n))
            return sum(f.result() for f in project_batch.map([ids[k:k + 10] for k in range(0, n, 10)]))
        states = run_bounded(project, ({"i": i} for i in range(n)), window=window,
                             wait_for_delivery=mode == "delivered")
        return sum(s.result() for s in states)

    fan(1)  # warm-up: API start, imports
    t0 = time.perf_counter()
    fan(n)
    wall = time.perf_counter() - t0
    EventsWorker.drain_all(timeout=900)  # until the API has every state and log line of the run
    APILogWorker.drain_all(timeout=900)
    delivered = time.perf_counter() - t0
print(json.dumps({"wall": wall, "delivered": delivered, "peak_mib": peak_mib()}))
"""

QUIET_CONSOLE = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}  # INFO lines still reach the API (UI)
MODES = {  # name -> (what it measures, the flow it runs, extra environment): the settings compared side by side
    "bare": ("bare Prefect tasks calling subprocess.run, task.map (Prefect's defaults)", "bare", {}),
    "project": ("project tool runner (run_logged) in tasks, task.map: every future held", "project", {}),
    "window": ("project, tasks.runners.run_bounded(window): futures dropped per window", "window", {}),
    "delivered": ("project, run_bounded(window) waiting for event delivery between windows", "delivered", {}),
    "console": ("project, task.map, INFO lines to the API only, not to the console", "project", QUIET_CONSOLE),
    "both": ("project, run_bounded + event delivery + INFO lines to the API only", "delivered", QUIET_CONSOLE),
    "batched": ("project, 10 tool calls per task run (a tenth of the task runs)", "batched", {}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, n: int, workers: int, window: int, env: dict) -> dict:
    _, kind, extra = MODES.get(mode, ("", mode, {}))
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(n), str(workers), str(window)],
                         env={**env, **extra}, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} N={n} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(label: str, ns: list[int], modes: list[str], workers: int, window: int, env: dict) -> None:
    print(f"\n{label} (load {os.getloadavg()[0]:.1f})")
    print("  ms/call = wall over the plain thread pool's, per call; 'flow' stops when the flow returns,"
          " 'delivered' when the API has every state and log line; ratio = over bare Prefect's")
    print(f"{'N':>5} {'setting':<10} {'flow ms':>8} {'ratio':>6} {'deliv ms':>9} {'ratio':>6} {'peak MiB':>9}")
    for n in ns:
        plain = run("plain", n, workers, window, env)
        got = {m: run(m, n, workers, window, env) for m in modes}
        ms = {m: (max(0.0, (r["wall"] - plain["wall"]) / n * 1000),
                  max(0.0, (r["delivered"] - plain["wall"]) / n * 1000)) for m, r in got.items()}
        print(f"{n:>5} {'plain':<10} {plain['wall'] / n * 1000:>8.2f} {'':>6} {'':>9} {'':>6} "
              f"{plain['peak_mib']:>9.0f}   (ms/call of the plain pool itself)")
        for m in modes:
            rf = ms[m][0] / ms["bare"][0] if ms.get("bare", (0,))[0] > 0 else float("nan")
            rd = ms[m][1] / ms["bare"][1] if ms.get("bare", (0, 0))[1] > 0 else float("nan")
            print(f"{n:>5} {m:<10} {ms[m][0]:>8.2f} {rf:>6.2f} {ms[m][1]:>9.2f} {rd:>6.2f} "
                  f"{got[m]['peak_mib']:>9.0f}")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--window", type=int, default=64, help="run_bounded's window")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--no-server", action="store_true", help="skip the local prefect server part")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"orchestration overhead, {os.cpu_count()} cores, load {load:.1f}, workers {args.workers}, "
          f"window {args.window}")
    for m in args.modes:
        print(f"  {m:<10} {MODES[m][0]}")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        table("ephemeral API", args.n, args.modes, args.workers, args.window, env)
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
            table(f"local prefect server ({url})", args.n, args.modes, args.workers, args.window,
                  {**env, "PREFECT_API_URL": url})
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
