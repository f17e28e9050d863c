"""giab_benchmark end to end: a GIAB-layout HTTP mirror (FileServer), the lab's files on moto S3, a Prefect API.

These run real flows (real bcftools and truvari), so they share one world, one mirror server and one harness.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import boto3
import pysam
import pytest

from genoflows.giab import catalogue
from genoflows.giab.checksums import MANIFEST_NAME
from genoflows.settings import get_settings
from genoflows.testing import giab_world
from genoflows.testing.artifacts import read_artifacts
from genoflows.testing.http_server import FileServer
from genoflows.testing.s3 import auth_enforced

pytestmark = pytest.mark.slow
HG4, HG2 = "HG004", "HG002"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> giab_world.DemoWorld:
    return giab_world.build_world(tmp_path_factory.mktemp("giab-flow-world"))


@pytest.fixture(scope="module")
def mirror(world):
    with FileServer(world.mirror) as server:
        yield server


@pytest.fixture(scope="module")
def lab_bucket(world, moto_endpoint) -> str:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    giab_world.upload_lab_files(s3, "giab-lab", "runs/2024-06", world.lab)
    return "s3://giab-lab/runs/2024-06"


@pytest.fixture
def env(settings_env, monkeypatch, mirror, moto_endpoint, world, tmp_path):
    """Settings pointing at the mirror and moto; returns a helper that (re)reads them."""
    monkeypatch.setenv("GENOFLOWS_GIAB_BASE_URL", mirror.base_url)
    monkeypatch.setenv("GENOFLOWS_REFERENCE_FASTA_URLS", json.dumps(world.reference_urls(mirror.base_url)))
    monkeypatch.setenv("GENOFLOWS_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("GENOFLOWS_RETRY_BASE_DELAY_SECONDS", "0.1")  # the shared retry policy, kept but quick
    monkeypatch.setenv("GENOFLOWS_RETRY_MAX_DELAY_SECONDS", "0.5")
    get_settings.cache_clear()
    mirror.requests.clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def fast_retries(monkeypatch):
    """Keep fetch retries but shorten their backoff, so failing-for-good cases finish in seconds."""
    import tasks.giab
    from tasks.fetch import fetch_file

    monkeypatch.setattr(tasks.giab, "fetch_file", fetch_file.with_options(retry_delay_seconds=0.2))


def _flow_run(state):
    """The flow run and ITS task runs (filtered by the API: an unfiltered read returns at most 200, in no set order)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(state.state_details.flow_run_id)
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            return run, tasks

    return asyncio.run(read())


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes, to prove a finished run directory was not touched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _metrics(path: Path) -> dict[tuple[str, str, str, str], str]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["sample", "genome", "build", "engine", "type", "filter", "metric", "value"]
    return {(r["engine"], r["type"], r["filter"], r["metric"]): r["value"] for r in rows}


def _assert_small_metrics(metrics: dict, expected: giab_world.Expected, engine: str = "bcftools") -> None:
    for (vtype, flt), exp in expected.counts.items():
        for col in ("TRUTH.TOTAL", "TRUTH.TP", "TRUTH.FN", "QUERY.TOTAL", "QUERY.FP", "QUERY.UNK", "FP.gt", "FP.al"):
            assert metrics[(engine, vtype, flt, col)] == str(exp[col]), (vtype, flt, col)


def _run(**params):
    from flows.giab_benchmark import giab_benchmark

    return giab_benchmark(return_state=True, **params)


