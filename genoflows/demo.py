"""`make demo`: run the pipelines on the embedded default data, against local stand-ins for S3 and the mirrors.

It generates a small genome world (truth sets in a GIAB `release/` layout, a lab gVCF with known differences)
and an RNA-seq world (a transcriptome and runs behind an ENA-like API), starts moto (S3) and HTTP servers on
127.0.0.1, points the settings at them and runs the flows with Prefect's ephemeral API. Run it twice: the
second GIAB run finds its truth set cached and downloads nothing, and RNA-seq skips every finished run.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

import pandas as pd

OUT = Path(os.environ.get("GENOFLOWS_DEMO_DIR", "demo-output")).resolve()
HEADLINE = ("METRIC.Recall", "METRIC.Precision", "METRIC.F1_Score", "TRUTH.TP", "TRUTH.FN", "QUERY.FP", "FP.gt")


def _banner(text: str) -> None:
    print(f"\n{'=' * 100}\n{text}\n{'=' * 100}", flush=True)


def _use_settings(**values: str) -> None:
    from genoflows.settings import get_settings

    for key, value in values.items():
        os.environ[f"GENOFLOWS_{key.upper()}"] = value
    get_settings.cache_clear()


def run_giab(stack: ExitStack, s3_endpoint: str) -> Path:
    """Benchmark the demo's HG004 lab sample (NA24143_Lib3_Rep1) from S3 against the local GIAB mirror."""
    import boto3

    from flows.giab_benchmark import giab_benchmark
    from genoflows.testing.giab_world import build_world, upload_lab_files
    from genoflows.testing.http_server import FileServer

    world_dir = OUT / "giab-world"
    world = build_world(world_dir)
    mirror = stack.enter_context(FileServer(world.mirror))
    _use_settings(
        giab_base_url=mirror.base_url,
        reference_fasta_urls=json.dumps(world.reference_urls(mirror.base_url)),
        reference_dir=str(OUT / "references"),
        data_dir=str(OUT / "data"),
        cache_dir=str(OUT / "cache"),
    )
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    upload_lab_files(s3, "demo-lab", "wgs/run-0042", world.lab)
    sample = world.sample_id("HG004")
    _banner(f"GIAB benchmark of {sample} from s3://demo-lab/wgs/run-0042 (local S3 at {s3_endpoint})")
    metrics_csv = giab_benchmark(sample_id=sample, source="s3://demo-lab/wgs/run-0042", out_dir=OUT / "giab")
    downloads = len(mirror.downloads())
    print(f"truth-set downloads from the mirror this run: {downloads} (0 means everything came from the cache)")
    return Path(metrics_csv)


def print_giab(metrics_csv: Path) -> None:
    table = pd.read_csv(metrics_csv)
    small = table[table["metric"].isin(HEADLINE)]
    wide = small.pivot_table(index=["engine", "type", "filter"], columns="metric", values="value").reset_index()
    print(wide[["engine", "type", "filter", *[m for m in HEADLINE if m in wide.columns]]].to_string(index=False))
    print(f"\nfiles: {metrics_csv.parent}")
    for path in sorted(metrics_csv.parent.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            print(f"  {path.relative_to(OUT)}")


def run_rnaseq() -> None:
    """Quantify the demo species' runs from the local ENA-like server and print the flow's summary."""
    from genoflows.rnaseq.demo import SPECIES, run_demo

    _banner(f"RNA-seq quantification of {SPECIES} (local ENA-like server, kallisto, disk budget 8 MB)")
    summary = run_demo(OUT)
    for key, value in summary.items():
        print(f"{key:>36}: {value}")


def main() -> int:
    from genoflows.testing.s3 import moto_server

    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with ExitStack() as stack:
        endpoint = stack.enter_context(moto_server())
        _use_settings(s3_endpoint_url=endpoint)
        metrics = run_giab(stack, endpoint)
        print_giab(metrics)
        from genoflows.testing.gwas_demo import demo as gwas_demo  # GWAS (issue 10)

        gwas_demo(OUT, endpoint)
    run_rnaseq()
    from genoflows.testing.imputation_demo import run_demo as run_imputation_demo  # imputation (issue 9)

    run_imputation_demo(OUT)
    _banner(f"demo finished; outputs under {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
