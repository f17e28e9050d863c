"""The WES route against the GA4GH reference server (wes-service + cwltool) on 127.0.0.1 behind a real
bearer-token proxy, running a CWL workflow that wraps minimac4: local inputs travel as workflow attachments,
real imputed VCFs come back, a rerun finds its runs by tag and submits nothing, and a refused token (401/403)
stops the run at once without the token in any message."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pysam
import pytest

from blocks.imputation_server import ImputationServer
from flows.imputation import impute
from genoflows.imputation.remote import sha256_of
from genoflows.imputation.wes import WesClient
from genoflows.testing.wes_server import WesServer
from tests.imputation_fixtures import assert_no_token, made_up_token

pytest_plugins = ["tests.imputation_fixtures"]
pytestmark = pytest.mark.slow

TOKENS = {"good": made_up_token(), "no_rights": made_up_token(), "unknown": made_up_token()}


@pytest.fixture(scope="module")
def wes(tmp_path_factory):
    with WesServer(
        tmp_path_factory.mktemp("wes"), tokens={TOKENS["good"]: True, TOKENS["no_rights"]: False}
    ) as server:
        yield server


def _block(wes: WesServer, token: str) -> str:
    name = f"wes-{secrets.token_hex(4)}"
    ImputationServer(kind="wes", base_url=wes.base_url, app_id="minimac4", token=token).save(name)
    return name


def test_wes_reference_server_runs_minimac4_once(
    prefect_harness, wes, imp_cohort, imp_fast, tmp_path, caplog
):
    imp_token = TOKENS["good"]
    with WesClient(wes.base_url, imp_token) as c:
        info = c.service_info()
    assert "CWL" in info["workflow_type_versions"]
    name = _block(wes, imp_token)
    # The inputs live in a lab directory of this machine; the request must name none of its paths.
    src = tmp_path / "lab-inputs"
    src.mkdir()
    study = src / "study20.vcf.gz"
    study.write_bytes(imp_cohort.study["20"].read_bytes())
    Path(str(study) + ".tbi").write_bytes(Path(str(imp_cohort.study["20"]) + ".tbi").read_bytes())
    panel = str(imp_cohort.panel["20"]).replace("chr20", "chr{chrom}")
    out = tmp_path / "out"
    kw = dict(inputs=[str(study)], service=name, refpanel=panel, out_dir=str(out))
    manifest = Path(impute(**kw))
    doc = json.loads(manifest.read_text())
    assert {"chr20.dose.vcf.gz", "chr20.dose.vcf.gz.tbi", "chr20.info.gz"} <= {
        f["file"] for f in doc["files"]
    }
    with pysam.VariantFile(str(manifest.parent / "chr20.dose.vcf.gz")) as vf:
        assert "DS" in vf.header.formats and len(vf.header.samples) == 40
    with WesClient(wes.base_url, imp_token) as c:
        runs = c.list_runs()
    assert len(runs) == 1 and runs[0]["state"] == "COMPLETE"
    # What the server received: File locations relative to the run's attachments, no path of this machine,
    # and the attached copies byte-identical to the inputs.
    request = json.loads((wes.run_dir(runs[0]["run_id"]) / "request.json").read_text())
    params = request["workflow_params"]
    assert params["target"]["location"] == "inputs/study20.vcf.gz"
    assert params["reference"]["location"].startswith("inputs/")
    assert str(tmp_path) not in json.dumps(params) and "file://" not in json.dumps(params)
    attached = Path(request["workflow_attachment"].removeprefix("file://")) / "inputs"
    assert sha256_of(attached / "study20.vcf.gz") == sha256_of(study)
    assert (attached / "study20.vcf.gz.tbi").exists()
    record = json.loads((manifest.parent / "imputation-job.json").read_text())
    with WesClient(wes.base_url, imp_token) as c:  # what a rerun after a crash before the record would find
        assert c.find_run(f"{record['job_name']}-a0-chr20") == runs[0]["run_id"] == record["runs"]["20"]
        assert c.find_run(f"{record['job_name']}-a0-chr21") is None
    assert Path(impute(**kw)) == manifest
    with WesClient(wes.base_url, imp_token) as c:
        assert len(c.list_runs()) == 1  # the rerun resumed; nothing submitted again
    assert_no_token(imp_token, out, texts=(caplog.text,))


@pytest.mark.parametrize("which,code", [("unknown", 401), ("no_rights", 403)])
def test_wes_refused_token_stops_without_retry(
    prefect_harness, wes, imp_cohort, imp_fast, tmp_path, caplog, which, code
):
    token = TOKENS[which]
    name = _block(wes, token)
    before = len(wes.proxy.statuses)
    with pytest.raises(Exception) as err:
        impute(
            inputs=[str(imp_cohort.study["21"])], service=name, refpanel="unused", out_dir=str(tmp_path / "o")
        )
    text = str(err.value)
    assert f"HTTP {code}" in text and "bearer token was refused" in text and "Not retried" in text
    assert wes.proxy.statuses[before:] == [code]  # one request, refused, never repeated
    assert_no_token(token, tmp_path / "o", texts=(text, caplog.text))
