"""prefect.yaml: every deployment's parameters validate against its flow's schema, every Docker deployment has
an image, the pools command refuses secrets. (Registering them on a real server: test_deployments_server.py.)"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def _deployments() -> list[dict]:
    return _project()["deployments"]


@cache
def _schema(entrypoint: str) -> dict:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(ROOT / entrypoint)).parameters.model_dump_for_openapi()


def deployment_problems(dep: dict) -> list[str]:
    """Why `dep`'s parameters would not validate against its flow's schema (empty when they do).

    Runs started from the UI fill in the required parameters, so an unscheduled deployment may leave them out;
    a scheduled one starts runs by itself, so its parameters plus the flow's defaults must be complete.
    """
    from prefect.utilities.schema_tools import validate

    schema = _schema(dep["entrypoint"])
    params = dep.get("parameters") or {}
    problems = [f"unknown parameter {name!r}" for name in set(params) - set(schema["properties"])]
    scheduled = any(s.get("cron") or s.get("interval") or s.get("rrule") for s in dep.get("schedules") or [])
    errors = validate(params, schema, ignore_required=not scheduled)
    problems += [f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors]
    return problems


@pytest.mark.parametrize("dep", _deployments(), ids=lambda d: d["name"])
def test_every_deployment_validates_against_its_flow(dep):
    assert deployment_problems(dep) == [], dep["name"]
    assert dep.get("description") and dep.get("tags"), f"{dep['name']}: the UI shows description and tags"


def test_the_check_fails_for_a_deployment_that_would_not_run():
    """The same check on broken copies of the real nightly deployment: each must be caught."""
    nightly = next(d for d in _deployments() if d["name"] == "rnaseq-multi-species-ecs")
    assert nightly["schedules"] and deployment_problems(nightly) == []
    missing = copy.deepcopy(nightly)
    missing["parameters"] = {}
    assert any("'configs' is a required property" in p for p in deployment_problems(missing))
    wrong_type = copy.deepcopy(nightly)
    wrong_type["parameters"] = {"configs": 42}
    assert deployment_problems(wrong_type)
    unknown = copy.deepcopy(nightly)
    unknown["parameters"] = {**nightly["parameters"], "config": "typo.yaml"}
    assert "unknown parameter 'config'" in deployment_problems(unknown)
    giab = next(d for d in _deployments() if d["name"] == "giab-benchmark")
    bad_choice = {**giab, "parameters": {"build": "hg19"}}
    assert any("hg19" in p for p in deployment_problems(bad_choice))


def test_every_flow_has_process_and_docker_deployments():
    by_entry: dict[str, set[str]] = {}
    for dep in _deployments():
        by_entry.setdefault(dep["entrypoint"], set()).add(dep["work_pool"]["name"])
    for entry, pools in by_entry.items():
        assert {"genoflows-process", "genoflows-docker"} <= pools, entry


def _step_output(step_name: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a build step of prefect.yaml's definitions as `prefect deploy` does (its script, argv split)."""
    step = _project()["definitions"]["build"][step_name][0]["prefect.deployments.steps.run_shell_script"]
    argv = step["script"].split()
    argv[1] = str(ROOT / argv[1])
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _image_step_output(env: dict[str, str]) -> subprocess.CompletedProcess:
    return _step_output("image_name", env)


