"""Submit exactly once across crashes: the flow runs in a subprocess that is killed (-9) at a controlled
point, then a rerun resumes the same remote job; the test server counts submissions. Also cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.states import Cancelled

from flows.imputation import _on_cancellation, cancel_imputation, impute
from genoflows.imputation.record import RECORD_NAME, load_record
from genoflows.imputation.remote import EXIT_AFTER_SUBMIT_ENV
from tests.imputation_fixtures import FAST_ENV, save_block

pytest_plugins = ["tests.imputation_fixtures"]
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from flows.imputation import impute
impute(**json.loads(sys.argv[1]))
"""


def _start(kwargs: dict, tmp_path: Path, **extra_env) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, **FAST_ENV, "PREFECT_API_URL": PREFECT_API_URL.value(), **extra_env}
    env["GENOFLOWS_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(kwargs)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "child.log", "wb"),
    )


def _records(out: Path) -> list[Path]:
    return list(out.glob(f"gf-*/{RECORD_NAME}"))


def _read_flow_run(run_id: str):
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as c:
            return await c.read_flow_run(run_id)

    return asyncio.run(read())


def _active_slots(limit_name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        return c.read_global_concurrency_limit_by_name(limit_name).active_slots


def _wait(cond, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_kill_between_submit_and_record_then_rerun_finds_job_by_name(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path
):
    block = save_block(cloudgene, imp_token)
    out = tmp_path / "out"
    kw = dict(inputs=[str(imp_cohort.study["20"])], service=block, refpanel="apps@hapmap-2", out_dir=str(out))
    proc = _start(kw, tmp_path, **{EXIT_AFTER_SUBMIT_ENV: "1"})
    assert proc.wait(timeout=300) == 137, (tmp_path / "child.log").read_text()[-3000:]
    assert cloudgene.submissions == 1
    (record_file,) = _records(out)
    assert load_record(record_file.parent).job_id is None  # the server answered, the id never got recorded
    state = impute(return_state=True, **kw)
    assert state.is_completed(), state.message
    (job,) = cloudgene.jobs.values()
    assert cloudgene.submissions == 1 and load_record(record_file.parent).job_id == job.id
    assert any(
        "found on the server by its name" in h["detail"] for h in load_record(record_file.parent).history
    )


def test_kill_while_polling_then_rerun_resumes_and_cancel_hook(
    prefect_harness, imp_cohort, cloudgene, imp_token, imp_fast, tmp_path
):
    cloudgene.queue_seconds = 600  # stays queued until the test lets it run
    # An account limit of 1 job: the killed run dies holding its slot (a lease the ephemeral API never expires);
    # the rerun resumes that job, so it must take the slot over instead of waiting for it forever.
    block = save_block(cloudgene, imp_token, max_concurrent_jobs=1)
    out = tmp_path / "out"
    kw = dict(inputs=[str(imp_cohort.study["21"])], service=block, refpanel="apps@hapmap-2", out_dir=str(out))
    proc = _start(kw, tmp_path)
    _wait(lambda: _records(out) and load_record(_records(out)[0].parent).state == "waiting")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_record(_records(out)[0].parent).slot_lease  # died holding the account slot
    (job,) = cloudgene.jobs.values()
    job.queue_s = 0.0  # the queue moves on while nobody watches
    state = impute(return_state=True, **kw)
    assert state.is_completed(), state.message
    assert cloudgene.submissions == 1
    assert (
        _active_slots(f"imputation-account-{block}") == 0
        and not load_record(_records(out)[0].parent).slot_lease
    )

    # cancellation: a second killed run, then the on_cancellation hook of its flow run cancels the remote job
    cloudgene.queue_seconds = 600
    kw2 = {**kw, "inputs": [str(imp_cohort.study["20"])]}
    proc = _start(kw2, tmp_path)
    _wait(lambda: [load_record(p.parent).state for p in _records(out)].count("waiting") == 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    new = next(j for j in cloudgene.jobs.values() if j.id != job.id)
    assert cloudgene.state_of(new) == 1
    (run_id,) = [
        p.stem
        for p in (out / ".active").iterdir()
        if load_record(Path(json.loads(p.read_text())["record_dir"])).job_id == new.id
    ]
    assert _active_slots(f"imputation-account-{block}") == 1
    _on_cancellation(impute, _read_flow_run(run_id), Cancelled())
    assert cloudgene.state_of(new) == 6
    assert _active_slots(f"imputation-account-{block}") == 0  # the cancelled job's slot is free again
    assert load_record(out / new.name).state == "canceled"
    # and cancel_imputation cancels by id
    cloudgene.queue_seconds = 600
    from genoflows.imputation.cloudgene import CloudgeneClient

    with CloudgeneClient(cloudgene.base_url, imp_token, "imputationserver2") as c:
        other = c.submit([imp_cohort.study["20"]], {"refpanel": "hapmap-2"}, "by-hand")
    assert cancel_imputation(service=block, job_id=other) == "canceled"
    assert cloudgene.state_of(cloudgene.jobs[other]) == 6
