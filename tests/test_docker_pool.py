"""The Docker work pool for real: the flow image built from deployments/Dockerfile (on a locally made base image,
through podman), a Docker-type Prefect worker against podman's Docker API, the GIAB deployment deployed to the
docker pool by `prefect deploy`, run on the demo world; results, logs and the container's user checked.

First run on a fresh machine: base image ~1 min, flow image build several minutes (compilers for truvari's
dependencies, the Debian tools, pip); both are cached in podman's storage (tags keyed by the recipe and by a
hash of the Dockerfile and the files it copies), so later runs build nothing unless the code changed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genoflows.testing import podman
from genoflows.testing.prefect_server import prefect_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # a cold image build takes ~10 min
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def podman_api(prefect_server, tmp_path_factory):
    """The flow image (cached) and podman's Docker API service on a unix socket; yields (image, env)."""
    if why := podman.have_podman():
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("the podman recipe here runs rootful (CI runs as root)")
    tmp = tmp_path_factory.mktemp("podman")
    env = podman.podman_env(tmp / "conf")
    t0 = time.monotonic()
    image, _ = podman.ensure_flow_image(ROOT, env, tmp / "build.log")
    print(f"flow image {image}: {time.monotonic() - t0:.0f} s (0 when cached)")
    sock = tmp / "podman.sock"
    prefect_server.start(["podman", "system", "service", "--time=0", f"unix://{sock}"], tmp / "service.log",
                         env=env)
    import docker

    deadline = time.monotonic() + 60
    while True:
        try:
            version = docker.DockerClient(base_url=f"unix://{sock}").version()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert "Podman" in json.dumps(version)
    yield image, {**env, "DOCKER_HOST": f"unix://{sock}"}, tmp


def test_giab_runs_in_the_flow_image_on_the_docker_pool(prefect_server, podman_api):
    from prefect.client.orchestration import PrefectClient

    from genoflows.testing.giab_world import build_world
    from genoflows.testing.http_server import FileServer

    image, env, tmp = podman_api
    world = build_world(tmp / "world", builds=("GRCh38",))
    data = tmp / "data"  # the container's /data (it runs as uid 1000, not root)
    data.mkdir()
    data.chmod(0o777)
    with FileServer(world.mirror) as mirror:
        env_file = tmp / "pools.env"
        env_file.write_text(f"GENOFLOWS_GIAB_BASE_URL={mirror.base_url}\n"
                            f"GENOFLOWS_REFERENCE_FASTA_URLS='{json.dumps(world.reference_urls(mirror.base_url))}'\n")
        run_env = {k: v for k, v in prefect_server.env(**env).items() if not k.startswith("GENOFLOWS_")}
        pools = subprocess.run([sys.executable, "deployments/pools.py", "--env-file", str(env_file), "--pool",
                                "genoflows-docker"], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=300)
        assert pools.returncode == 0, pools.stderr
        deploy = subprocess.run([prefect_cli(), "--no-prompt", "deploy", "-n", "giab-benchmark-docker"], cwd=ROOT,
                                env={**run_env, "GENOFLOWS_IMAGE": image}, capture_output=True, text=True, timeout=600)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        prefect_server.start([prefect_cli(), "worker", "start", "--pool", "genoflows-docker", "--type", "docker"],
                             tmp / "worker.log", cwd=tmp, env={**run_env, "PREFECT_WORKER_QUERY_SECONDS": "2"})
        sample = world.sample_id("HG004")

        async def run_it():
            async with PrefectClient(prefect_server.api_url) as client:
                dep = await client.read_deployment_by_name("giab_benchmark/giab-benchmark-docker")
                assert dep.job_variables["image"] == image
                run = await client.create_flow_run_from_deployment(
                    dep.id, name=sample, parameters={"sample_id": sample, "source": str(world.lab)},
                    # no registry: use the local image; the lab's files read-only, /data kept on the host
                    job_variables={"image_pull_policy": "Never",
                                   "volumes": [f"{world.lab}:{world.lab}:ro", f"{data}:/data"]})
                deadline = time.monotonic() + 600
                while not (run := await client.read_flow_run(run.id)).state.is_final():
                    assert time.monotonic() < deadline, f"{run.state}\n{(tmp / 'worker.log').read_text()[-4000:]}"
                    await asyncio.sleep(2)
                from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

                # a finished run's last log lines arrive with the container's final log batch: wait (bounded)
                log_deadline = time.monotonic() + 60
                while True:
                    logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
                    if any(" benchmarked: " in log.message for log in logs) or time.monotonic() > log_deadline:
                        return run, [log.message for log in logs]
                    await asyncio.sleep(1)

        run, logs = asyncio.run(run_it())
    worker_log = (tmp / "worker.log").read_text()
    assert run.state.is_completed(), (run.state, worker_log[-4000:])
    assert run.name == sample
    metrics = next((data / "giab" / sample).glob("run-*/metrics.csv"))  # one immutable directory per run
    assert "METRIC.Recall" in metrics.read_text() and ",bcftools," in metrics.read_text()
    assert metrics.stat().st_uid == 1000  # written by the image's non-root user
    assert any(m.startswith("[bcftools] bcftools ") and " ok in " in m for m in logs), logs[:40]
    assert any(f"{sample} benchmarked: /data/giab/{sample}/run-" in m for m in logs)
    assert f"Creating Docker container '{sample}'" in worker_log
    import docker

    client, deadline = docker.DockerClient(base_url=env["DOCKER_HOST"]), time.monotonic() + 60
    # sparse: no per-container inspect, which answers 404 when the engine removes the container in between
    while (left := client.containers.list(all=True, sparse=True, filters={"name": sample})) and \
            time.monotonic() < deadline:
        time.sleep(1)  # the engine removes an exited container asynchronously
    assert left == []  # auto_remove: the next run of this sample can take the name again
