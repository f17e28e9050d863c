"""Small-variant benchmarking: pick the engine, run hap.py when chosen, else the local engine.

hap.py is used when asked for, or with `auto` when it can really run here: on PATH, or with a container image
configured (settings.tool_images["hap.py"]) AND a container engine that answers. Otherwise `auto` runs the local
bcftools engine (`compare.py`) and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from genoflows.files import temp_path
from genoflows.giab import compare
from genoflows.giab.contigs import check_same_build, harmonise_inputs
from genoflows.giab.query import check_vcf_file
from genoflows.giab.regions import read_bed
from genoflows.toolrun import container_engine, image_for, run_tool, which
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


def happy_runnable() -> tuple[bool, str]:
    """(can hap.py run here, why or why not). An image alone is not enough: the container engine must answer
    (`<engine> version` exits 0; docker fails it when its daemon is unreachable)."""
    if which(happy.TOOL) is not None:
        return True, f"hap.py is on PATH ({which(happy.TOOL)})"
    image = image_for(happy.TOOL)
    if image is None:
        return False, "hap.py is not on PATH and no container image is configured for it"
    engine = container_engine()
    found = which(engine)
    if found is None:
        return False, f"hap.py is configured as image {image} but the container engine {engine!r} is not installed"
    try:
        proc = subprocess.run([found, "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"hap.py is configured as image {image} but `{engine} version` failed ({exc})"
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return False, (f"hap.py is configured as image {image} but the container engine {engine!r} does not answer "
                       f"(`{engine} version` exit {proc.returncode}: {last[0][:200]})")
    return True, f"hap.py runs in image {image} through {engine}"


def choose_engine(engine: EngineChoice) -> tuple[str, str]:
    """('happy' or 'bcftools', why) for the requested engine; 'happy' that cannot run raises EngineUnavailable."""
    if engine == "bcftools":
        return "bcftools", "requested"
    ok, why = happy_runnable()
    if ok:
        return "happy", why
    if engine == "happy":
        raise EngineUnavailable(
            f"engine='happy' but {why}: put hap.py on PATH, or set a ToolImages block / "
            "GENOFLOWS_TOOL_IMAGES='{\"hap.py\": \"jmcdani20/hap.py:v0.3.12\"}' with a working docker/podman, or use "
            "engine='auto'/'bcftools' for the local engine"
        )
    return "bcftools", f"{why}; using the local bcftools engine"


def run_happy(
    truth_vcf: Path,
    query_vcf: Path,
    reference: Path,
    out_dir: Path,
    *,
    confident_bed: Path | None,
    build: str | None = None,
    threads: int | None = None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> SmallOutcome:
    """hap.py into `<out_dir>/happy/` (written to a temporary directory first, then renamed)."""
    out_dir = Path(out_dir)
    work = out_dir / "work"
    for label, vcf in (("truth", truth_vcf), ("query", query_vcf)):
        check_vcf_file(vcf, label)
        check_same_build(vcf, reference, label=label, build=build)
    if confident_bed is not None:
        read_bed(confident_bed)  # a malformed line stops here, with its line number, not deep inside hap.py
    truth_vcf, query_vcf, confident_bed = harmonise_inputs(
        truth_vcf, query_vcf, confident_bed, reference, label="", work_dir=work, log=log,
        provenance_dir=provenance_dir,
    )
    final = out_dir / "happy"
    tmp = temp_path(final)  # unique: a concurrent or earlier writer's directory is never reused or removed
    tmp.mkdir(parents=True)
    try:
        argv = happy.happy_argv(
            truth_vcf, query_vcf, reference, confident_bed, tmp / "happy", threads=threads or min(4, os.cpu_count() or 1)
        )
        mounts = [Path(p).resolve().parent
                  for p in (truth_vcf, query_vcf, reference, *([confident_bed] if confident_bed else []))]
        run_tool(argv, cwd=tmp, log=log, provenance_dir=provenance_dir, mounts=[*mounts, tmp.resolve()])
        if not happy.summary_path(tmp / "happy").exists():
            raise happy.SummaryFormatError(f"hap.py finished but wrote no {final / 'happy.summary.csv'}; see its log above")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = happy.summary_path(final / "happy")
    return SmallOutcome("happy", summary, happy.parse_summary(summary), happy.output_paths(final / "happy"))


def run_local(
    truth_vcf: Path,
    query_vcf: Path,
    reference: Path,
    out_dir: Path,
    *,
    confident_bed: Path | None,
    build: str | None = None,
    cache_dir: Path | None = None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> SmallOutcome:
    """The local engine into `<out_dir>/bcftools/`."""
    res = compare.compare_small(
        truth_vcf, query_vcf, reference, Path(out_dir) / "bcftools", confident_bed=confident_bed,
        cache_dir=cache_dir, build=build, log=log, provenance_dir=provenance_dir,
    )
    return SmallOutcome(compare.ENGINE_NAME, res.summary_csv, res.rows, res.files)
