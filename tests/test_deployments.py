"""prefect.yaml: every deployment points at a real flow, and `prefect deploy --all` registers them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_entrypoints_load_and_parameters_exist():
    from prefect.flows import load_flow_from_entrypoint

    for dep in _deployments():
        flow = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
        assert set(dep.get("parameters", {})) <= set(flow.parameters.properties), dep["name"]


def test_prefect_deploy_all_registers_every_deployment(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    prefect = str(Path(sys.executable).parent / "prefect")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "GENOFLOWS_HOME": str(ROOT),
           "GENOFLOWS_IMAGE": "localhost/genoflows:dev"}
    for pool, kind in (("genoflows-process", "process"), ("genoflows-docker", "docker"), ("genoflows-ecs", "ecs")):
        subprocess.run([prefect, "work-pool", "create", pool, "--type", kind, "--overwrite"],
                       env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)
    out = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    listed = subprocess.run([prefect, "deployment", "ls"], env={**env, "COLUMNS": "250"}, cwd=ROOT,
                            capture_output=True, text=True, timeout=300).stdout
    for dep in _deployments():
        assert dep["name"] in listed, listed


def test_a_process_worker_runs_the_giab_deployment(prefect_harness, tmp_path):
    """What a scientist does from the UI: a flow run of the deployment, picked up by a process worker."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from genoflows.giab.demo_data import build_world
    from genoflows.testing.http_server import FileServer

    world = build_world(tmp_path / "world", builds=("GRCh38",))
    prefect = str(Path(sys.executable).parent / "prefect")
    with FileServer(world.mirror) as mirror:
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "GENOFLOWS_HOME": str(ROOT),
               "GENOFLOWS_GIAB_BASE_URL": mirror.base_url,
               "GENOFLOWS_REFERENCE_FASTA_URLS": json.dumps(world.reference_urls(mirror.base_url)),
               "GENOFLOWS_DATA_DIR": str(tmp_path / "data"), "GENOFLOWS_REFERENCE_DIR": str(tmp_path / "refs"),
               "GENOFLOWS_CACHE_DIR": str(tmp_path / "cache")}
        subprocess.run([prefect, "work-pool", "create", "genoflows-process", "--type", "process", "--overwrite"],
                       env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)
        subprocess.run([prefect, "--no-prompt", "deploy", "-n", "giab-benchmark"], env=env, cwd=ROOT,
                       check=True, capture_output=True, timeout=600)
        params = {"sample_id": world.sample_id("HG004"), "source": str(world.lab), "out_dir": str(tmp_path / "out")}
        run = subprocess.run([prefect, "deployment", "run", "giab_benchmark/giab-benchmark", "--params",
                              json.dumps(params)], env=env, cwd=ROOT, check=True, capture_output=True, text=True,
                             timeout=300)
        worker = subprocess.run([prefect, "worker", "start", "--pool", "genoflows-process", "--run-once"],
                                env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    run_id = next(w for w in run.stdout.split() if w.count("-") == 4 and len(w) == 36)

    async def final_state():
        async with get_client() as client:
            return (await client.read_flow_run(run_id)).state

    import asyncio

    state = asyncio.run(final_state())
    assert state.is_completed(), (state, worker.stdout[-3000:])
    metrics = next((tmp_path / "out" / world.sample_id("HG004")).glob("run-*/metrics.csv")).read_text()
    assert "METRIC.Recall" in metrics and "bcftools" in metrics
