"""Structural variants: `truvari bench` of the lab's SV calls against a truth set, ALL and PASS views.

truvari refuses an existing output directory, so each call writes to a temporary directory that is renamed
into place. (The flow gives every run its own run directory, so a finished result is never replaced.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from genoflows.giab.contigs import harmonise_inputs
from genoflows.toolrun import run_tool
from genoflows.tools import truvari

Log = Callable[[str], None]
ENGINE_NAME = "truvari"


@dataclass
class SvResult:
    """truvari's scalar metrics per filter view and the directories holding its files."""

    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    out_dirs: dict[str, Path] = field(default_factory=dict)


def run_truvari(
    truth_vcf: Path,
    query_vcf: Path,
    reference: Path | None,
    out_dir: Path,
    *,
    include_bed: Path | None,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> SvResult:
    """Bench `query_vcf` against `truth_vcf` twice: all calls (`truvari/`) and PASS calls only (`truvari-pass/`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # truvari creates only its own directory, not its parents
    work = out_dir / "work"
    if reference is not None:
        truth_vcf, query_vcf, include_bed = harmonise_inputs(
            truth_vcf, query_vcf, include_bed, reference, label="sv", work_dir=work, log=log,
            provenance_dir=provenance_dir,
        )
    result = SvResult()
    for flt, passonly, name in (("ALL", False, "truvari"), ("PASS", True, "truvari-pass")):
        final = out_dir / name
        tmp = out_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        argv = truvari.bench_argv(
            truth_vcf, query_vcf, tmp, reference=reference, includebed=include_bed, passonly=passonly
        )
        run_tool(argv, log=log, provenance_dir=provenance_dir)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        result.metrics[flt] = truvari.parse_summary(final / "summary.json")
        result.out_dirs[flt] = final
        if log:
            m = result.metrics[flt]
            log(
                f"truvari {flt}: TP-base {m.get('TP-base'):.0f} FN {m.get('FN'):.0f} FP {m.get('FP'):.0f} "
                f"recall {m.get('recall')} precision {m.get('precision')}"
            )
    return result
