"""The GWAS manifest: both input shapes, an error naming each bad field, paths that escape s3Path, the schema file."""

from __future__ import annotations

import copy
import json

import pytest

from genoflows.gwas.manifest import ManifestError, load_manifest
from genoflows.gwas.schema import SCHEMA_PATH, render

GOOD = {
    "experimentId": "EXP-2024-017",
    "s3Path": "s3://lab-gwas/studies/exp17/",
    "inputData": {"format": "bgen", "filePrefix": "genotypes/cohort.bgen", "sampleFile": "genotypes/cohort.sample"},
    "phenotype": {"file": "pheno/traits.txt", "columns": ["Y1", "Y2"]},
    "covariates": {"file": "pheno/covars.txt", "columns": ["V1", "V2"], "categorical": ["site"]},
    "traitType": "bt",
    "startStep": 1,
    "regenieOptions": {"--bsize": 200, "--firth": True, "--approx": True, "--pThresh": 0.01},
    "resources": {"vCPUs": 8, "memory": 16384},
}


def test_old_manifest_json_is_accepted():
    m = load_manifest(json.dumps(GOOD))
    assert m.experiment_id == "EXP-2024-017" and m.s3_path == "s3://lab-gwas/studies/exp17"
    assert m.input_data.format == "bgen" and m.resources.vcpus == 8
    assert m.uri(m.phenotype.file) == "s3://lab-gwas/studies/exp17/pheno/traits.txt"


def _broken(path: str, value):
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "named", "says"),
    [
        ("experimentId", "../x", "experimentId", "pattern"),
        ("experimentId", KeyError, "experimentId", "required"),
        ("s3Path", "ftp://host/x", "s3Path", "only s3://"),
        ("inputData.format", "vcf.gz", "inputData.format", "bed"),
        ("inputData.filePrefix", "../other-study/geno", "inputData.filePrefix", "escapes s3Path"),
        ("inputData.filePrefix", "genotypes/../../x", "inputData.filePrefix", "escapes s3Path"),
        ("inputData.filePrefix", "/etc/passwd", "inputData.filePrefix", "relative"),
        ("inputData.filePrefix", "s3://other-bucket/geno", "inputData.filePrefix", "relative"),
        ("phenotype.columns", [], "phenotype.columns", "at least 1"),
        ("phenotype.columns", ["Y 1"], "phenotype.columns.0", "pattern"),
        ("phenotype.file", "..", "phenotype.file", "escapes"),
        ("covariates.file", "../../covar.txt", "covariates.file", "escapes"),
        ("covariates.categorical", ["V1"], "covariates", "both quantitative and categorical"),
        ("traitType", "binary", "traitType", "'qt' or 'bt'"),
        ("startStep", 3, "startStep", "1 or 2"),
        ("startStep", 2, "(top level)", "predictionList"),
        ("regenieOptions", {"--out": "x"}, "regenieOptions", "not an allowed extra option"),
        ("regenieOptions", {"--chr": "1"}, "regenieOptions", "not an allowed extra option"),
        ("regenieOptions", {"--bsize": "big"}, "regenieOptions", "positive integer"),
        ("resources.vCPUs", 0, "resources.vCPUs", "greater than or equal to 1"),
        ("resources.memory", "lots", "resources.memory", "integer"),
        ("colour", "blue", "colour", "unknown field"),
    ],
)
def test_each_bad_field_is_named(path, value, named, says):
    with pytest.raises(ManifestError) as err:
        load_manifest(_broken(path, value), "s3://lab-gwas/incoming/manifest.json")
    text = str(err.value)
    assert "s3://lab-gwas/incoming/manifest.json" in text
    assert f"  {named}:" in text, text
    assert says in text, text


def test_not_json_and_not_an_object():
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest("{experimentId: 1", "m.json")
    with pytest.raises(ManifestError, match="must be a JSON object"):
        load_manifest("[1, 2]", "m.json")


def test_inner_dotdot_that_stays_inside_is_normalised():
    m = load_manifest(_broken("inputData.filePrefix", "genotypes/old/../cohort.bgen"))
    assert m.input_data.file_prefix == "genotypes/cohort.bgen"


def test_step_functions_input_with_inline_samples():
    m = load_manifest({
        "studyId": "ST01", "datasetId": "DS7", "datasetPath": "s3://lab-gwas/ST01/DS7/genotypes/array.bed",
        "phenotype": "ldl", "startStep": 1, "samples": [{"sampleId": "A1", "value": 2.5}, {"sampleId": "A2", "value": None}],
    })
    assert m.experiment_id == "ST01-DS7" and m.s3_path == "s3://lab-gwas/ST01/DS7/genotypes"
    assert (m.input_data.format, m.input_data.file_prefix) == ("bed", "array")
    assert m.phenotype.samples == {"A1": 2.5, "A2": None} and m.phenotype.columns == ["ldl"]


def test_step_functions_input_with_sample_manifest_csv():
    m = load_manifest({
        "studyId": "ST01", "datasetId": "DS8", "datasetPath": "s3://lab-gwas/ST01/DS8/cohort",
        "phenotype": "case", "traitType": "bt", "sampleManifest": "samples.csv",
    })
    assert m.phenotype.file == "samples.csv" and m.phenotype.csv_id_column == "sampleId"
    assert m.input_data.format == "bed" and m.trait_type == "bt"


def test_step_functions_input_errors_name_fields():
    with pytest.raises(ManifestError, match="exactly one of samples and sampleManifest"):
        load_manifest({"studyId": "S", "datasetId": "D", "datasetPath": "s3://b-b/x/y", "phenotype": "p"})
    with pytest.raises(ManifestError, match="sampleManifest: .*escapes"):
        load_manifest({"studyId": "S", "datasetId": "D", "datasetPath": "s3://b-b/x/y", "phenotype": "p",
                       "sampleManifest": "../../../secrets.csv"})


def test_schema_file_is_current():
    """docs/schemas/manifest.schema.json must equal the model's schema: `python -m genoflows.gwas.schema`."""
    assert SCHEMA_PATH.exists(), "run: python -m genoflows.gwas.schema"
    assert SCHEMA_PATH.read_text() == render(), "stale schema: run `python -m genoflows.gwas.schema` and commit it"
    schema = json.loads(SCHEMA_PATH.read_text())
    assert {"experimentId", "s3Path", "inputData", "phenotype", "traitType"} <= set(schema["required"])
