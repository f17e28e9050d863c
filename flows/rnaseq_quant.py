"""RNA-seq quantification flows: one species (`rnaseq_quant`) and several (`rnaseq_multi_species`).

Runs stream through download -> kallisto -> delete under a disk budget (see genoflows/rnaseq/stream.py);
finished runs are never redone, failed and missing ones are retried on the next flow run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from filelock import FileLock, Timeout
from prefect import flow
from prefect.states import Completed
from pydantic import ByteSize, Field, PositiveFloat

from genoflows.rnaseq.config import ConfigError, load_configs, params_model
from genoflows.rnaseq.metadata import load_runs, species_dirname
from genoflows.rnaseq.stages import SpeciesDirs
from genoflows.rnaseq.state import plan, write_failed
from genoflows.rnaseq.stream import DiskSampler, human_bytes
from tasks import rnaseq as t
from tasks.runtime import run_logger

Source = Literal["ena", "aws", "ncbi"]
Positive = Annotated[int, Field(ge=1, le=256)]


@flow(name="rnaseq-quant", flow_run_name="{species}", log_prints=True)
def rnaseq_quant(
    metadata: str | list[str],
    species: str,
    transcriptome: str,
    out_dir: str = "data/rnaseq",
    threads: Positive = 2,
    max_downloads: Positive = 4,
    disk_budget: ByteSize = ByteSize(40 * 10**9),  # noqa: B008 - pydantic parses "40GB"/"500MB"/int
    sources: Annotated[list[Source], Field(min_length=1)] = ["ena", "aws"],  # noqa: B006 - copied per run
    engine: Literal["kallisto"] = "kallisto",
    fragment_length: PositiveFloat | None = None,
    fragment_sd: PositiveFloat | None = None,
    retry_delay_seconds: float = 2.0,
) -> dict[str, object]:
    """Quantify one species' runs; returns the summary (also published as artifacts).

    These parameters are also what a species entry of `rnaseq_multi_species`'s YAML may hold (`SpeciesConfig`).
    """
    t0 = time.monotonic()
    logger = run_logger()
    sp = species_dirname(species)
    dirs = SpeciesDirs(Path(out_dir) / sp)
    dirs.root.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(dirs.root / ".flow.lock"), timeout=0).acquire()
    except Timeout as exc:
        raise RuntimeError(f"another flow run is working on {dirs.root}; wait for it or use another out_dir") from exc
    with lock:
        meta = metadata if isinstance(metadata, list) else t.local_input(metadata, dirs.root / ".inputs", refresh=True)
        table = load_runs(meta, species)
        if stale := dirs.prepare():
            logger.warning("removed %d leftovers of an interrupted run: %s", len(stale), stale[:5])
        todo = plan(table, dirs)
        logger.info("%s: %d runs, %d complete, %d to do, %d skipped", sp, len(table.runs), len(todo.complete),
                    len(todo.todo), len(table.skipped))  # fmt: skip
        failures: dict[str, str] = {}
        report = None
        counter = t.ByteCounter()
        progress = t.RunProgress(sp, len(table.runs), len(todo.complete), counter)
        with DiskSampler(dirs.fastq, interval=0.2) as disk:
            if todo.todo:
                index, targets = t.build_index(transcriptome)
                resolved, unresolved = t.resolve_runs(todo.todo, sp, list(sources))
                for run, why in unresolved:  # failed before the stream: count them in the progress too
                    failures[run] = f"resolve: {why}"
                    progress("failed", run, failures[run])
                fragment = (fragment_length, fragment_sd or fragment_length / 10) if fragment_length else None
                download = t.download_run.with_options(retry_delay_seconds=[retry_delay_seconds * 2**i for i in range(3)])
                report = t.stream_runs(resolved, dirs, index, targets, budget=int(disk_budget), max_downloads=max_downloads,
                                       threads=threads, fragment=fragment, progress=progress, download_task=download)  # fmt: skip
                failures.update(report.failed)
        write_failed(dirs, failures)
        merged = t.merge_species(dirs.root, sp, table, [r.run for r in table.runs])
        summary = {
            "species": sp,
            "runs": len(table.runs),
            "quantified": len(merged.runs),
            "newly_quantified": len(report.done) if report else 0,
            "failed": len(failures),
            "skipped (excluded / not sampled)": len(table.skipped),
            "downloaded": human_bytes(counter.total),
            "disk_budget": human_bytes(int(disk_budget)),
            "disk_high_water (sampled fastq/)": human_bytes(disk.high_water),
            "disk_reserved_high_water": human_bytes(report.reserved_high_water if report else 0),
            "wall_seconds": round(time.monotonic() - t0, 1),
            "failed_tsv": str(dirs.root / "failed.tsv") if failures else "",
        }
        t.publish_summary(sp, summary, progress.rows)
        logger.info("summary: %s", summary)
        leftovers = report.cleanup_failed if report else {}
        if leftovers:
            logger.error("could not delete the FASTQs of %s (still on disk, still in the budget)", leftovers)
        result = {**summary, "disk_high_water_bytes": disk.high_water, "failures": failures, "not_deleted": leftovers}
        # The run stays Completed (the other runs' work is done and kept); its state message says what failed.
        message = f"{sp}: {summary['quantified']} of {len(table.runs)} runs quantified"
        if failures:
            message += f", {len(failures)} failed (see {dirs.root / 'failed.tsv'})"
        return Completed(message=message, data=result)


#: A species entry of the multi-species YAML: exactly `rnaseq_quant`'s parameters, limits and defaults.
SpeciesConfig = params_model(rnaseq_quant.fn, "SpeciesConfig")


@flow(name="rnaseq-multi-species", log_prints=True)
def rnaseq_multi_species(configs: str | list[str]) -> dict[str, object]:
    """Run `rnaseq_quant` per species from YAML configs; one species failing does not stop the others."""
    try:
        species = load_configs(configs, SpeciesConfig)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    results: dict[str, object] = {}
    for cfg in species:
        params = cfg.model_dump()
        state = rnaseq_quant(**params, return_state=True)
        results[params["species"]] = state.result() if state.is_completed() else f"failed: {state.message}"
    return results
