"""The GWAS part of `make demo`: a generated non-human cohort uploaded to the local S3 with its manifest,
found by `watch_manifests`-style listing and run by `gwas` with the built-in engine; prints the top hits and
where the Manhattan/QQ plots are."""

from __future__ import annotations

import json
from pathlib import Path


def run_gwas_demo(out: Path, s3_endpoint: str) -> dict:
    """Upload a cohort + manifest (the one-command upload), run the flow from the manifest URI, summarise."""
    import boto3
    import pandas as pd

    from flows.gwas import gwas
    from genoflows.gwas.upload import upload_dataset
    from genoflows.testing.gwas_world import make_cohort

    cohort = make_cohort(out / "gwas-cohort", n_samples=500, variants_per_chrom=300)
    manifest = {"experimentId": "demo-fish", "s3Path": ".",
                "inputData": {"format": "bed", "filePrefix": "cohort"},
                "phenotype": {"file": "phenotype.txt", "columns": ["height"]},
                "covariates": {"file": "covariates.txt"}, "traitType": "qt", "regenieOptions": {"--bsize": 200}}
    local_manifest = cohort.directory / "manifest.json"
    local_manifest.write_text(json.dumps(manifest, indent=2))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for bucket in ("demo-gwas", "demo-gwas-results"):
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    uri, etag = upload_dataset(local_manifest, "s3://demo-gwas/studies/demo-fish", client=s3)
    result_uri = gwas(manifest=uri, manifest_etag=etag, engine="auto", out_dir=str(out / "gwas"),
                      chunk_variants=200, max_parallel=2)
    run_dir = Path(result_uri)
    record = json.loads((run_dir / "run.json").read_text())
    hits = pd.read_csv(run_dir / "height.top_hits.tsv", sep="\t")
    leads = hits[hits["lead"]].head(5)
    found = set(leads["ID"]) & set(cohort.causal)
    return {
        "engine": f"{record['engine_binary']} {record['engine_version']}",
        "chromosomes": ", ".join(c["chromosome"] for c in record["chromosomes"]),
        "lambda_gc": round(record["traits"][0]["lambda_gc"], 3),
        "lead hits": ", ".join(f"{r.ID} ({r.LOG10P:.1f})" for r in leads.itertuples()),
        "planted signals recovered": f"{len(found)} of {len(cohort.causal)}",
        "manhattan": str(run_dir / "height.manhattan.png"),
        "qq": str(run_dir / "height.qq.png"),
        "results": str(run_dir / "height.regenie.gz"),
    }


def demo(out: Path, s3_endpoint: str) -> None:
    """Run the GWAS demo and print its summary (called once from genoflows/demo.py)."""
    print(f"\n{'=' * 100}\nGWAS: generated cohort on 4 non-human chromosomes, uploaded to local S3, regenie step 1 + "
          f"step 2 per chromosome\n{'=' * 100}", flush=True)
    for key, value in run_gwas_demo(out, s3_endpoint).items():
        print(f"{key:>28}: {value}")