def test_first_run_downloads_second_run_downloads_nothing(prefect_harness, env, world, mirror, lab_bucket, tmp_path):
    sid = world.sample_id(HG4)
    out = tmp_path / "results"
    state = _run(sample_id=sid, source=lab_bucket, out_dir=out)
    assert state.is_completed(), state
    metrics_csv = state.result()
    run_dir = metrics_csv.parent
    assert run_dir.parent == out / sid and run_dir.name.startswith("run-") and metrics_csv.name == "metrics.csv"
    assert json.loads((run_dir / "run.json").read_text())["small_engine"] == "bcftools"
    _assert_small_metrics(_metrics(metrics_csv), world.genomes[HG4].expected)
    got = {r.path.rsplit("/", 1)[-1] for r in mirror.downloads() if r.status in (200, 206)}
    t = catalogue.small_truth(HG4, "GRCh38", "")
    assert got >= {t.vcf.name, t.tbi.name, t.bed.name, "md5sum", giab_world.REFERENCE_NAMES["GRCh38"]}
    manifest = json.loads((env.reference_dir / MANIFEST_NAME).read_text())
    assert manifest[t.bed.relpath]["md5_source"].endswith("/md5sum")  # the published md5 was found and used
    assert manifest[f"references/GRCh38/{giab_world.REFERENCE_NAMES['GRCh38']}"]["md5_source"] is None  # pinned
    run, task_runs = _flow_run(state)
    assert run.name == sid
    assert {"ensure references GRCh38", f"locate inputs of {sid}", f"stage {sid}.g.vcf.gz",
            "benchmark small variants (bcftools)"} <= {t.name for t in task_runs}
    assert all(t.flow_run_id == run.id for t in task_runs)
    assert (run_dir / "bcftools" / "summary.csv").exists() and (run_dir / "provenance.jsonl").exists()
    table = read_artifacts("giab-na24143-lib3-rep1-metrics")
    assert table and "METRIC.Recall" in table[0].data
    assert read_artifacts("giab-na24143-lib3-rep1-files")

    before, finished = len(mirror.requests), _tree(run_dir)
    again = _run(sample_id=sid, source=lab_bucket, out_dir=out)
    assert again.is_completed(), again
    assert len(mirror.requests) == before, mirror.requests[before:]  # not even a HEAD: nothing to do at all
    assert again.result() == metrics_csv and _tree(run_dir) == finished  # up to date: the finished run, untouched
    assert [p.name for p in (out / sid).iterdir()] == [run_dir.name]


def test_injected_faults_are_retried_and_the_run_succeeds(prefect_harness, env, world, mirror, lab_bucket, tmp_path):
    t = catalogue.small_truth(HG4, "GRCh38", "")
    mirror.add_fault(t.vcf.name, "corrupt")  # caught by the published md5, retried
    mirror.add_fault(t.bed.name, "503")
    mirror.add_fault(giab_world.REFERENCE_NAMES["GRCh38"], "drop")  # resumed with a Range request
    state = _run(sample_id=world.sample_id(HG4), source=lab_bucket, out_dir=tmp_path / "out", engine="bcftools")
    assert state.is_completed(), state
    _assert_small_metrics(_metrics(state.result()), world.genomes[HG4].expected)
    statuses = [r.status for r in mirror.requests]
    assert 503 in statuses and any(r.range for r in mirror.requests)
    assert not list(env.reference_dir.rglob("*.part"))


def test_unknown_sample_fails_before_any_download(prefect_harness, env, mirror, lab_bucket, tmp_path):
    state = _run(sample_id="NA99999_Lib1", source=lab_bucket, out_dir=tmp_path / "out")
    assert state.is_failed()
    with pytest.raises(ValueError, match=r"not a Genome in a Bottle sample.*HG004 \(NA24143\).*`truth`"):
        state.result()
    assert mirror.requests == []
    assert not (tmp_path / "out").exists()


def test_sv_for_a_genome_without_sv_truth_fails_before_any_download(prefect_harness, env, mirror, lab_bucket, tmp_path):
    state = _run(sample_id="NA24143_x", source=lab_bucket, variant_types=["sv"], out_dir=tmp_path / "out")
    with pytest.raises(catalogue.NoTruthSet, match="for HG002 only"):
        state.result()
    assert mirror.requests == []


