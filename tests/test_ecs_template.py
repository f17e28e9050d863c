"""The ECS work pool's base job template renders, for every ECS deployment in prefect.yaml, the task definition
an ECS worker would register (prefect-aws's own rendering code), and refuses a deployment missing a role."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect_aws.workers.ecs_worker import ECSJobConfiguration, ECSWorker

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = json.loads((ROOT / "deployments" / "ecs" / "base-job-template.json").read_text())
pytestmark = pytest.mark.usefixtures("prefect_harness")  # prefect-aws resolves block references via the API

ENV = {
    "GENOFLOWS_IMAGE": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/genoflows:0.1.0",
    "GENOFLOWS_ECS_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/genoflows-ecs-execution",
    "GENOFLOWS_ECS_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/genoflows-flow",
}


def _image_step_output(env) -> str:
    """What prefect.yaml's build step `image` (deployments/image_name.py) prints for this environment."""
    return subprocess.run([sys.executable, str(ROOT / "deployments" / "image_name.py")], env={**os.environ, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


def _substitute(value, env):
    """prefect deploy's substitution of job variables: `{{ $VAR }}` and the build step's `{{ image.stdout }}`."""
    if isinstance(value, str):
        value = value.replace("{{ image.stdout }}", _image_step_output(env))
        return re.sub(r"\{\{\s*\$(\w+)\s*\}\}", lambda m: env[m.group(1)], value)
    if isinstance(value, dict):
        return {k: _substitute(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env) for v in value]
    return value


def ecs_deployments() -> list[dict]:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return [d for d in config["deployments"] if d["work_pool"]["name"] == "genoflows-ecs"]


def pool_template(roles: bool = True) -> dict:
    """The ECS pool's template exactly as `make pools` (deployments/pools.py) creates it."""
    from deployments.pools import ECS_ROLES, ecs_template

    settings = {setting: ENV[setting] for setting in ECS_ROLES.values()} if roles else {}
    with pytest.MonkeyPatch.context() as mp:
        for setting in ECS_ROLES.values():
            mp.delenv(setting, raising=False)
        return ecs_template(settings)[0]


def render(job_variables: dict, template: dict | None = None) -> tuple[dict, ECSJobConfiguration]:
    """Validate the variables as the server does, then build the task definition as the ECS worker does."""
    template = template or pool_template()
    schema = template["variables"]
    values = {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
    values.update(job_variables)
    jsonschema.validate(values, schema)
    config = asyncio.run(ECSJobConfiguration.from_template_and_values(template, values))
    flow_run = FlowRun(flow_id=uuid.uuid4(), name="nightly-ants", deployment_id=uuid.uuid4())
    config.prepare_for_flow_run(flow_run)
    return ECSWorker(work_pool_name="genoflows-ecs")._prepare_task_definition(config, "eu-west-1", flow_run), config


def test_the_template_keeps_every_setting_prefect_aws_knows():
    default = ECSWorker.get_default_base_job_template()
    assert set(default["job_configuration"]) <= set(TEMPLATE["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(TEMPLATE["variables"]["properties"])


def test_there_are_ecs_deployments():
    names = {d["entrypoint"] for d in ecs_deployments()}
    assert "flows/rnaseq_quant.py:rnaseq_multi_species" in names
    assert len(names) >= 8  # every flow (test_deployments.py checks that against prefect.yaml's entrypoints)


def fargate_accepts(cpu: int, memory: int) -> bool:
    """The task sizes Fargate accepts (CPU units -> MiB), as listed in the ECS developer guide."""
    gib = 1024
    sizes = {256: [512, 1024, 2048], 512: range(1 * gib, 4 * gib + 1, gib), 1024: range(2 * gib, 8 * gib + 1, gib),
             2048: range(4 * gib, 16 * gib + 1, gib), 4096: range(8 * gib, 30 * gib + 1, gib),
             8192: range(16 * gib, 60 * gib + 1, 4 * gib), 16384: range(32 * gib, 120 * gib + 1, 8 * gib)}
    return memory in sizes.get(cpu, ())


def test_fargate_sizes_are_checked():
    assert fargate_accepts(4096, 30720) and fargate_accepts(512, 2048)
    assert not fargate_accepts(4096, 32768) and not fargate_accepts(1000, 4096) and not fargate_accepts(8192, 18432)


@pytest.mark.parametrize("deployment", ecs_deployments(), ids=lambda d: d["name"])
def test_each_ecs_deployment_renders_a_task_definition(deployment):
    task_definition, config = render(_substitute(deployment["work_pool"].get("job_variables", {}), ENV))
    assert len(task_definition["containerDefinitions"]) == 1  # the flow image, not a second default one
    container = task_definition["containerDefinitions"][0]
    assert container["name"] == "genoflows"
    assert container["image"] == ENV["GENOFLOWS_IMAGE"]
    assert task_definition["executionRoleArn"] == ENV["GENOFLOWS_ECS_EXECUTION_ROLE_ARN"]
    assert config.task_run_request["overrides"]["taskRoleArn"] == ENV["GENOFLOWS_ECS_TASK_ROLE_ARN"]
    assert task_definition["requiresCompatibilities"] == ["FARGATE"] and task_definition["networkMode"] == "awsvpc"
    cpu, memory = int(task_definition["cpu"]), int(task_definition["memory"])
    assert fargate_accepts(cpu, memory), f"Fargate has no {cpu} CPU / {memory} MiB task size"
    logs = container["logConfiguration"]
    assert logs["logDriver"] == "awslogs" and logs["options"]["awslogs-stream-prefix"] == "genoflows"
    env = config.env
    assert env["GENOFLOWS_DATA_DIR"].startswith("/tmp/")  # a fresh task's disk is scratch; state lives on s3://


@pytest.mark.parametrize("role", ["execution_role_arn", "task_role_arn"])
def test_a_deployment_missing_a_role_is_refused_naming_it(role):
    """A pool made without one role (no GENOFLOWS_ECS_*_ROLE_ARN when `make pools` ran) refuses every run."""
    template = pool_template(roles=False)
    other = ({"execution_role_arn", "task_role_arn"} - {role}).pop()
    variables = {"image": ENV["GENOFLOWS_IMAGE"], other: ENV[f"GENOFLOWS_ECS_{other.split('_role')[0].upper()}_ROLE_ARN"]}
    with pytest.raises(jsonschema.ValidationError, match=role):
        render(variables, template)
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        render({**variables, role: "genoflows-role"}, template)
