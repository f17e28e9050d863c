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
