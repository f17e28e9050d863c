"""The task runner is a deployment-level setting: the same flow fans out on threads or on a Dask cluster of
worker processes, with the same results."""

from __future__ import annotations

import os
from pathlib import Path

import pysam
import pytest
from prefect import flow, task

from genoflows.settings import get_settings
from tasks.runners import configured_task_runner
from tasks.tooling import run_logged


@task
def hom_alt_count(vcf: str, out_dir: str) -> tuple[str, int, int]:
    """A real tool call per input (bcftools), as the pipelines' per-chromosome steps are; runs where it lands."""
    out = Path(out_dir) / (Path(vcf).name.replace(".vcf.gz", ".hom.vcf.gz"))
    run_logged(["bcftools", "view", "-i", 'GT="AA"', "-Oz", "-o", str(out), vcf])
    return Path(vcf).name, sum(1 for _ in pysam.VariantFile(str(out))), os.getpid()


def fan_out(vcfs: list[str], out_dir: str) -> list[tuple[str, int, int]]:
    return [f.result() for f in hom_alt_count.map(vcfs, out_dir)]


def make_vcfs(root: Path, n: int) -> list[str]:
    paths = []
    for k in range(n):
        header = pysam.VariantHeader()
        header.contigs.add(f"scaffold_{k}", length=100_000)
        header.add_sample("S1")
        header.formats.add("GT", 1, "String", "Genotype")
        path = root / f"scaffold_{k}.vcf.gz"
        with pysam.VariantFile(str(path), "wz", header=header) as out:
            for i in range(20 + 7 * k):
                rec = out.new_record(contig=f"scaffold_{k}", start=10 + 101 * i, alleles=("C", "T"))
                rec.samples["S1"]["GT"] = (1, 1) if (i * (k + 3)) % 4 == 0 else (0, 1)
                out.write(rec)
        paths.append(str(path))
    return paths


def run_with(kind: str, monkeypatch, vcfs, out_dir: Path):
    monkeypatch.setenv("GENOFLOWS_TASK_RUNNER", kind)
    get_settings.cache_clear()
    runner = configured_task_runner()
    get_settings.cache_clear()
    out_dir.mkdir()
    return flow(fan_out, name=f"fan-out-{kind}", task_runner=runner)(vcfs, str(out_dir)), runner


def test_dask_cluster_gives_the_thread_pools_results(prefect_harness, monkeypatch, tmp_path):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # Dask's worker processes report here too
    monkeypatch.setenv("GENOFLOWS_DASK_WORKERS", "2")
    (tmp_path / "in").mkdir()
    vcfs = make_vcfs(tmp_path / "in", 6)
    threads, _ = run_with("threads", monkeypatch, vcfs, tmp_path / "threads")
    dask, runner = run_with("dask", monkeypatch, vcfs, tmp_path / "dask")
    assert type(runner).__name__ == "DaskTaskRunner"
    assert [r[:2] for r in threads] == [r[:2] for r in dask]
    assert {r[2] for r in threads} == {os.getpid()}
    assert os.getpid() not in {r[2] for r in dask} and len({r[2] for r in dask}) == 2  # two worker processes
    for name in (Path(v).name.replace(".vcf.gz", ".hom.vcf.gz") for v in vcfs):
        assert (tmp_path / "threads" / name).read_bytes() != b""
        assert [str(r) for r in pysam.VariantFile(str(tmp_path / "threads" / name))] == [
            str(r) for r in pysam.VariantFile(str(tmp_path / "dask" / name))]


def test_ray_without_its_extra_says_how_to_install(monkeypatch):
    monkeypatch.setenv("GENOFLOWS_TASK_RUNNER", "ray")
    get_settings.cache_clear()
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"pip install '\.\[ray\]'"):
            configured_task_runner()
    else:
        assert type(configured_task_runner()).__name__ == "RayTaskRunner"
    finally:
        get_settings.cache_clear()


def test_run_bounded_keeps_at_most_a_window_in_flight_and_yields_states_in_order(prefect_harness):
    """Many short tool calls: the thread pool is 8 wide, the window 3, so never more than 3 task runs run at
    once (task.map would start 8); every state comes back in submission order, a failed one as a state."""
    import threading
    import time

    from prefect.task_runners import ThreadPoolTaskRunner

    from tasks.runners import run_bounded

    running, peak, lock = [0], [0], threading.Lock()

    @task
    def call(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.2)
            run_logged(["true"] if i != 4 else ["false"])
            return i
        finally:
            with lock:
                running[0] -= 1

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=8))
    def many() -> list:
        return [(s.type.value, s.result() if s.is_completed() else None)
                for s in run_bounded(call, ({"i": i} for i in range(10)), window=3)]

    got = many()
    assert got == [("COMPLETED", i) if i != 4 else ("FAILED", None) for i in range(10)]
    assert 2 <= peak[0] <= 3
    with pytest.raises(ValueError, match="window"):
        next(run_bounded(call, [{"i": 1}], window=0))
