"""The gwas and watch_manifests flows end to end: moto S3 in server mode, a Prefect API, the built-in engine.

Tests named `*_standin` use tests/gwas_standin/regenie, a plink2-based fake that only serves to make a
chromosome fail or crash on demand; every other test runs the real built-in engine, genoflows-regenie.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest

from genoflows.gwas.merge import merge_text
from genoflows.testing.artifacts import read_artifacts
from genoflows.testing.gwas_world import make_cohort

pytestmark = pytest.mark.slow
EX = Path(os.environ.get("GENOFLOWS_SHARED_DIR") or Path(__file__).parents[1] / ".." / "shared") / "testdata" / "regenie-example"
STANDIN = Path(__file__).parent / "gwas_standin"
LAB, RESULTS = "gwas-lab", "gwas-results"


@pytest.fixture(scope="module")
def env(moto_endpoint, tmp_path_factory, prefect_harness):
    """Settings pointed at moto and a temp data dir; the built-in engine on PATH (it sits beside python)."""
    from genoflows.settings import get_settings

    data = tmp_path_factory.mktemp("gwas-data")
    saved = {k: os.environ.get(k) for k in ("GENOFLOWS_S3_ENDPOINT_URL", "GENOFLOWS_DATA_DIR", "PATH",
                                            "GENOFLOWS_RETRY_BASE_DELAY_SECONDS", "GENOFLOWS_RETRY_ATTEMPTS")}
    os.environ.update({"GENOFLOWS_S3_ENDPOINT_URL": moto_endpoint, "GENOFLOWS_DATA_DIR": str(data),
                       "GENOFLOWS_RETRY_BASE_DELAY_SECONDS": "0.1", "GENOFLOWS_RETRY_ATTEMPTS": "1",
                       "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    get_settings.cache_clear()
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    for b in (LAB, RESULTS):
        s3.create_bucket(Bucket=b)
    for f in ("example_3chr.bed", "example_3chr.bim", "example_3chr.fam", "example_3chr.bgen",
              "example_3chr.bgen.bgi", "example_3chr.sample", "example.pgen", "example.pvar", "example.psam",
              "phenotype.txt", "phenotype_bin.txt", "covariates.txt", "fid_iid_to_remove.txt"):
        s3.upload_file(str(EX / f), LAB, f"example/{f}")
    for f in ("bt3_step1_pred.list", "bt3_step1_1.loco", "bt3_step1_2.loco"):  # regenie v4.1.2's own step 1
        s3.upload_file(str(EX / "golden" / f), LAB, f"example/golden/{f}")
    yield s3
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    get_settings.cache_clear()


def _put_manifest(s3, key: str, manifest: dict) -> str:
    s3.put_object(Bucket=LAB, Key=key, Body=json.dumps(manifest).encode())
    return f"s3://{LAB}/{key}"


def _text(s3, uri: str) -> str:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return gzip.decompress(body).decode() if key.endswith(".gz") else body.decode()


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[1:]]


def _unsplit_step2(work: Path, out: Path) -> None:
    """The same step-2 command the flow ran for one unit, without --chr/--range: one whole-genome run."""
    marker = json.loads(next((work / "step2").glob("*.done.json")).read_text())
    argv = list(marker["argv"])
    for flag in ("--chr", "--range"):
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    argv[argv.index("--out") + 1] = str(out)
    subprocess.run(argv, check=True, capture_output=True)


def test_bed_from_an_s3_manifest_with_chunks_equal_to_an_unsplit_run(env):
    from flows.gwas import gwas
    from genoflows.settings import get_settings

    uri = _put_manifest(env, "example/bed.manifest.json", {
        "experimentId": "bed3", "s3Path": f"s3://{LAB}/example",
        "inputData": {"format": "bed", "filePrefix": "example_3chr"},
        "phenotype": {"file": "phenotype.txt", "columns": ["Y1", "Y2"]},
        "covariates": {"file": "covariates.txt"}, "traitType": "qt", "regenieOptions": {"--bsize": 100},
    })
    out = gwas(manifest=uri, engine="builtin", out_dir=f"s3://{RESULTS}/runs", chunk_variants=150, max_parallel=2,
               run_id="r1")
    assert out == f"s3://{RESULTS}/runs/bed3/r1"
    keys = {o["Key"] for o in env.list_objects_v2(Bucket=RESULTS, Prefix="runs/bed3/r1/")["Contents"]}
    for name in ("Y1.regenie.gz", "Y2.regenie.gz", "Y1.manhattan.png", "Y1.qq.png", "Y2.top_hits.tsv", "run.json"):
        assert f"runs/bed3/r1/{name}" in keys
    record = json.loads(_text(env, f"{out}/run.json"))
    assert record["engine"] == "builtin" and record["engine_binary"] == "genoflows-regenie" and record["engine_version"]
    assert [c["chromosome"] for c in record["chromosomes"]] == ["1", "2", "3"]
    assert [c["parts"] for c in record["chromosomes"]] == [1, 3, 1]  # chr 2 (400 variants) in --range chunks
    merged = _text(env, f"{out}/Y1.regenie.gz")
    golden = [r for c in (1, 2, 3) for r in _rows((EX / "golden" / f"qt3_step2_chr{c}_Y1.regenie").read_text())]
    got = _rows(merged)
    assert [r[:3] for r in got] == [r[:3] for r in golden]  # every variant, in regenie's order
    # chunks merged are byte-identical to one unsplit run of the same engine command
    work = get_settings().data_dir.resolve() / "gwas" / "bed3" / "r1"
    _unsplit_step2(work, work / "unsplit")
    assert merged == (work / "unsplit_Y1.regenie").read_text()
    assert read_artifacts("gwas-bed3-y1-top-hits") and read_artifacts("gwas-bed3-chromosomes")
    plots = read_artifacts("gwas-bed3-plots")[0].data
    assert "λGC" in plots and "Signature=" in plots  # presigned plot URLs for an s3:// out_dir

    # a retry on a fresh container (no local work dir): finished steps come back from S3, nothing is recomputed
    import shutil

    shutil.rmtree(work)
    assert gwas(manifest=uri, engine="builtin", out_dir=f"s3://{RESULTS}/runs", chunk_variants=150, run_id="r1") == out
    prov = work / "provenance.jsonl"
    tool_runs = [json.loads(line) for line in prov.read_text().splitlines()] if prov.exists() else []
    assert not [r for r in tool_runs if "--step" in r["argv"]]
    record = json.loads(_text(env, f"{out}/run.json"))
    assert all(c["reused"] == c["parts"] for c in record["chromosomes"])
    assert _text(env, f"{out}/Y1.regenie.gz") == merged


def test_non_human_cohort_planted_signals_are_the_top_hits(env, tmp_path):
    from flows.gwas import gwas

    cohort = make_cohort(tmp_path / "cohort", n_samples=400, variants_per_chrom=250)
    manifest = {"experimentId": "fish", "s3Path": str(cohort.directory),
                "inputData": {"format": "bed", "filePrefix": "cohort"},
                "phenotype": {"file": "phenotype.txt", "columns": ["height"]},
                "covariates": {"file": "covariates.txt"}, "traitType": "qt", "regenieOptions": {"--bsize": 100}}
    out = Path(gwas(manifest=manifest, engine="builtin", out_dir=str(tmp_path / "res"), chunk_variants=200,
                    run_id="r1"))
    merged = gzip.decompress((out / "height.regenie.gz").read_bytes()).decode()
    assert [r[0] for r in _rows(merged)][::250] == list(cohort.chromosomes)  # names kept as they are
    import pandas as pd

    hits = pd.read_csv(out / "height.top_hits.tsv", sep="\t")
    leads = hits[hits["lead"]]
    assert set(leads["ID"].head(len(cohort.causal))) == set(cohort.causal)
    assert (leads["LOG10P"].head(len(cohort.causal)) >= 7.3).all()
    record = json.loads((out / "run.json").read_text())
    assert 0.8 < record["traits"][0]["lambda_gc"] < 1.3
    _unsplit_step2(out, out / "unsplit")
    whole, _ = merge_text([out / "unsplit_height.regenie"], {str(i): c for i, c in enumerate(cohort.chromosomes, 1)})
    assert merged == whole


@pytest.fixture(scope="module")
def small_cohort(env, tmp_path_factory):
    """The smallest cohort (300 samples, 4 x 150 variants), its manifest and its thread-pool run (the default
    runner), which the Dask runs below must reproduce byte for byte."""
    from flows.gwas import gwas

    root = tmp_path_factory.mktemp("small-cohort")
    cohort = make_cohort(root / "cohort", n_samples=300, variants_per_chrom=150)
    manifest = {"experimentId": "fish", "s3Path": str(cohort.directory),
                "inputData": {"format": "bed", "filePrefix": "cohort"},
                "phenotype": {"file": "phenotype.txt", "columns": ["height"]},
                "covariates": {"file": "covariates.txt"}, "traitType": "qt", "regenieOptions": {"--bsize": 100}}
    out = Path(gwas(manifest=manifest, engine="builtin", out_dir=str(root / "threads"), run_id="r1"))
    merged = gzip.decompress((out / "height.regenie.gz").read_bytes())
    assert merged.count(b"\n") > 4 * 100
    return cohort, manifest, out, merged


def _on_dask(monkeypatch) -> None:
    from prefect.settings import PREFECT_API_URL

    from genoflows.settings import get_settings

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the Dask workers report to the same API
    monkeypatch.setenv("GENOFLOWS_TASK_RUNNER", "dask")
    monkeypatch.setenv("GENOFLOWS_DASK_WORKERS", "2")
    get_settings.cache_clear()


def test_step2_fan_out_on_a_dask_cluster_equals_the_thread_pool(small_cohort, tmp_path, monkeypatch):
    """GENOFLOWS_TASK_RUNNER=dask: step 2's chromosome task runs execute in two Dask worker processes."""
    import tasks.runners
    from flows.gwas import gwas
    from genoflows.settings import get_settings

    cohort, manifest, _, threads = small_cohort
    used = []  # plain data only: the flow (pickled into Dask's context) must not reach a live runner
    configured = tasks.runners.configured_task_runner

    def recording():
        runner = configured()
        used.append((type(runner).__name__, dict(getattr(runner, "cluster_kwargs", None) or {})))
        return runner

    monkeypatch.setattr(tasks.runners, "configured_task_runner", recording)
    _on_dask(monkeypatch)
    out = Path(gwas(manifest=manifest, engine="builtin", out_dir=str(tmp_path / "dask"), run_id="r1"))
    get_settings.cache_clear()
    status = json.loads((out / "run.json").read_text())["chromosomes"]
    assert {r["status"] for r in status} == {"done"} and len(status) == len(cohort.chromosomes)
    assert used == [("DaskTaskRunner", {"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                        "dashboard_address": None})]
    assert gzip.decompress((out / "height.regenie.gz").read_bytes()) == threads


def test_regenie_on_aws_batch_from_a_two_process_dask_cluster(small_cohort, moto_endpoint, tmp_path, monkeypatch):
    """An AwsBatch block naming the built-in engine's tool (genoflows-regenie) sends every regenie call to AWS
    Batch (moto + the local agent): step 1 from the flow, step 2 from the Dask worker processes, which do not
    see the flow's context, so the block travels with each step-2 task. The results equal the thread pool's;
    each step-2 job staged the .loco files its prediction list names."""

    from flows.gwas import gwas
    from genoflows.gwas.inputs import read_pred_list
    from genoflows.settings import get_settings
    from genoflows.testing.batch_agent import batch_block, local_batch
    from genoflows.toolrun import read_provenance
    from genoflows.tools.regenie import BUILTIN

    cohort, manifest, _, threads = small_cohort
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = "gwas-batch-staging"
    batch = batch_block(moto_endpoint, {BUILTIN: (1, 2048)}, bucket=bucket, poll=(0.2, 0.5))
    _on_dask(monkeypatch)
    with local_batch(moto_endpoint) as agent:
        out = Path(gwas(manifest=manifest, engine="builtin", out_dir=str(tmp_path / "batch"), run_id="r1",
                        batch=batch))
    get_settings.cache_clear()
    assert gzip.decompress((out / "height.regenie.gz").read_bytes()) == threads

    calls = [r for r in read_provenance(out) if r["tool"] == BUILTIN]
    steps = sorted(r["argv"][r["argv"].index("--step") + 1] for r in calls)
    assert steps == ["1"] + ["2"] * len(cohort.chromosomes)
    assert all(r["executor"] and r["executor"]["queue"] == "genoflows-tools" and r["executor"]["batch_job_id"]
               for r in calls)  # every regenie call ran as a Batch job, none where a task ran
    assert len(agent.submitted) == len(calls)
    # step 1 came back with a prediction list naming its .loco files here, where step 2 read them from
    pred = out / "step1" / "fit_pred.list"
    locos = [loco for _, loco in read_pred_list(pred, str(pred))]
    assert locos and all(Path(loco).parent == pred.parent and Path(loco).is_file() for loco in locos)
    # each step-2 job's spec (the contract with the container) stages those .loco files beside the list
    specs = [json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
             for o in s3.list_objects_v2(Bucket=bucket, Prefix="jobs/")["Contents"] if o["Key"].endswith("spec.json")]
    step2_specs = [sp for sp in specs if "--pred" in sp["argv"]]
    assert len(step2_specs) == len(cohort.chromosomes)
    assert all({str(pred), *locos} <= set(sp["inputs"]) for sp in step2_specs)


def _flow_runs(deployment_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))

    return asyncio.run(read())


def test_watcher_one_run_per_manifest_version_even_when_watchers_overlap(env, tmp_path):
    from prefect.flow_engine import run_flow

    from flows.gwas import gwas, watch_manifests
    from genoflows.settings import get_settings

    deployment_id = gwas.to_deployment(name="gwas-watch-test").apply()
    common = {"s3Path": f"s3://{LAB}/example", "covariates": {"file": "covariates.txt"}, "traitType": "bt",
              "remove": "fid_iid_to_remove.txt", "regenieOptions": {"--bsize": 100},
              "phenotype": {"file": "phenotype_bin.txt", "columns": ["Y1"]}}
    bgen = {"experimentId": "bgen3", **common, "inputData": {  # step 2 only, on regenie's own step-1 predictions
        "format": "bgen", "filePrefix": "example_3chr.bgen", "sampleFile": "example_3chr.sample"},
        "startStep": 2, "predictionList": "golden/bt3_step1_pred.list"}
    pgen = {"experimentId": "pgen1", **common, "inputData": {"format": "pgen", "filePrefix": "example"}}
    _put_manifest(env, "incoming/bgen3/manifest.json", bgen)
    _put_manifest(env, "incoming/pgen1.manifest.json", pgen)
    _put_manifest(env, "incoming/notes.json", {"not": "a manifest"})
    kwargs = {"prefix": f"s3://{LAB}/incoming/", "deployment": "gwas/gwas-watch-test", "engine": "builtin",
              "out_dir": f"s3://{RESULTS}/watched", "gwas_parameters": {"chunk_variants": 300}}
    results = []
    watchers = [threading.Thread(target=lambda: results.append(watch_manifests(**kwargs))) for _ in range(2)]
    for t in watchers:
        t.start()
    for t in watchers:
        t.join()
    assert len(results) == 2 and len(_flow_runs(deployment_id)) == 2
    _put_manifest(env, "incoming/bgen3/manifest.json", bgen)  # the same manifest uploaded again
    watch_manifests(**kwargs)
    assert len(_flow_runs(deployment_id)) == 2
    first_pgen = next(r for r in _flow_runs(deployment_id) if "pgen1" in r.parameters["manifest"])
    _put_manifest(env, "incoming/pgen1.manifest.json", {**pgen, "traitType": "bt", "regenieOptions": {"--bsize": 50}})
    watch_manifests(**kwargs)
    runs = _flow_runs(deployment_id)
    assert len(runs) == 3 and len({r.idempotency_key for r in runs}) == 3

    # the superseded version's run refuses to run the new content; the others run with the built-in engine
    state = run_flow(gwas, flow_run=first_pgen, parameters=first_pgen.parameters, return_type="state")
    assert state.is_failed() and "changed since this run was started" in state.message
    for fr in runs:
        if fr.id == first_pgen.id:
            continue
        state = run_flow(gwas, flow_run=fr, parameters=fr.parameters, return_type="state")
        assert state.is_completed(), state.message
        exp = "bgen3" if "bgen3" in fr.parameters["manifest"] else "pgen1"
        merged = _text(env, f"s3://{RESULTS}/watched/{exp}/{fr.id}/Y1.regenie.gz")
        rows = _rows(merged)
        assert len(rows) == (500 if exp == "bgen3" else 1000)
        assert "INFO" in merged.splitlines()[0] if exp == "bgen3" else "INFO" not in merged.splitlines()[0]
        work = get_settings().data_dir.resolve() / "gwas" / exp / str(fr.id)  # --range chunks in BGEN/PGEN form
        _unsplit_step2(work, work / "unsplit")
        assert merged == (work / "unsplit_Y1.regenie").read_text()
        record = json.loads(_text(env, f"s3://{RESULTS}/watched/{exp}/{fr.id}/run.json"))
        assert sum(c["parts"] for c in record["chromosomes"]) > len(record["chromosomes"])
        assert record["start_step"] == (2 if exp == "bgen3" else 1) and record["manifest_etag"] == fr.parameters[
            "manifest_etag"]


def _standin_env(monkeypatch):
    monkeypatch.setenv("PATH", f"{STANDIN}:{os.environ['PATH']}")


def test_failing_chromosome_fails_the_flow_by_name_and_a_rerun_redoes_only_it_standin(env, tmp_path, monkeypatch):
    from flows.gwas import ChromosomesFailed, gwas

    _standin_env(monkeypatch)
    manifest = {"experimentId": "fail3", "s3Path": str(EX), "inputData": {"format": "bed", "filePrefix": "example_3chr"},
                "phenotype": {"file": "phenotype.txt", "columns": ["Y1"]}, "traitType": "qt"}
    monkeypatch.setenv("GWAS_STANDIN_FAIL_CHR", "2")
    with pytest.raises(ChromosomesFailed, match=r"failed for chromosome\(s\) 2 .*stand-in told to fail chromosome 2"):
        gwas(manifest=manifest, engine="regenie", out_dir=str(tmp_path), run_id="r1")
    step2 = tmp_path / "fail3" / "r1" / "step2"
    done_before = {p.name: p.stat().st_mtime_ns for p in step2.glob("*.done.json")}
    assert sorted(done_before) == ["chr1.done.json", "chr3.done.json"]
    assert not (tmp_path / "fail3" / "r1" / "Y1.regenie.gz").exists()
    status = read_artifacts("gwas-fail3-chromosomes")[0].data
    assert "failed" in status and "stand-in told to fail chromosome 2" in status

    monkeypatch.delenv("GWAS_STANDIN_FAIL_CHR")
    gwas(manifest=manifest, engine="regenie", out_dir=str(tmp_path), run_id="r1")
    after = {p.name: p.stat().st_mtime_ns for p in step2.glob("*.done.json")}
    assert sorted(after) == ["chr1.done.json", "chr2.done.json", "chr3.done.json"]
    assert all(after[k] == v for k, v in done_before.items())  # chr 1 and 3 were not run again
    record = json.loads((tmp_path / "fail3" / "r1" / "run.json").read_text())
    assert [c["reused"] for c in record["chromosomes"]] == [1, 0, 1]


def test_a_killed_chromosome_is_retried_standin(env, tmp_path, monkeypatch):
    from flows.gwas import gwas

    _standin_env(monkeypatch)
    flag = tmp_path / "crash-once"
    flag.write_text("x")
    monkeypatch.setenv("GWAS_STANDIN_CRASH_ONCE", str(flag))
    manifest = {"experimentId": "crash", "s3Path": str(EX), "inputData": {"format": "bed", "filePrefix": "example_3chr"},
                "phenotype": {"file": "phenotype.txt", "columns": ["Y1"]}, "traitType": "qt"}
    out = Path(gwas(manifest=manifest, engine="regenie", out_dir=str(tmp_path), run_id="r1", max_parallel=1))
    assert not flag.exists() and (out / "Y1.regenie.gz").exists()
    assert len(_rows(gzip.decompress((out / "Y1.regenie.gz").read_bytes()).decode())) == 500
