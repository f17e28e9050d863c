"""End to end, as a lab uses it: a real `prefect server`, the pools command, `prefect deploy --all`, a process
worker, a GIAB run started through the REST API (the old dashboard's calls, docs/deployments.md), and the
result checked in the Prefect UI in headless Debian chromium. Screenshots land in the test's tmp dir."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from genoflows.testing.prefect_server import prefect_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deployments.md"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def doc_block(marker: str) -> str:
    """The bash block that follows `<!-- marker -->` in docs/deployments.md."""
    m = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"no {marker} block in {DOC}"
    return m.group(1)


def run_doc_block(marker: str, **env: str) -> str:
    # The documented shell snippet, run verbatim: the test proves the README's commands work as written.
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", doc_block(marker)], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _clean_env(server, **extra) -> dict[str, str]:
    """The server's env without any GENOFLOWS_* from the caller: runs must get their settings from the pool."""
    env = {k: v for k, v in server.env(**extra).items() if not k.startswith("GENOFLOWS_")}
    return {**env, **{k: v for k, v in extra.items()}}


@pytest.fixture(scope="module")
def deployed(prefect_server, tmp_path_factory):
    """World + mirror, pools with the settings in their job env, every deployment, a process worker."""
    from genoflows.testing.giab_world import build_world
    from genoflows.testing.http_server import FileServer

    tmp = tmp_path_factory.mktemp("e2e")
    world = build_world(tmp / "world", builds=("GRCh38",))
    with FileServer(world.mirror) as mirror:
        env_file = tmp / "pools.env"
        env_file.write_text(
            f"GENOFLOWS_GIAB_BASE_URL={mirror.base_url}\n"
            f"GENOFLOWS_REFERENCE_FASTA_URLS='{json.dumps(world.reference_urls(mirror.base_url))}'\n"
            f"GENOFLOWS_DATA_DIR={tmp / 'data'}\nGENOFLOWS_REFERENCE_DIR={tmp / 'refs'}\n"
            f"GENOFLOWS_CACHE_DIR={tmp / 'cache'}\n"
        )
        # no GENOFLOWS_HOME: the process deployments default to the checkout they are deployed from
        env = _clean_env(prefect_server, PREFECT_WORKER_QUERY_SECONDS="2")
        pools = subprocess.run([sys.executable, "deployments/pools.py", "--env-file", str(env_file)], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=300)
        assert pools.returncode == 0, pools.stdout + pools.stderr
        t0 = time.monotonic()
        deploy = subprocess.run([prefect_cli(), "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        print(f"prefect deploy --all: {time.monotonic() - t0:.1f} s")
        worker = prefect_server.start([prefect_cli(), "worker", "start", "--pool", "genoflows-process"],
                                      tmp / "worker.log", cwd=tmp, env=env)
        yield {"world": world, "tmp": tmp, "server": prefect_server, "worker": worker, "env_file": env_file}


async def _read(server, fn):
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(server.api_url) as client:
        return await fn(client)


def test_deploy_all_registers_every_deployment(deployed):
    server = deployed["server"]
    wanted = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}

    async def read(client):
        return await client.read_deployments(), await client.read_work_pool("genoflows-process")

    deployments, pool = asyncio.run(_read(server, read))
    by_name = {d.name: d for d in deployments}
    assert set(wanted) <= set(by_name)
    for name, dep in wanted.items():
        got = by_name[name]
        assert got.work_pool_name == dep["work_pool"]["name"] and got.description == dep["description"]
        if dep["work_pool"]["name"] != "genoflows-process":
            assert got.job_variables["image"] == "genoflows:latest", name  # GENOFLOWS_IMAGE unset: never empty
        else:  # GENOFLOWS_HOME unset: the checkout deployed from, never ""
            assert got.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)
        assert got.parameters == (dep.get("parameters") or {}), name
        assert bool(got.schedules) == bool(dep.get("schedules")), name
    assert by_name["rnaseq-multi-species-ecs"].parameters["configs"].startswith("s3://")
    env_default = pool.base_job_template["variables"]["properties"]["env"]["default"]
    assert env_default["GENOFLOWS_DATA_DIR"] == str(deployed["tmp"] / "data")  # the one place for UI-run settings


