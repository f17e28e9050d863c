"""The local engine end to end: minimac4 per chromosome through the flow (one input pre-phased with shapeit4),
the server's output layout, the panel compressed once, and accuracy against the simulated truth."""

from __future__ import annotations

import json
from pathlib import Path

import pysam
import pytest

from flows.imputation import imputation_accuracy, impute
from genoflows.imputation.simulate import make_cohort
from genoflows.testing.artifacts import read_artifacts

pytestmark = pytest.mark.slow


def test_local_engine_layout_cache_and_accuracy(prefect_harness, settings_env, tmp_path):
    phased = make_cohort(
        tmp_path / "c20", chroms=("20",), panel_size=200, study_size=40, length=400_000, seed=3
    )
    unphased = make_cohort(
        tmp_path / "c21",
        chroms=("21",),
        panel_size=200,
        study_size=40,
        length=300_000,
        phased_study=False,
        seed=5,
    )
    panel = tmp_path / "panels"
    panel.mkdir()
    for c in (phased, unphased):
        for chrom, p in c.panel.items():
            for ext in ("", ".tbi"):
                (panel / f"chr{chrom}.vcf.gz{ext}").symlink_to(f"{p}{ext}")
    out = tmp_path / "out"
    kw = dict(
        inputs=[str(phased.study["20"]), str(unphased.study["21"])],
        service="local",
        refpanel=str(panel / "chr{chrom}.vcf.gz"),
        out_dir=str(out),
    )
    manifest = Path(impute(**kw))
    doc = json.loads(manifest.read_text())
    job_dir = manifest.parent
    assert doc["tool_versions"]["minimac4"] == "4.1.2" and "shapeit4" in doc["tool_versions"]
    for n in ("20", "21"):
        for name in (f"chr{n}.dose.vcf.gz", f"chr{n}.dose.vcf.gz.tbi", f"chr{n}.info.gz"):
            assert (job_dir / name).exists(), name
        with pysam.VariantFile(str(job_dir / f"chr{n}.dose.vcf.gz")) as vf:
            assert {"DS", "HDS", "GP"} <= set(vf.header.formats)
            assert next(vf.fetch(n)).samples["S0000"].phased
    cached = sorted((settings_env.cache_dir / "minimac4").glob("*.msav"))
    assert len(cached) == 2
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert Path(impute(**kw)) == manifest  # a rerun keeps the finished chromosomes and the cached panels
    assert [p.stat().st_mtime_ns for p in cached] == mtimes

    rows = imputation_accuracy(str(job_dir), {"20": str(phased.truth["20"]), "21": str(unphased.truth["21"])})
    common = next(r for r in rows if r["maf_bin"].startswith(">5%"))
    print(json.dumps(rows, indent=1))
    assert common["sites"] > 300 and common["mean_r2"] >= 0.9
    bins = {r["maf_bin"]: r for r in rows}
    assert bins["1-5%"]["mean_r2"] < common["mean_r2"]  # rarer variants are harder: the check can fail
    assert bins["20-50%"]["rsq_vs_r2_corr"] > 0.2  # minimac4's Rsq tracks the true r²
    assert read_artifacts("imputation-accuracy")
