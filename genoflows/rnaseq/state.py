"""What is done, what failed and what is left, read from the output tree (no database, no markers).

A run is complete when `quant/<run>/` holds abundance.tsv and run_info.json (the directory is renamed into
place only after checks); `failed.tsv` keeps the last failure reason per run. A rerun does every included
run that is not complete, so failed and missing runs are retried and finished ones never refetched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from genoflows.rnaseq.metadata import Run, RunTable, write_tsv
from genoflows.rnaseq.stages import SpeciesDirs

FAILED_TSV = "failed.tsv"


@dataclass(frozen=True)
class Plan:
    todo: list[Run]
    complete: list[str]


def write_failed(dirs: SpeciesDirs, failures: Mapping[str, str]) -> None:
    """Rewrite failed.tsv (atomically) with the current failures only; no failures -> no file."""
    path = dirs.root / FAILED_TSV
    if not failures:
        path.unlink(missing_ok=True)
        return
    write_tsv(path, ["run", "reason"], ({"run": r, "reason": why} for r, why in sorted(failures.items())))


def plan(table: RunTable, dirs: SpeciesDirs) -> Plan:
    complete = [r.run for r in table.runs if dirs.is_complete(r.run)]
    done = set(complete)
    return Plan([r for r in table.runs if r.run not in done], complete)
