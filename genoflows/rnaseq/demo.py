"""The RNA-seq part of `make demo`: a generated transcriptome and runs behind a local ENA-like server.

`run_demo(out_dir)` builds the world once (seeded, cached under out_dir), serves it on 127.0.0.1, points
the settings at the server and runs `rnaseq_quant`. It includes an excluded run and a run ENA does not have
(served as an AWS `.sra`, converted by fasterq-dump). Run it twice: the second time every run is skipped.
    .venv/bin/python -m genoflows.rnaseq.demo [out_dir]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from genoflows.testing import rnaseq_world as sim

SPECIES = "Camponotus floridanus"
RUNS = {  # run -> (layout, fragments, source)
    "SRR7000001": ("paired", 20000, "ena"),
    "SRR7000002": ("paired", 12000, "ena"),
    "SRR7000003": ("single", 15000, "ena"),
    "SRR7000004": ("paired", 8000, "ena"),
    "SRR7000005": ("paired", 5000, "aws"),
    "SRR7000006": ("paired", 9000, "excluded"),
}


def build_world(root: Path, host: str) -> tuple[Path, Path, sim.EnaCatalog]:
    """Transcriptome, server tree and metadata.tsv under `root` (seeded: the same bytes every time)."""
    srv = root / "srv"
    fasta, meta = root / "transcripts.fa", root / "metadata.tsv"
    tx = sim.make_transcriptome(fasta, n_genes=80, seed=11)
    catalog = sim.EnaCatalog(srv)
    rows = []
    for i, (run, (layout, n, source)) in enumerate(RUNS.items()):
        s = sim.simulate_run(tx, root / "gen", run, layout=layout, n_fragments=n, seed=i)  # type: ignore[arg-type]
        if source == "aws":
            sim.make_sra(s, srv / "sra" / run / run)
            catalog.add_empty(run)
        else:
            catalog.add(s, host=host)
        rows.append({"scientific_name": SPECIES, "run": run, "lib_layout": layout, "nominal_length": "250",
                     "exclusion": "low_quality" if source == "excluded" else "no", "is_sampled": "yes"})  # fmt: skip
    sim.write_metadata(meta, rows)
    return fasta, meta, catalog


def run_demo(out_dir: Path) -> dict[str, object]:
    """Serve the world, run the flow, return its summary (settings restored afterwards)."""
    from flows.rnaseq_quant import rnaseq_quant
    from genoflows.settings import get_settings
    from genoflows.testing.http_server import FileServer

    root = Path(out_dir).resolve() / "rnaseq-world"
    (root / "srv").mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("GENOFLOWS_ENA_BASE_URL", "GENOFLOWS_SRA_ODP_BASE_URL")}
    with FileServer(root / "srv") as server:
        fasta, meta, catalog = build_world(root, server.base_url.split("://")[1])  # URLs embed the port
        server.add_route("/filereport", catalog.filereport_handler())
        os.environ["GENOFLOWS_ENA_BASE_URL"] = server.base_url
        os.environ["GENOFLOWS_SRA_ODP_BASE_URL"] = f"{server.base_url}/sra"
        get_settings.cache_clear()
        try:
            return rnaseq_quant(metadata=str(meta), species=SPECIES, transcriptome=str(fasta),
                                out_dir=str(Path(out_dir).resolve() / "rnaseq"), disk_budget="8MB",
                                max_downloads=3, sources=["ena", "aws"])  # fmt: skip
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            get_settings.cache_clear()


if __name__ == "__main__":
    summary = run_demo(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output"))
    for key, value in summary.items():
        print(f"{key:>36}: {value}")