def test_ambiguous_replicates_fail_with_the_candidates(prefect_harness, env, world, tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    for rep in ("Rep1", "Rep2"):
        shutil.copy(world.lab / "NA24143_Lib3_Rep1.g.vcf.gz", lab / f"NA24143_Lib3_{rep}.g.vcf.gz")
    state = _run(sample_id="NA24143_Lib3", source=str(lab), out_dir=tmp_path / "out")
    assert state.is_failed()
    with pytest.raises(ValueError, match=r"2 candidate inputs.*NA24143_Lib3_Rep1\.g\.vcf\.gz, NA24143_Lib3_Rep2"):
        state.result()


def test_s3_access_denied_is_not_retried(prefect_harness, env, world, lab_bucket, moto_endpoint, tmp_path):
    from prefect_aws import AwsCredentials

    sid = world.sample_id(HG4)
    with auth_enforced(moto_endpoint) as (key_id, secret):
        AwsCredentials(aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1").save(
            "giab-denied", overwrite=True
        )
        state = _run(sample_id=sid, source=lab_bucket, out_dir=tmp_path / "out",
                     aws_credentials=AwsCredentials.load("giab-denied"))
    assert state.is_failed()
    with pytest.raises(Exception, match="access denied"):
        state.result()
    _, task_runs = _flow_run(state)
    locate = [t for t in task_runs if t.name.startswith("locate inputs")]
    assert len(locate) == 1 and locate[0].run_count == 1 and locate[0].state.is_failed()
    assert not (tmp_path / "out").exists()  # failed before a run directory was started


def test_checksum_mismatch_is_retried_then_fails_leaving_nothing(prefect_harness, env, world, lab_bucket, fast_retries,
                                                                 monkeypatch, tmp_path):
    bad_mirror = tmp_path / "mirror"
    shutil.copytree(world.mirror, bad_mirror)
    t = catalogue.small_truth(HG4, "GRCh38", "")
    listing = bad_mirror / Path(t.bed.relpath).relative_to("giab").parent / "md5sum"
    lines = [f"{'0' * 32}  {t.bed.name}" if ln.endswith(t.bed.name) else ln for ln in listing.read_text().splitlines()]
    listing.write_text("\n".join(lines) + "\n")
    assert f"{'0' * 32}  {t.bed.name}" in listing.read_text()
    with FileServer(bad_mirror) as server:
        monkeypatch.setenv("GENOFLOWS_GIAB_BASE_URL", server.base_url)
        monkeypatch.setenv("GENOFLOWS_REFERENCE_FASTA_URLS", json.dumps(world.reference_urls(server.base_url)))
        get_settings.cache_clear()
        state = _run(sample_id=world.sample_id(HG4), source=lab_bucket, out_dir=tmp_path / "out")
        bed_gets = [r for r in server.downloads(t.bed.name) if r.path.endswith(".bed")]
    assert state.is_failed()
    with pytest.raises(Exception, match=r"md5 .* != expected 0{32}"):
        state.result()
    assert len(bed_gets) == 5  # first try + 4 retries
    bed = env.reference_dir / t.bed.relpath
    assert not bed.exists() and not Path(f"{bed}.part").exists()
    assert t.bed.relpath not in json.loads((env.reference_dir / MANIFEST_NAME).read_text())


def test_a_lab_download_failing_for_good_is_retried_by_the_fetch_task_alone(prefect_harness, env, world, lab_bucket,
                                                                             fast_retries, monkeypatch, tmp_path):
    """A 503 on the lab's file: fetch_file tries 1 + 4 times; stage_query must not multiply that by its own retries."""
    import tasks.fetch
    from genoflows.fetch import TransientFetchError
    from genoflows.giab.source import find_input
    from tasks.giab import stage_query

    sid = world.sample_id(HG4)
    gvcf = f"{lab_bucket}/{sid}.g.vcf.gz"
    attempts: list[str] = []
    real_fetch = tasks.fetch.fetch

    def unavailable(uri, dest, **kwargs):
        if uri == gvcf:
            attempts.append(uri)
            raise TransientFetchError(f"{uri}: S3 error ServiceUnavailable; will retry")
        return real_fetch(uri, dest, **kwargs)

    monkeypatch.setattr(tasks.fetch, "fetch", unavailable)
    found = find_input(lab_bucket, sid, s3_client=boto3.client("s3", endpoint_url=env.s3_endpoint_url,
                                                                region_name="us-east-1"))
    with pytest.raises(TransientFetchError, match="ServiceUnavailable"):
        stage_query(found, tmp_path / "input")
    assert len(attempts) == 5


def test_an_index_older_than_its_data_is_not_used(prefect_harness, env, world, tmp_path):
    """The lab uploaded a new gVCF and forgot its index: the old .tbi next to it would point into the old bytes."""
    import os

    from genoflows.giab.source import find_input
    from tasks.giab import stage_query
    from tests.test_giab_references import _index_is_whole

    lab = tmp_path / "lab"
    lab.mkdir()
    name = f"{world.sample_id(HG4)}.g.vcf.gz"
    data = lab / name
    shutil.copy(world.lab / name, data)
    (lab / f"{name}.tbi").write_bytes(b"an index of an earlier upload")
    os.utime(lab / f"{name}.tbi", (data.stat().st_mtime - 3600,) * 2)
    found = find_input(str(lab), world.sample_id(HG4))
    assert found.index_is_stale
    staged = stage_query(found, tmp_path / "run" / "input")
    assert _index_is_whole(staged) and Path(f"{staged}.tbi").read_bytes() != b"an index of an earlier upload"


def _level0_bgzf(text: str, dst: Path) -> Path:
    """BGZF without compression: the file size depends only on the text length, so same-size edits are easy."""
    with pysam.BGZFile(str(dst), "wb0") as fh:
        fh.write(text.encode())
    return dst


def _same_size_replacement(world: giab_world.DemoWorld, hg: str) -> tuple[str, str, dict]:
    """(original gVCF text, replacement of the same length, expected counts of the replacement).

    The replacement calls one plain TP SNP (0/1 in truth and query, inside the confident regions) 1/1: by the
    GA4GH rules that is a genotype error, truth FN + query FP.gt, in ALL and PASS. It also shifts the records
    before it by one byte (a header line one character shorter, that record's QUAL one longer), so an index of
    the original no longer fits the replacement.
    """
    g = world.genomes[hg]
    truth = {(r.chrom, r.pos): r for r in g.truth}
    rec = next(
        r for r in g.query
        if len(r.alts) == 1 and len(r.ref) == len(r.alts[0]) == 1 and r.gt == "0/1" and r.filter in ("PASS", ".")
        and (t := truth.get((r.chrom, r.pos))) is not None and (t.ref, t.alts, t.gt) == (r.ref, r.alts, r.gt)
        and any(s < r.pos <= e for s, e in giab_world.CONFIDENT[r.chrom])
    )
    with gzip.open(world.lab / f"{g.sample_id}.g.vcf.gz", "rt") as fh:
        original = fh.read()
    lines = original.splitlines(keepends=True)
    chrom_line = next(i for i, ln in enumerate(lines) if ln.startswith("#CHROM"))
    first, second = list(lines), list(lines)
    first.insert(chrom_line, "##upload=first\n")
    second.insert(chrom_line, "##upload=redo\n")
    i = next(i for i, ln in enumerate(second) if ln.startswith(f"chr{rec.chrom}\t{rec.pos}\t"))
    cols = second[i].split("\t")
    assert cols[5].endswith(".0") and cols[9].startswith("0/1:")
    cols[5] += "0"
    cols[9] = "1/1:" + cols[9][4:]
    second[i] = "\t".join(cols)
    expected = copy.deepcopy(g.expected)
    for flt in ("ALL", "PASS"):
        row = expected.counts[("SNP", flt)]
        row["TRUTH.TP"] -= 1
        row["TRUTH.FN"] += 1
        row["QUERY.FP"] += 1
        row["FP.gt"] += 1
    return "".join(first), "".join(second), expected


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_lab_file_replaced_by_one_of_the_same_size_is_benchmarked_anew(where, prefect_harness, env, world,
                                                                         lab_bucket, moto_endpoint, tmp_path):
    """The lab re-uploads a corrected gVCF under the same name, same size, no index: the next run stages the new
    bytes into a new run directory, indexes them and counts the new calls; the first run's directory stays
    byte-identical. A third upload, cut off mid-transfer, fails naming the truncated file and touches neither."""
    from tests.test_giab_references import _index_is_whole

    sid = world.sample_id(HG4)
    name = f"{sid}.g.vcf.gz"
    first_text, second_text, expected_second = _same_size_replacement(world, HG4)
    for d in ("first", "second", "lab"):
        (tmp_path / d).mkdir()
    first = _level0_bgzf(first_text, tmp_path / "first" / name)
    second = _level0_bgzf(second_text, tmp_path / "second" / name)
    assert first.stat().st_size == second.stat().st_size and first.read_bytes() != second.read_bytes()
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    src = "s3://giab-lab/reupload" if where == "s3" else str(tmp_path / "lab")

    def put(path: Path) -> None:
        if where == "s3":
            s3.upload_file(str(path), "giab-lab", f"reupload/{name}")
        else:
            shutil.copyfile(path, tmp_path / "lab" / name)

    out = tmp_path / "out"

    put(first)
    state = _run(sample_id=sid, source=src, out_dir=out, engine="bcftools")
    assert state.is_completed(), state
    run1 = state.result().parent
    _assert_small_metrics(_metrics(state.result()), world.genomes[HG4].expected)
    staged = run1 / "input" / name
    assert staged.read_bytes() == first.read_bytes() and _index_is_whole(staged)
    finished = _tree(run1)

    put(second)
    state = _run(sample_id=sid, source=src, out_dir=out, engine="bcftools")
    assert state.is_completed(), state
    run2 = state.result().parent
    assert run2 != run1 and _tree(run1) == finished
    assert (run2 / "input" / name).read_bytes() == second.read_bytes()
    assert _index_is_whole(run2 / "input" / name)
    _assert_small_metrics(_metrics(state.result()), expected_second)

    if where == "s3":
        second_finished = _tree(run2)
        cut = tmp_path / "cut" / name
        cut.parent.mkdir()
        cut.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
        put(cut)
        state = _run(sample_id=sid, source=src, out_dir=out, engine="bcftools")
        assert state.is_failed()
        with pytest.raises(Exception, match=rf"{name}.*(truncated|BGZF|EOF)"):
            state.result()
        assert _tree(run1) == finished and _tree(run2) == second_finished
        assert sorted(p.name for p in (out / sid).iterdir()) == sorted([run1.name, run2.name])  # no temp left


def test_sv_on_grch38_is_benchmarked_against_cmrg_verified_like_any_truth(prefect_harness, env, world, mirror,
                                                                          tmp_path):
    sid = world.sample_id(HG2)
    state = _run(sample_id=sid, source=str(world.lab), build="GRCh38", variant_types=["sv"], out_dir=tmp_path / "out")
    assert state.is_completed(), state
    metrics = _metrics(state.result())
    for flt, expected in (("ALL", world.sv.expected_all), ("PASS", world.sv.expected_pass)):
        for key, value in expected.items():
            assert metrics[("truvari", "SV", flt, key)] == str(value), (flt, key)
    cmrg = catalogue.sv_truth(HG2, "GRCh38", "")
    assert "CMRG_v1.00/GRCh38/StructuralVariant" in cmrg.vcf.relpath
    manifest = json.loads((env.reference_dir / MANIFEST_NAME).read_text())
    assert manifest[cmrg.vcf.relpath]["md5_source"].endswith("/StructuralVariant/md5sum")  # its published md5
    assert manifest[cmrg.bed.relpath]["md5_source"].endswith("/StructuralVariant/md5sum")


def test_a_non_giab_sample_with_its_own_truth(prefect_harness, env, world, mirror, tmp_path):
    from flows.giab_benchmark import TruthSet

    lab = tmp_path / "lab"
    lab.mkdir()
    shutil.copy(world.lab / "NA24143_Lib3_Rep1.g.vcf.gz", lab / "LAB-0042.g.vcf.gz")  # no index: built on staging
    t = catalogue.small_truth(HG4, "GRCh38", mirror.base_url)
    state = _run(sample_id="LAB-0042", source=str(lab), truth=TruthSet(vcf=t.vcf.url, bed=t.bed.url),
                 out_dir=tmp_path / "out")
    assert state.is_completed(), state
    metrics = _metrics(state.result())
    _assert_small_metrics(metrics, world.genomes[HG4].expected)
    with open(state.result()) as fh:
        assert {r["genome"] for r in csv.DictReader(fh)} == {"custom"}
    assert (state.result().parent / "input" / "LAB-0042.g.vcf.gz.tbi").exists()


def test_a_sample_id_that_is_a_path_cannot_write_outside_out_dir(prefect_harness, env, world, mirror, tmp_path):
    """sample_id names <out_dir>/<sample_id>/: `../../escape` (with `file` picking a real input and a custom truth,
    so nothing else stops the run) must fail before any download, and write nothing outside out_dir."""
    from flows.giab_benchmark import TruthSet

    t = catalogue.small_truth(HG4, "GRCh38", mirror.base_url)
    state = _run(sample_id="../../escape", source=str(world.lab), file="NA24143_Lib3_Rep1.g.vcf.gz",
                 truth=TruthSet(vcf=t.vcf.url, bed=t.bed.url), out_dir=tmp_path / "out" / "runs")
    assert state.is_failed()
    with pytest.raises(ValueError, match=r"sample_id '\.\./\.\./escape' is not allowed"):
        state.result()
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()
    assert mirror.requests == []


def test_parameters_render_as_a_form():
    from flows.giab_benchmark import giab_benchmark

    schema = giab_benchmark.parameters.model_dump()
    props = schema["properties"]
    assert schema["required"] == ["sample_id", "source"]
    assert props["build"]["enum"] == ["GRCh38", "GRCh37"] and props["build"]["default"] == "GRCh38"
    assert props["engine"]["enum"] == ["auto", "happy", "bcftools"]
    assert props["variant_types"]["items"]["enum"] == ["small", "sv"]
    assert "NA24143_Lib3_Rep1" in props["sample_id"]["description"]
    assert set(schema["definitions"]["TruthSet"]["properties"]) == {"vcf", "bed"}
    # Blocks are block-typed parameters: the UI offers a block picker, not a free-text block name.
    for name, block, slug in (("aws_credentials", "AwsCredentials", "aws-credentials"),
                              ("tool_images", "ToolImages", "genoflows-tool-images"),
                              ("batch", "AwsBatch", "genoflows-aws-batch")):
        assert {"$ref": f"#/definitions/{block}"} in props[name]["anyOf"], props[name]
        assert schema["definitions"][block]["block_type_slug"] == slug
    assert "aws_credentials_block" not in props and "tool_images_block" not in props


def test_auto_engine_uses_happy_when_it_is_on_path(prefect_harness, env, world, lab_bucket, monkeypatch, tmp_path):
    import os

    from genoflows.toolrun import _version_of
    from tests.test_giab_tools import _stand_in_happy

    script = _stand_in_happy(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    _version_of.cache_clear()
    try:
        state = _run(sample_id=world.sample_id(HG4), source=lab_bucket, out_dir=tmp_path / "out")
    finally:
        _version_of.cache_clear()
    assert state.is_completed(), state
    metrics = _metrics(state.result())
    assert metrics[("happy", "INDEL", "ALL", "FP.al")] == "4"  # the stand-in's hand-made summary, read by header
    assert not any(engine == "bcftools" for engine, *_ in metrics)
    sample_dir = state.result().parent
    assert (sample_dir / "happy" / "happy.summary.csv").exists()
    assert '"tool": "hap.py"' in (sample_dir / "provenance.jsonl").read_text()


def test_happy_runs_in_the_image_named_by_a_tool_images_block(prefect_harness, env, world, lab_bucket, monkeypatch,
                                                               tmp_path):
    """hap.py is not on PATH; a ToolImages block sends it to a container engine (a stand-in that answers `version`
    and runs the image's hap.py stand-in after checking the bind mounts), unchanged flow code. Plumbing only."""
    import textwrap

    from blocks.tool_images import ToolImages
    from genoflows.toolrun import _version_of
    from tests.test_giab_tools import _stand_in_happy

    image_bin = _stand_in_happy(tmp_path / "image-rootfs" / "bin").parent
    calls = tmp_path / "engine-calls.txt"
    engine = tmp_path / "engine-bin" / "podman"  # a stand-in container engine under an allowed name, on PATH
    engine.parent.mkdir()
    engine.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, sys
        args = sys.argv[1:]
        open({str(calls)!r}, "a").write(" ".join(args) + "\\n")
        if args == ["version"]:
            print("Version: 4.3.1"); sys.exit(0)
        assert args[:2] == ["run", "--rm"] and args[args.index("--network") + 1] == "none", args
        i, mounts = 2, []
        while args[i].startswith("-"):  # every option of the tool runner takes one value
            if args[i] == "-v":
                mounts.append(args[i + 1].split(":")[0])
            i += 2
        image, argv = args[i], args[i + 1:]
        assert image == "localhost/hap.py:fake", image
        for a in argv[1:]:
            if a.startswith("/") and os.path.exists(a):
                assert any(a.startswith(m) for m in mounts), (a, mounts)  # every input is bound into the container
        os.execv(os.path.join({str(image_bin)!r}, argv[0]), argv)
        """))
    engine.chmod(0o755)
    monkeypatch.setenv("PATH", f"{engine.parent}{os.pathsep}{os.environ['PATH']}")
    images = ToolImages(images={"hap.py": "localhost/hap.py:fake"}, engine="podman")
    _version_of.cache_clear()
    try:
        state = _run(sample_id=world.sample_id(HG4), source=lab_bucket, out_dir=tmp_path / "out", engine="happy",
                     tool_images=images)
    finally:
        _version_of.cache_clear()
        from genoflows.settings import get_settings

        get_settings.cache_clear()
    assert state.is_completed(), state
    metrics = _metrics(state.result())
    assert metrics[("happy", "INDEL", "ALL", "FP.al")] == "4"
    assert "localhost/hap.py:fake hap.py" in calls.read_text()
    provenance = (state.result().parent / "provenance.jsonl").read_text()
    assert '"image": "localhost/hap.py:fake"' in provenance and '"version": "0.3.15"' in provenance
    from genoflows.settings import get_settings

    assert get_settings().tool_images == {}  # the block applied to that flow run only


def test_small_and_sv_fan_out_on_a_two_process_dask_cluster_with_truvari_on_batch(
        prefect_harness, env, world, mirror, moto_endpoint, monkeypatch, tmp_path):
    """HG002 small + SV on GRCh37 from a local directory; the two comparisons run at once on the configured task
    runner. The default thread pool's run gives the world's expected counts. On a local Dask cluster of two
    worker processes, with truvari sent to AWS Batch (moto + the local agent) by the flow's `batch` block, the
    run gives the thread pool's metrics.csv byte for byte; the block reaches the Dask workers (they do not see
    the flow's context), and truvari's inputs travel with their indexes."""
    from prefect.settings import PREFECT_API_URL

    import flows.giab_benchmark as giab_flow
    from genoflows.testing.batch_agent import batch_block, local_batch
    from genoflows.toolrun import read_provenance

    sid = world.sample_id(HG2)
    params = dict(sample_id=sid, source=str(world.lab), build="GRCh37", variant_types=["small", "sv"],
                  engine="bcftools")
    threads = _run(**params, out_dir=tmp_path / "threads")  # the default thread pool, from a local directory
    assert threads.is_completed(), threads
    metrics = _metrics(threads.result())
    _assert_small_metrics(metrics, world.genomes[HG2].expected)  # chr-named lab calls renamed to GRCh37's 1, 2
    for flt, expected in (("ALL", world.sv.expected_all), ("PASS", world.sv.expected_pass)):
        for key, value in expected.items():
            assert metrics[("truvari", "SV", flt, key)] == str(value), (flt, key)
    assert (threads.result().parent / "truvari" / "summary.json").exists()
    sv_truth = catalogue.sv_truth(HG2, "GRCh37", "")
    assert any(r.path.endswith(sv_truth.vcf.name) for r in mirror.downloads())

    runners, configured = [], giab_flow.fan_out_runner
    monkeypatch.setattr(giab_flow, "fan_out_runner", lambda n: runners.append(configured(n)) or runners[-1])
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the Dask workers report here too
    monkeypatch.setenv("GENOFLOWS_TASK_RUNNER", "dask")
    monkeypatch.setenv("GENOFLOWS_DASK_WORKERS", "2")
    get_settings.cache_clear()
    batch = batch_block(moto_endpoint, {"truvari": (1, 2048)}, poll=(0.2, 0.5))
    with local_batch(moto_endpoint) as agent:
        dask = _run(**params, out_dir=tmp_path / "dask", batch=batch)
    assert dask.is_completed(), dask
    assert [type(r).__name__ for r in runners] == ["DaskTaskRunner"]

    a, b = threads.result(), dask.result()
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent / "bcftools" / "summary.csv").read_bytes() == (b.parent / "bcftools" / "summary.csv").read_bytes()
    # truvari (ALL and PASS) ran as two Batch jobs; every other tool where the task ran.
    records = read_provenance(b.parent)
    on_batch = [r for r in records if r.get("executor")]
    assert [r["tool"] for r in on_batch] == ["truvari", "truvari"] and len(agent.submitted) == 2
    assert all(r["executor"]["queue"] == "genoflows-tools" and r["executor"]["batch_job_id"] for r in on_batch)
    assert {r["tool"] for r in records} - {"truvari"} and not any(
        r.get("executor") for r in records if r["tool"] != "truvari")
    assert not any(r.get("executor") for r in read_provenance(a.parent))


def test_an_s3_out_dir_gets_the_run_and_a_fresh_machine_finds_it_up_to_date(prefect_harness, env, world, mirror,
                                                                            lab_bucket, moto_endpoint, tmp_path,
                                                                            monkeypatch):
    """out_dir on s3:// (an ECS task): computed in scratch, uploaded verified with the manifest last (a refused
    upload fails the run and the next run uploads the finished scratch run); the same inputs from a fresh
    data/reference dir are up to date before any download, and S3 is left untouched."""
    import hashlib

    from genoflows.giab.publish import MANIFEST

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="giab-results")
    sid, out = world.sample_id(HG4), "s3://giab-results/lab/giab"

    def objects() -> dict[str, tuple[str, object]]:
        listed = s3.list_objects_v2(Bucket="giab-results", Prefix="lab/giab/").get("Contents", [])
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed}

    from genoflows.fetch import PermanentFetchError
    from genoflows.giab.publish import RemoteRun

    def refused(self, run_dir, key):
        raise PermanentFetchError("s3://giab-results: access denied (test)")

    with monkeypatch.context() as mp:  # computed, then the upload is refused: the run fails, S3 has nothing
        mp.setattr(RemoteRun, "upload", refused)
        failed = _run(sample_id=sid, source=lab_bucket, out_dir=out, engine="bcftools")
    assert failed.is_failed() and "access denied" in str(failed.message) and objects() == {}
    state = _run(sample_id=sid, source=lab_bucket, out_dir=out, engine="bcftools")
    assert state.is_completed(), state
    assert not any(t.name.startswith("benchmark") for t in _flow_run(state)[1])  # the scratch run went up as is
    metrics_uri = state.result()
    assert metrics_uri.startswith(f"{out}/{sid}/run-") and metrics_uri.endswith("/metrics.csv")
    prefix = metrics_uri[len("s3://giab-results/"):].rsplit("/", 1)[0]
    stored = objects()
    manifest = json.loads(s3.get_object(Bucket="giab-results", Key=f"{prefix}/{MANIFEST}")["Body"].read())
    assert {"metrics.csv", "run.json", "provenance.jsonl", "bcftools/summary.csv"} <= set(manifest["files"])
    assert set(stored) == {f"{prefix}/{rel}" for rel in manifest["files"]} | {f"{prefix}/{MANIFEST}"}
    local = tmp_path / "metrics.csv"
    s3.download_file("giab-results", f"{prefix}/metrics.csv", str(local))
    assert hashlib.sha256(local.read_bytes()).hexdigest() == manifest["files"]["metrics.csv"]["sha256"]
    _assert_small_metrics(_metrics(local), world.genomes[HG4].expected)
    assert not list((env.data_dir / "giab-scratch").rglob("run-*"))  # the scratch copy went once uploaded

    for name in ("data", "reference", "cache"):  # a fresh task: nothing of the first run on its disk
        monkeypatch.setenv(f"GENOFLOWS_{name.upper()}_DIR", str(tmp_path / f"fresh-{name}"))
    get_settings.cache_clear()
    before = len(mirror.requests)
    again = _run(sample_id=sid, source=lab_bucket, out_dir=out, engine="bcftools")
    assert again.is_completed(), again
    assert again.result() == metrics_uri
    assert len(mirror.requests) == before  # up to date before any reference download
    assert objects() == stored  # same keys, ETags and LastModified: nothing on S3 was written again
    assert not (tmp_path / "fresh-reference").exists() or not any((tmp_path / "fresh-reference").rglob("*.fa*"))
