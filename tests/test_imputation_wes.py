"""The WES route against the GA4GH reference server (wes-service + cwltool) on 127.0.0.1, running a CWL
workflow that wraps minimac4: real imputed VCFs come back; a rerun finds its runs by tag and submits nothing."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pysam
import pytest

from blocks.imputation_server import ImputationServer
from flows.imputation import impute
from genoflows.imputation.wes import WesClient
from genoflows.testing.wes_server import WesServer
from tests.imputation_fixtures import assert_no_token, made_up_token

pytest_plugins = ["tests.imputation_fixtures"]
pytestmark = pytest.mark.slow


def test_wes_reference_server_runs_minimac4_once(prefect_harness, imp_cohort, imp_fast, tmp_path, caplog):
    imp_token = made_up_token()
    with WesServer(tmp_path / "wes") as wes:
        with WesClient(wes.base_url, imp_token) as c:
            info = c.service_info()
        assert "CWL" in info["workflow_type_versions"]
        name = f"wes-{secrets.token_hex(4)}"
        ImputationServer(kind="wes", base_url=wes.base_url, app_id="minimac4", token=imp_token).save(name)
        panel = str(imp_cohort.panel["20"]).replace("chr20", "chr{chrom}")
        kw = dict(
            inputs=[str(imp_cohort.study["20"])], service=name, refpanel=panel, out_dir=str(tmp_path / "out")
        )
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
        record = json.loads((manifest.parent / "imputation-job.json").read_text())
        with WesClient(
            wes.base_url, imp_token
        ) as c:  # what a rerun after a crash before the record would find
            assert c.find_run(f"{record['job_name']}-a0-chr20") == runs[0]["run_id"] == record["runs"]["20"]
            assert c.find_run(f"{record['job_name']}-a0-chr21") is None
        assert Path(impute(**kw)) == manifest
        with WesClient(wes.base_url, imp_token) as c:
            assert len(c.list_runs()) == 1  # the rerun resumed; nothing submitted again
        assert_no_token(imp_token, tmp_path / "out", texts=(caplog.text,))
