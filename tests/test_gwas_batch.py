"""regenie step 2 as an AWS Batch job (moto in server mode + the local agent) when the container cannot see the
flow machine's disk, as on real Batch. The local agent runs jobs on this machine, so the run's directory is moved
away while the job runs: whatever the job reads must have been staged through S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from genoflows.testing.gwas_world import make_cohort

pytestmark = pytest.mark.slow


def test_step2_job_reads_the_prediction_list_and_its_loco_files_from_its_staged_copies(moto_endpoint, tmp_path,
                                                                                       monkeypatch):
    """The step-2 task on Batch: the `_pred.list` names the `.loco` files by their paths on the flow's machine;
    the job gets them staged and the list pointed at its copies, and its results equal a local run's."""

    from genoflows.batch import BatchRunner
    from genoflows.gwas.plan import Unit
    from genoflows.testing.batch_agent import batch_block, local_batch
    from genoflows.toolrun import read_provenance
    from genoflows.tools.regenie import BUILTIN, RegenieInputs, resolve_engine
    from tasks.gwas import RunLayout, step1, step2

    site = tmp_path / "site"  # everything the job must not read directly: inputs, step 1, step 2
    cohort = make_cohort(site / "cohort", n_samples=200, variants_per_chrom=120, chromosomes=("1", "2"), n_causal=2)
    engine = resolve_engine("builtin")
    inp = RegenieInputs("bed", cohort.prefix, cohort.phenotype, ("height",), "qt", covar_file=cohort.covariates,
                        options={"--bsize": 100})
    run, local = RunLayout(str(site / "run"), site / "run"), RunLayout(str(tmp_path / "local"), tmp_path / "local")
    pred = step1.fn(engine, inp, run)
    unit = Unit("2", "2", 0, 1, None, 120)
    step2.fn(engine, inp, pred, unit, local)  # the reference: the same call where the task runs

    batch = batch_block(moto_endpoint, {BUILTIN: (1, 2048)}, poll=(0.1, 0.3))
    away = tmp_path / "away"
    submit, download = BatchRunner.submit, BatchRunner._download_outputs

    def submit_when_hidden(self, *args, **kwargs):  # inputs are uploaded; the job starts without the host disk
        site.rename(away)
        return submit(self, *args, **kwargs)

    def download_when_back(self, *args, **kwargs):
        away.rename(site)
        return download(self, *args, **kwargs)

    monkeypatch.setattr(BatchRunner, "submit", submit_when_hidden)
    monkeypatch.setattr(BatchRunner, "_download_outputs", download_when_back)
    with local_batch(moto_endpoint) as agent:
        record = step2.fn(engine, inp, pred, unit, run, batch=batch)
    assert site.is_dir() and not away.exists()
    assert not record["skipped"] and record["rows"] == {"height": 120} and len(agent.submitted) == 1
    got = (site / "run" / "step2" / "chr2_height.regenie").read_text()
    assert got == (tmp_path / "local" / "step2" / "chr2_height.regenie").read_text()
    on_batch = [r for r in read_provenance(site / "run") if r.get("executor")]
    assert [r["argv"][r["argv"].index("--step") + 1] for r in on_batch] == ["2"]


def test_a_step2_batch_job_is_retried_only_when_its_host_went_away():
    """A failed Batch job the executor calls permanent (regenie exited 1 in it, out of memory, no such queue) is
    not retried, as regenie's exit 1 is not when it runs here; a job whose host was terminated is."""
    from prefect.states import Failed

    from genoflows.batch import BatchPermanentError, BatchTransientError
    from genoflows.toolrun import ToolError
    from tasks.gwas import _retry_step2

    def retried(exc: BaseException) -> bool:
        return _retry_step2(None, None, Failed(data=exc))

    assert not retried(BatchPermanentError("Batch job j1 (genoflows-regenie) failed with exit code 1"))
    assert not retried(BatchPermanentError("Batch job j2 (regenie) ran out of memory with 2048 MiB"))
    assert retried(BatchTransientError("Batch job j3 (regenie) lost its host (Host EC2 terminated)"))
    assert not retried(ToolError("regenie", ["regenie"], 1, [])) and retried(ToolError("regenie", ["regenie"], 137, []))


def test_a_bgen_travels_to_a_batch_job_with_its_bgi_index():
    """regenie (and genoflows-regenie) read `<bgen>.bgi` beside `--bgen` without being told: a step-2 job on
    Batch gets it staged with the BGEN, or it would walk every variant header of a biobank file instead."""
    import os

    from genoflows.batch import plan_staging

    ex = Path(os.environ.get("GENOFLOWS_SHARED_DIR") or Path(__file__).parents[1] / ".." / "shared") / "testdata" \
        / "regenie-example"
    bgen = (ex / "example_3chr.bgen").resolve()
    staging = plan_staging(["regenie", "--step", "2", "--bgen", str(bgen), "--sample", str(ex / "example_3chr.sample"),
                            "--out", "/nonexistent/out"])
    assert set(staging.inputs) == {str(bgen), f"{bgen}.bgi", str((ex / "example_3chr.sample").resolve())}


def test_gwas_takes_its_batch_and_tool_images_as_blocks():
    """Block-typed parameters, as giab_benchmark's: the UI offers a block picker, and the block objects (not a
    name to look up) are what the flow hands to each step-2 task."""
    from flows.gwas import gwas

    schema = gwas.parameters.model_dump()
    props = schema["properties"]
    for name, block, slug in (("aws_credentials", "AwsCredentials", "aws-credentials"),
                              ("tool_images", "ToolImages", "genoflows-tool-images"),
                              ("batch", "AwsBatch", "genoflows-aws-batch")):
        assert {"$ref": f"#/definitions/{block}"} in props[name]["anyOf"], props[name]
        assert schema["definitions"][block]["block_type_slug"] == slug
    assert "tool_images_block" not in props
