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