def test_process_deployments_never_get_an_empty_checkout(tmp_path):
    process_deps = [d for d in _deployments() if d["work_pool"]["name"] == "genoflows-process"]
    for dep in process_deps:
        assert dep["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ home.stdout }}"
        assert dep["build"][0]["prefect.deployments.steps.run_shell_script"]["id"] == "home", dep["name"]
    env = {k: v for k, v in os.environ.items() if k != "GENOFLOWS_HOME"}
    assert _step_output("checkout_dir", env, cwd=tmp_path).stdout.strip() == str(ROOT)
    assert _step_output("checkout_dir", {**env, "GENOFLOWS_HOME": str(ROOT)}).stdout.strip() == str(ROOT)
    for bad, why in ((str(tmp_path), "not a genoflows checkout"), ("relative/dir", "absolute")):
        out = _step_output("checkout_dir", {**env, "GENOFLOWS_HOME": bad})
        assert out.returncode != 0 and why in out.stderr


def test_docker_deployments_never_get_an_empty_image():
    container_deps = [d for d in _deployments() if d["work_pool"]["name"] != "genoflows-process"]
    assert container_deps
    for dep in container_deps:
        assert dep["work_pool"]["job_variables"]["image"] == "{{ image.stdout }}", dep["name"]
        assert dep["build"][0]["prefect.deployments.steps.run_shell_script"]["id"] == "image", dep["name"]
    env = {k: v for k, v in os.environ.items() if k != "GENOFLOWS_IMAGE"}
    assert _image_step_output(env).stdout.strip() == "genoflows:latest"
    assert _image_step_output({**env, "GENOFLOWS_IMAGE": " "}).stdout.strip() == "genoflows:latest"
    assert _image_step_output({**env, "GENOFLOWS_IMAGE": "localhost/genoflows:dev"}).stdout.strip() == \
        "localhost/genoflows:dev"
    bad = _image_step_output({**env, "GENOFLOWS_IMAGE": "--privileged"})
    assert bad.returncode != 0 and "not an image reference" in bad.stderr


def test_pools_env_file_takes_settings_and_refuses_secrets(tmp_path):
    sys.path.insert(0, str(ROOT / "deployments"))
    try:
        from pools import read_env_file
    finally:
        sys.path.pop(0)
    good = tmp_path / "pools.env"
    good.write_text("GENOFLOWS_DATA_DIR=/data\n# a comment\nPREFECT_LOGGING_LEVEL=DEBUG\n")
    assert read_env_file(good) == {"GENOFLOWS_DATA_DIR": "/data", "PREFECT_LOGGING_LEVEL": "DEBUG"}
    example = read_env_file(ROOT / "deployments" / "pools.env.example")
    assert example["GENOFLOWS_DATA_DIR"] == "/data"
    for line, why in (("GENOFLOWS_AWS_SECRET_ACCESS_KEY=abc", "block"), ("PREFECT_API_KEY=pnu_x", "block"),
                      ("HOME=/root", "only GENOFLOWS_")):
        bad = tmp_path / "bad.env"
        bad.write_text(line + "\n")
        with pytest.raises(SystemExit, match=why):
            read_env_file(bad)


def test_readme_settings_table_lists_every_setting():
    """Runs started from the UI get settings only through the documented place, so the table must be complete."""
    from genoflows.settings import Settings

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings"):]
    table = table[:table.index("\n## ", 5)]
    missing = [f"GENOFLOWS_{name.upper()}" for name in Settings.model_fields
               if f"`GENOFLOWS_{name.upper()}`" not in table]
    assert missing == [], f"README's settings table lacks {missing}"


def test_rnaseq_on_ecs_keeps_its_state_on_s3():
    """An ECS task's disk is gone when it ends: the resuming RNA-seq deployment must keep out_dir on s3:// (checked
    against the flow's own parameter, so a renamed parameter fails here), with one flow run at a time."""
    ecs = [d for d in _deployments() if d["work_pool"]["name"] == "genoflows-ecs" and "rnaseq" in d["entrypoint"]]
    assert ecs
    for dep in ecs:
        assert "out_dir" in _schema(dep["entrypoint"])["properties"], dep["name"]
        assert str(dep["parameters"].get("out_dir", "")).startswith("s3://"), dep["name"]
        assert dep.get("concurrency_limit") == 1, dep["name"]


def test_every_flow_runs_on_ecs_and_its_results_go_to_s3():
    """Every flow entrypoint has an ECS deployment, and every ECS deployment whose flow takes an `out_dir` (it
    writes results, or - the watcher - passes one to the runs it starts) defaults it to an s3:// prefix: an ECS
    task's disk is gone when the task ends. The flow's own schema decides which flows write results."""
    ecs = [d for d in _deployments() if d["work_pool"]["name"] == "genoflows-ecs"]
    missing = {d["entrypoint"] for d in _deployments()} - {d["entrypoint"] for d in ecs}
    assert missing == set(), f"flows without an ECS deployment: {sorted(missing)}"
    writers = [d for d in ecs if "out_dir" in _schema(d["entrypoint"])["properties"]]
    assert {d["entrypoint"].split(":")[1] for d in writers} >= {"giab_benchmark", "rnaseq_quant", "gwas", "impute"}
    local = [d["name"] for d in writers if not str((d.get("parameters") or {}).get("out_dir", "")).startswith("s3://")]
    assert local == [], f"ECS deployments whose results would vanish with the task: {local}"
    for dep in ecs:  # a watcher on ECS starts the ECS gwas deployment, not the process one
        if (target := (dep.get("parameters") or {}).get("deployment")) is not None:
            started = next(d for d in _deployments() if f"{d['entrypoint'].split(':')[1]}/{d['name']}" == target)
            assert started["work_pool"]["name"] == "genoflows-ecs", dep["name"]
