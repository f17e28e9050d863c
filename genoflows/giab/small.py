"""Small-variant benchmarking: pick the engine, run hap.py when chosen, else the local engine.

hap.py is used when asked for, or with `auto` when it is on PATH or has a container image configured
(settings.tool_images["hap.py"]); otherwise the local bcftools engine (`compare.py`) runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from genoflows.giab import compare
from genoflows.giab.contigs import harmonise_inputs
from genoflows.toolrun import is_available, run_tool
from genoflows.tools import happy

Log = Callable[[str], None]
EngineChoice = Literal["auto", "happy", "bcftools"]


class EngineUnavailable(RuntimeError):
    """hap.py was requested but cannot run here."""


@dataclass
class SmallOutcome:
    """Which engine ran, its hap.py-format rows and its files."""

    engine: str
    summary_csv: Path
    rows: list[happy.SummaryRow]
    files: list[Path] = field(default_factory=list)


def choose_engine(engine: EngineChoice) -> str:
    """'happy' or 'bcftools' for the requested engine."""
    if engine == "bcftools":
        return "bcftools"
    if is_available(happy.TOOL):
        return "happy"
    if engine == "happy":
        raise EngineUnavailable(
            "engine='happy' but hap.py is neither on PATH nor configured as an image: set "
            "GENOFLOWS_TOOL_IMAGES='{\"hap.py\": \"jmcdani20/hap.py:v0.3.12\"}' (needs docker/podman), or use "
            "engine='auto'/'bcftools' for the local engine"
        )
    return "bcftools"


def run_happy(
    truth_vcf: Path,
    query_vcf: Path,
    reference: Path,
    out_dir: Path,
    *,
    confident_bed: Path | None,
    threads: int | None = None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> SmallOutcome:
    """hap.py into `<out_dir>/happy/` (written to a temporary directory first, then renamed)."""
    out_dir = Path(out_dir)
    work = out_dir / "work"
    truth_vcf, query_vcf, confident_bed = harmonise_inputs(
        truth_vcf, query_vcf, confident_bed, reference, label="", work_dir=work, log=log,
        provenance_dir=provenance_dir,
    )
    tmp = out_dir / ".happy.tmp"
    final = out_dir / "happy"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    argv = happy.happy_argv(
        truth_vcf, query_vcf, reference, confident_bed, tmp / "happy", threads=threads or min(4, os.cpu_count() or 1)
    )
    mounts = [Path(p).resolve().parent for p in (truth_vcf, query_vcf, reference, *( [confident_bed] if confident_bed else []))]
    run_tool(argv, cwd=tmp, log=log, provenance_dir=provenance_dir, mounts=[*mounts, tmp.resolve()])
    if not happy.summary_path(tmp / "happy").exists():
        raise happy.SummaryFormatError(f"hap.py finished but wrote no {tmp / 'happy.summary.csv'}; see its log above")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    summary = happy.summary_path(final / "happy")
    return SmallOutcome("happy", summary, happy.parse_summary(summary), happy.output_paths(final / "happy"))


def run_local(
    truth_vcf: Path,
    query_vcf: Path,
    reference: Path,
    out_dir: Path,
    *,
    confident_bed: Path | None,
    cache_dir: Path | None = None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> SmallOutcome:
    """The local engine into `<out_dir>/bcftools/`."""
    res = compare.compare_small(
        truth_vcf, query_vcf, reference, Path(out_dir) / "bcftools", confident_bed=confident_bed,
        cache_dir=cache_dir, log=log, provenance_dir=provenance_dir,
    )
    return SmallOutcome(compare.ENGINE_NAME, res.summary_csv, res.rows, res.files)
