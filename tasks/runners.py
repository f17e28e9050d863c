"""Which task runner a flow run fans out on: a deployment-level choice, made by settings, not by flow code.

- `threads` (default): Prefect's ThreadPoolTaskRunner, bounded by `GENOFLOWS_MAX_WORKERS` (Prefect's own default
  is unbounded). Right for tool-bound work on one machine: the tools are separate processes anyway.
- `dask`: prefect-dask's DaskTaskRunner. With `GENOFLOWS_DASK_ADDRESS` it joins an existing cluster (a
  `dask scheduler` + `dask worker` fleet, or dask-cloudprovider on ECS); without, it starts a LocalCluster of
  `GENOFLOWS_DASK_WORKERS` processes — for Python-heavy tasks (the builtin regenie engine) that the GIL serialises.
- `ray`: prefect-ray's RayTaskRunner at `GENOFLOWS_RAY_ADDRESS` (install the `ray` extra: `pip install .[ray]`).

The choice is read when a flow module is imported, so a deployment sets it through its job variables' `env`
(`GENOFLOWS_TASK_RUNNER: dask`), and the flow code stays the same everywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

from prefect import Task
from prefect.futures import wait
from prefect.states import State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from genoflows.settings import get_settings


def configured_task_runner() -> TaskRunner:
    """The task runner the settings ask for (see the module docstring)."""
    s = get_settings()
    if s.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if s.dask_address:
            return DaskTaskRunner(address=s.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": s.dask_workers, "threads_per_worker": 1, "processes": True,
                            "dashboard_address": None}
        )
    if s.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:
            raise RuntimeError("GENOFLOWS_TASK_RUNNER=ray needs prefect-ray: pip install '.[ray]'") from exc
        return RayTaskRunner(address=s.ray_address)
    return ThreadPoolTaskRunner(max_workers=s.max_workers)


def fan_out_runner(max_workers: int) -> TaskRunner:
    """The runner of one fan-out inside a flow run (e.g. GWAS step 2 per chromosome): the configured kind, with
    at most `max_workers` tasks at once on the default thread pool (a Dask/Ray cluster sets its own width)."""
    if get_settings().task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    return configured_task_runner()


def run_bounded(
    task: Task,
    parameter_sets: Iterable[Mapping[str, Any]],
    *,
    window: int = 64,
    runner: TaskRunner | None = None,
    wait_for_delivery: bool = True,
    delivery_timeout: float = 120.0,
) -> Iterator[State]:
    """Run `task` once per parameter set, at most `window` task runs in flight, and yield each final state in
    submission order; a window's futures are dropped once resolved.

    Why not `task.map`: a flow run holds every future (and its state) until it ends, and every task run queues
    three state events, each with a copy of its context (task run, transaction, asset context), until the API
    has taken them. The API (SQLite) takes them slower than short tool calls finish, so that backlog — not the
    results — is what made a 1000-call map's memory grow with N. With `wait_for_delivery` the next window starts
    once the backlog is delivered: memory stays flat and the flow run ends when the API has its last state,
    instead of the process lingering to drain it. On Dask/Ray (`runner=`) the task runs' events leave from the
    workers, so only the window bound applies here.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    sets = iter(parameter_sets)
    while chunk := list(islice(sets, window)):
        futures = [runner.submit(task, parameters=dict(p)) if runner is not None else task.submit(**p)
                   for p in chunk]
        wait(futures)
        states = [f.state for f in futures]
        del futures, chunk
        if wait_for_delivery:
            wait_for_event_delivery(delivery_timeout)
        yield from states


def wait_for_event_delivery(timeout: float) -> bool:
    """Block until this process's Prefect events queue is empty (the API has every state so far), at most
    `timeout` seconds; False when it did not empty in time (the run goes on: events are never dropped)."""
    from prefect.events.utilities import should_emit_events
    from prefect.events.worker import EventsWorker

    if not should_emit_events():
        return True
    waiter = threading.Thread(target=EventsWorker.instance().wait_until_empty, daemon=True,
                              name="genoflows-event-delivery")
    waiter.start()
    waiter.join(timeout)
    return not waiter.is_alive()
