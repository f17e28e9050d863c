"""Create (or update) the work pools prefect.yaml deploys to, with the lab's settings as their job environment.

    make pools                                   # = python deployments/pools.py
    python deployments/pools.py --env-file deployments/pools.env --pool genoflows-process

Every flow run a pool starts (from the UI, a schedule, the API) gets the `GENOFLOWS_*` / `PREFECT_*` variables
of `deployments/pools.env` (copy `pools.env.example`) as its environment: this is the one place for the
settings of runs not started from a shell. Credentials do not belong here: save them as blocks
(AwsCredentials, Secret) and pass the block to the flow; secret-looking names are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path

from dotenv import dotenv_values
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

POOLS = {"genoflows-process": "process", "genoflows-docker": "docker", "genoflows-ecs": "ecs"}
DEFAULT_ENV_FILE = Path(__file__).resolve().parent / "pools.env"
_ALLOWED = re.compile(r"^(GENOFLOWS|PREFECT)_[A-Z0-9_]+$")
_SECRET = re.compile(r"SECRET|PASSWORD|TOKEN|API_KEY|AUTH_STRING|CREDENTIAL", re.IGNORECASE)


def read_env_file(path: Path) -> dict[str, str]:
    """The settings of `path` (KEY=value lines); a clear error for anything that is not a plain setting."""
    values = {k: v for k, v in dotenv_values(path).items()}
    problems = []
    for key, value in values.items():
        if not _ALLOWED.match(key):
            problems.append(f"{key}: only GENOFLOWS_* and PREFECT_* settings belong in {path.name}")
        elif _SECRET.search(key):
            problems.append(f"{key}: looks like a secret; save it as a Prefect block (AwsCredentials/Secret) instead")
        elif value is None:
            problems.append(f"{key}: has no value (write {key}=...)")
    if problems:
        raise SystemExit(f"{path}:\n  " + "\n  ".join(problems))
    return {k: str(v) for k, v in values.items()}


ECS_TEMPLATE = Path(__file__).resolve().parent / "ecs" / "base-job-template.json"
# ECS pool settings that are the pool's, not a run's environment: role ARNs become the template's defaults.
ECS_ROLES = {"execution_role_arn": "GENOFLOWS_ECS_EXECUTION_ROLE_ARN", "task_role_arn": "GENOFLOWS_ECS_TASK_ROLE_ARN"}


def ecs_template(env: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """The ECS pool's job template (deployments/ecs/base-job-template.json: image and both roles required) with
    the role ARNs of `env` or the environment (GENOFLOWS_ECS_EXECUTION_ROLE_ARN / GENOFLOWS_ECS_TASK_ROLE_ARN) as
    defaults; returns it with the rest of `env`. Without the roles a run on the pool is refused naming them."""
    template = json.loads(ECS_TEMPLATE.read_text())
    rest = dict(env)
    for variable, setting in ECS_ROLES.items():
        value = rest.pop(setting, None) or os.environ.get(setting)
        if value:
            template["variables"]["properties"][variable]["default"] = value
    template["variables"]["properties"]["env"]["default"] = {
        **template["variables"]["properties"]["env"].get("default", {}), **rest}
    return template, rest


async def ensure_pool(name: str, kind: str, env: dict[str, str]) -> str:
    """Create pool `name` of type `kind` (or update its job template) with `env` as the default environment."""
    if kind == "ecs":
        template, env = ecs_template(env)
    else:
        template = await get_default_base_job_template_for_infrastructure_type(kind)
        if template is None:
            raise SystemExit(f"no worker type {kind!r} is installed (pip install prefect-docker / prefect-aws)")
        template["variables"]["properties"]["env"]["default"] = env
    async with get_client() as client:
        try:
            await client.read_work_pool(name)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template))
            return "created"
        await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        return "updated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE,
                        help="settings for every run of the pools (default deployments/pools.env, if present)")
    parser.add_argument("--pool", action="append", choices=sorted(POOLS), help="only these pools (default all)")
    args = parser.parse_args(argv)
    env = read_env_file(args.env_file) if args.env_file.exists() else {}
    if args.env_file != DEFAULT_ENV_FILE and not args.env_file.exists():
        raise SystemExit(f"{args.env_file} does not exist")
    for name in args.pool or POOLS:
        done = asyncio.run(ensure_pool(name, POOLS[name], env))
        print(f"{done} work pool {name} ({POOLS[name]}), {len(env)} settings in its job environment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
