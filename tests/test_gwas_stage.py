"""Everything a manifest references is checked before compute: against moto (server mode) and local folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest

from genoflows.gwas.inputs import InputError
from genoflows.gwas.manifest import load_manifest
from genoflows.gwas.stage import stage_inputs

EX = Path(os.environ.get("GENOFLOWS_SHARED_DIR") or Path(__file__).parents[1] / ".." / "shared") / "testdata" / "regenie-example"
BUCKET = "gwas-stage"


def _run(calls):
    def run(argv):
        calls.append(argv)
        subprocess.run(argv, check=True, capture_output=True)

    return run


@pytest.fixture
def s3(moto_endpoint, monkeypatch, settings_env):
    from genoflows.settings import get_settings

    monkeypatch.setenv("GENOFLOWS_S3_ENDPOINT_URL", moto_endpoint)
    get_settings.cache_clear()
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


def _put(s3, key, path):
    s3.upload_file(str(path), BUCKET, key)


def _manifest(prefix, **over):
    m = {"experimentId": "stage", "s3Path": f"s3://{BUCKET}/{prefix}",
         "inputData": {"format": "bed", "filePrefix": "geno/example_3chr"},
         "phenotype": {"file": "pheno/phenotype.txt", "columns": ["Y1"]}, "traitType": "qt"}
    m.update(over)
    return load_manifest(m)


def _upload_bed(s3, prefix):
    for ext in ("bed", "bim", "fam"):
        _put(s3, f"{prefix}/geno/example_3chr.{ext}", EX / f"example_3chr.{ext}")
    _put(s3, f"{prefix}/pheno/phenotype.txt", EX / "phenotype.txt")


def test_missing_files_are_all_listed_before_anything_is_downloaded(s3, tmp_path):
    _put(s3, "miss/geno/example_3chr.bed", EX / "example_3chr.bed")
    _put(s3, "miss/geno/example_3chr.bim", EX / "example_3chr.bim")
    m = _manifest("miss", covariates={"file": "pheno/covariates.txt"})
    with pytest.raises(InputError) as err:
        stage_inputs(m, tmp_path / "w", run=_run([]))
    text = str(err.value)
    assert f"inputData.filePrefix: s3://{BUCKET}/miss/geno/example_3chr.fam" in text
    assert f"phenotype.file: s3://{BUCKET}/miss/pheno/phenotype.txt" in text
    assert "covariates.file" in text
    assert not (tmp_path / "w" / "inputs").exists()  # nothing staged


def test_staged_from_s3_with_filters_and_an_empty_chromosome(s3, tmp_path):
    _upload_bed(s3, "ok")
    chr1_ids = [line.split()[1] for line in (EX / "example_3chr.bim").read_text().splitlines() if line.split()[0] != "2"]
    ex = tmp_path / "keep_ids.txt"
    ex.write_text("\n".join(chr1_ids) + "\n")
    _put(s3, "ok/filters/extract.txt", ex)
    staged = stage_inputs(_manifest("ok", extract="filters/extract.txt"), tmp_path / "w", run=_run([]))
    assert [c.name for c in staged.chromosomes] == ["1", "3"] and staged.empty_chromosomes == ["2"]
    assert any("chromosome 2 has zero variants" in n for n in staged.notes)
    assert staged.regenie.geno_path == (tmp_path / "w" / "inputs" / "geno" / "example_3chr")
    empty = tmp_path / "none.txt"
    empty.write_text("no_such_variant\n")
    _put(s3, "ok/filters/none.txt", empty)
    with pytest.raises(InputError, match="no variant is left"):
        stage_inputs(_manifest("ok", extract="filters/none.txt"), tmp_path / "w2", run=_run([]))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("FID IID Y9\n1 1 0.5\n", r"phenotype column\(s\) \['Y1'\] not found"),
        ("FID IID Y1\n1 1 0.5\n2 2 high\n3 3 1.1\n", "'high' is not a number"),
        ("FID IID Y1\nX1 X1 0.5\nX2 X2 1.5\nX3 X3 2.5\n", "no sample of .* matches"),
    ],
)
def test_bad_phenotypes_fail_before_compute(s3, tmp_path, content, message):
    prefix = f"bad-{abs(hash(content)) % 10**8}"
    _upload_bed(s3, prefix)
    f = tmp_path / "p.txt"
    f.write_text(content)
    _put(s3, f"{prefix}/pheno/phenotype.txt", f)
    calls = []
    with pytest.raises(InputError, match=message):
        stage_inputs(_manifest(prefix), tmp_path / "w", run=_run(calls))
    assert calls == []


def test_miscoded_binary_trait(s3, tmp_path):
    _upload_bed(s3, "bt")
    f = tmp_path / "p.txt"
    f.write_text("FID IID Y1\n1 1 1\n2 2 2\n3 3 1\n")
    _put(s3, "bt/pheno/bin.txt", f)
    with pytest.raises(InputError, match="binary trait Y1 has value '2'"):
        stage_inputs(_manifest("bt", traitType="bt", phenotype={"file": "pheno/bin.txt", "columns": ["Y1"]}),
                     tmp_path / "w", run=_run([]))


def test_prediction_list_resolved_where_the_job_runs(s3, tmp_path):
    """A _pred.list written on another machine (absolute paths there) is rewritten to staged local copies."""
    _upload_bed(s3, "p2")
    for n in (1, 2):
        _put(s3, f"p2/step1/qt3_step1_{n}.loco", EX / "golden" / f"qt3_step1_{n}.loco")
    pl = tmp_path / "pred.list"
    pl.write_text("Y1 /mnt/batch/tasks/abc/qt3_step1_1.loco\nY2 /mnt/batch/tasks/abc/qt3_step1_2.loco\n")
    _put(s3, "p2/step1/fit_pred.list", pl)
    m = _manifest("p2", startStep=2, predictionList="step1/fit_pred.list",
                  phenotype={"file": "pheno/phenotype.txt", "columns": ["Y1", "Y2"]})
    staged = stage_inputs(m, tmp_path / "w", run=_run([]))
    rows = [line.split() for line in staged.pred_list.read_text().splitlines()]
    assert [r[0] for r in rows] == ["Y1", "Y2"]
    for _, path in rows:
        assert Path(path).is_absolute() and Path(path).is_file() and str(tmp_path) in path
    pl.write_text("Y1 qt3_step1_1.loco\nY2 gone/qt3_step1_9.loco\n")
    _put(s3, "p2/step1/broken_pred.list", pl)
    with pytest.raises(InputError, match="prediction file for Y2 not found: 'gone/qt3_step1_9.loco'"):
        stage_inputs(_manifest("p2", startStep=2, predictionList="step1/broken_pred.list",
                               phenotype={"file": "pheno/phenotype.txt", "columns": ["Y1", "Y2"]}),
                     tmp_path / "w3", run=_run([]))
    pl.write_text("Y1 qt3_step1_1.loco\n")
    _put(s3, "p2/step1/short_pred.list", pl)
    with pytest.raises(InputError, match=r"no step-1 predictions for trait\(s\) \['Y2'\]"):
        stage_inputs(_manifest("p2", startStep=2, predictionList="step1/short_pred.list",
                               phenotype={"file": "pheno/phenotype.txt", "columns": ["Y1", "Y2"]}),
                     tmp_path / "w4", run=_run([]))


def test_inline_samples_and_local_vcf_converted_once(tmp_path):
    """Old Step Functions input with inline samples, genotypes as a VCF in a local folder: PGEN made once."""
    src = tmp_path / "data"
    src.mkdir()
    subprocess.run(["plink2", "--bfile", str(EX / "example_3chr"), "--export", "vcf", "bgz", "id-paste=iid", "--out",
                    str(src / "cohort")], check=True, capture_output=True)
    ids = [line.split()[1] for line in (EX / "example_3chr.fam").read_text().splitlines()]
    values = {i: float(k % 7) for k, i in enumerate(ids)}
    m = load_manifest({"studyId": "S1", "datasetId": "D1", "datasetPath": f"{src}/cohort.vcf.gz", "phenotype": "ldl",
                       "samples": values})
    calls = []
    staged = stage_inputs(m, tmp_path / "w", run=_run(calls))
    assert staged.regenie.geno_format == "pgen" and [c.name for c in staged.chromosomes] == ["1", "2", "3"]
    assert len([c for c in calls if "--make-pgen" in c]) == 1
    stage_inputs(m, tmp_path / "w", run=_run(calls))
    assert len([c for c in calls if "--make-pgen" in c]) == 1  # converted once
    assert staged.regenie.pheno_file.read_text().startswith("FID IID ldl\n")


def test_bgen_local_in_place(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    for f in ("example_3chr.bgen", "example_3chr.bgen.bgi", "example_3chr.sample", "phenotype.txt"):
        shutil.copy(EX / f, src / f)
    m = load_manifest({"experimentId": "b", "s3Path": str(src),
                       "inputData": {"format": "bgen", "filePrefix": "example_3chr.bgen", "sampleFile": "example_3chr.sample"},
                       "phenotype": {"file": "phenotype.txt", "columns": ["Y1"]}, "traitType": "qt"})
    staged = stage_inputs(m, tmp_path / "w", run=_run([]))
    assert staged.regenie.geno_path == (src / "example_3chr.bgen").resolve()
    assert staged.regenie.sample_file == (src / "example_3chr.sample").resolve()


def test_upload_command_puts_data_then_manifest(s3, tmp_path, capsys):
    from genoflows.gwas.upload import main

    study = tmp_path / "study"
    (study / "geno").mkdir(parents=True)
    for ext in ("bed", "bim", "fam"):
        shutil.copy(EX / f"example_3chr.{ext}", study / "geno" / f"example_3chr.{ext}")
    shutil.copy(EX / "phenotype.txt", study / "phenotype.txt")
    manifest = {"experimentId": "up1", "s3Path": "./", "inputData": {"format": "bed", "filePrefix": "geno/example_3chr"},
                "phenotype": {"file": "phenotype.txt", "columns": ["Y1"]}, "traitType": "qt"}
    (study / "manifest.json").write_text(json.dumps({**manifest, "phenotype": {"file": "phenotype.txt", "columns": ["Y7"]}}))
    assert main([str(study / "manifest.json"), "--to", f"s3://{BUCKET}/up1"]) == 2
    assert "Y7" in capsys.readouterr().err
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="up1/")  # nothing uploaded
    (study / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(study / "manifest.json"), "--to", f"s3://{BUCKET}/up1"]) == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="up1/")["Contents"]}
    assert keys == {"up1/geno/example_3chr.bed", "up1/geno/example_3chr.bim", "up1/geno/example_3chr.fam",
                    "up1/phenotype.txt", "up1/manifest.json"}
    uploaded = load_manifest(s3.get_object(Bucket=BUCKET, Key="up1/manifest.json")["Body"].read())
    assert uploaded.s3_path == f"s3://{BUCKET}/up1"
    stage_inputs(uploaded, tmp_path / "w", run=_run([]))  # the uploaded dataset stages cleanly