@pytest.fixture(scope="module")
def giab_run(deployed):
    """A GIAB run started with the documented REST call, as the old dashboard's upload did; waited for."""
    world, server = deployed["world"], deployed["server"]
    sample = world.sample_id("HG004")
    started = run_doc_block("rest-api-start", API=server.api_url, SAMPLE=sample, SOURCE=str(world.lab))
    m = re.search(r"created (\S+) (\S+) (\S+)", started)
    assert m, started
    run_id, name, state = m.groups()

    async def wait(client):
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            run = await client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            await asyncio.sleep(2)
        raise AssertionError(f"run {run_id} not finished: {run.state}\n"
                             f"{(deployed['tmp'] / 'worker.log').read_text()[-4000:]}")

    run = asyncio.run(_read(server, wait))
    return {"id": run_id, "name_at_creation": name, "state_at_creation": state, "run": run, "sample": sample}


def test_rest_calls_of_the_old_dashboard(deployed, giab_run):
    sample, run = giab_run["sample"], giab_run["run"]
    # named after the sample from the moment it was created, not when a worker picked it up
    assert giab_run["name_at_creation"] == sample and giab_run["state_at_creation"] == "SCHEDULED"
    assert run.state.is_completed(), (run.state, (deployed["tmp"] / "worker.log").read_text()[-4000:])
    # A finished run's last log lines reach the API with the worker's next batches: poll (bounded) until they
    # are all there (the run's last line is in, and two reads 2 s apart agree).
    deadline, seen = time.monotonic() + 60, -1
    while True:
        status = run_doc_block("rest-api-status", API=deployed["server"].api_url, SAMPLE=sample)
        count = status.count("\nlog ")
        if (f"{sample} benchmarked" in status and count == seen) or time.monotonic() > deadline:
            break
        seen = count
        time.sleep(2)
    assert f"status {sample} COMPLETED" in status
    logs = [line for line in status.splitlines() if line.startswith("log ")]
    assert any(f"metrics of {sample} written" in line for line in logs), status[-3000:]
    assert any(line.startswith("log [bcftools] bcftools ") and " ok in " in line for line in logs)  # summaries
    tool_lines = [line for line in logs if line.startswith("log [")]
    assert tool_lines and all(" ok in " in line or "FAILED" in line for line in tool_lines), \
        "tool output is summarised (one line per call), not streamed line by line"
    later = run_doc_block("rest-api-status", API=deployed["server"].api_url, SAMPLE=sample, SINCE=str(len(logs) - 2))
    assert len([line for line in later.splitlines() if line.startswith("log ")]) == 2  # ?since=N
    metrics = next((deployed["tmp"] / "data" / "giab" / sample).glob("run-*/metrics.csv"))  # pool env's data dir
    assert "METRIC.Recall" in metrics.read_text()


def _browser(tmp: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp / 'chromium-profile'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))


def _page_shows(driver, url: str | None, texts: list[str], shot: Path, timeout: float = 90, tab: str | None = None) -> str:
    """Open `url` (or stay), click the tab named `tab`, wait until the page's text shows every one of `texts`."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if url:
        driver.get(url)
    if tab:
        WebDriverWait(driver, timeout, poll_frequency=1).until(
            lambda d: d.find_elements(By.XPATH, f"//*[@role='tablist']//li[normalize-space(.)='{tab}']"))[0].click()
    try:
        WebDriverWait(driver, timeout, poll_frequency=1).until(
            lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts))
    except TimeoutException:
        driver.save_screenshot(str(shot))
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{url} does not show {texts}; it shows:\n{body[:3000]}") from None
    driver.save_screenshot(str(shot))
    return driver.find_element(By.TAG_NAME, "body").text


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="Debian's chromium + chromium-driver missing: make setup installs them")
def test_the_ui_shows_the_deployment_the_run_its_logs_and_metrics(deployed, giab_run, tmp_path):
    url, sample, run_id = deployed["server"].url, giab_run["sample"], giab_run["id"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    driver = _browser(tmp_path)
    try:
        deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
        _page_shows(driver, f"{url}/deployments", [f"{len(deployments)} Deployments", "giab-benchmark"],
                    shots / "deployments.png")  # the list pages (10 a page): all counted, GIAB's on the first
        _page_shows(driver, f"{url}/runs/flow-run/{run_id}", [sample, "Completed", "small-variant engine: bcftools"],
                    shots / "flow-run-logs.png")
        _page_shows(driver, None, [f"giab-{sample.lower().replace('_', '-')}-metrics", "headline metrics"],
                    shots / "flow-run-artifacts.png", tab="Artifacts")
    finally:
        driver.quit()
    assert all((shots / f).stat().st_size > 10_000 for f in ("deployments.png", "flow-run-logs.png",
                                                             "flow-run-artifacts.png"))
