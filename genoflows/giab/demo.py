"""The GIAB part of `make demo`: generated world, local S3 and GIAB mirror, one flow run, the metrics printed.

    python -m genoflows.giab.demo [out_root]

Starts moto (S3) and a FileServer (the GIAB `release/` mirror) on 127.0.0.1, uploads the lab's gVCF, runs
`giab_benchmark` for NA24143_Lib3_Rep1 (HG004, GRCh38) with the ephemeral Prefect API unless PREFECT_API_URL is
set, prints the headline metrics next to the planted truth, and stops both servers.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from genoflows.giab.demo_data import DemoWorld, build_world, upload_lab_files
from genoflows.settings import get_settings

DEMO_BUCKET = "genoflows-demo-lab"
DEMO_PREFIX = "wgs/2024-06"


@contextmanager
def _environment(values: dict[str, str]):
    """Set GENOFLOWS_* for the demo run and restore the previous environment afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def headline(metrics_csv: Path) -> list[dict[str, str]]:
    """PASS rows of metrics.csv as {type, recall, precision, f1, TP, FN, FP}."""
    with open(metrics_csv) as fh:
        rows = [r for r in csv.DictReader(fh) if r["filter"] == "PASS"]
    table: dict[str, dict[str, str]] = {}
    names = {"METRIC.Recall": "recall", "METRIC.Precision": "precision", "METRIC.F1_Score": "f1",
             "TRUTH.TP": "TP", "TRUTH.FN": "FN", "QUERY.FP": "FP"}
    for r in rows:
        if r["metric"] in names:
            table.setdefault(r["type"], {"type": r["type"], "engine": r["engine"]})[names[r["metric"]]] = r["value"]
    return list(table.values())


def run_demo(out_root: Path = Path("demo-output/giab"), hg: str = "HG004") -> Path:
    """Build the world under `out_root`, serve it, run the flow; return metrics.csv."""
    import boto3

    from flows.giab_benchmark import giab_benchmark
    from genoflows.testing.http_server import FileServer
    from genoflows.testing.s3 import moto_server

    out_root = Path(out_root).resolve()
    world: DemoWorld = build_world(out_root / "world")
    with moto_server() as endpoint, FileServer(world.mirror) as mirror:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        upload_lab_files(s3, DEMO_BUCKET, DEMO_PREFIX, world.lab)
        env = {
            "GENOFLOWS_GIAB_BASE_URL": mirror.base_url,
            "GENOFLOWS_REFERENCE_FASTA_URLS": json.dumps(world.reference_urls(mirror.base_url)),
            "GENOFLOWS_S3_ENDPOINT_URL": endpoint,
            "GENOFLOWS_REFERENCE_DIR": str(out_root / "references"),
            "GENOFLOWS_CACHE_DIR": str(out_root / "cache"),
        }
        with _environment(env):
            metrics = giab_benchmark(
                sample_id=world.sample_id(hg), source=f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}", out_dir=out_root / "results"
            )
    expected = world.genomes[hg].expected.counts
    print(f"\nGIAB benchmark of {world.sample_id(hg)} ({hg}, GRCh38), PASS calls:")
    print(f"{'type':<6} {'engine':<9} {'recall':>8} {'precision':>9} {'f1':>8} {'TP':>5} {'FN':>5} {'FP':>5}  planted TP/FN/FP")
    for row in headline(metrics):
        exp = expected[(row["type"], "PASS")]
        print(
            f"{row['type']:<6} {row['engine']:<9} {float(row['recall']):>8.4f} {float(row['precision']):>9.4f} "
            f"{float(row['f1']):>8.4f} {row['TP']:>5} {row['FN']:>5} {row['FP']:>5}  "
            f"{exp['TRUTH.TP']}/{exp['TRUTH.FN']}/{exp['QUERY.FP']}"
        )
    print(f"metrics: {metrics}\nall outputs: {metrics.parent}\n")
    return metrics


if __name__ == "__main__":
    run_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-output/giab"))
