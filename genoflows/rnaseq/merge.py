"""Merge per-run kallisto tables of one species, joined on target_id (amalgkit merge, with ID checks).

Unlike amalgkit v0.12 (column-wise paste, target order from the first file), every run must list exactly
the same targets; rows are joined by id, so a differently ordered table still lands in the right row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from genoflows.rnaseq.metadata import RunTable, write_tsv
from genoflows.rnaseq.stages import SpeciesDirs
from genoflows.tools.kallisto import parse_run_info, read_abundance


class MergeError(RuntimeError):
    """Per-run tables cannot be merged (different target sets)."""


@dataclass(frozen=True)
class MergeResult:
    runs: list[str]
    n_targets: int
    est_counts: Path | None
    tpm: Path | None
    metadata: Path


def merge_species(dirs: SpeciesDirs, species: str, table: RunTable, runs: Sequence[str]) -> MergeResult:
    """Write merged/<species>_{est_counts,tpm}.tsv for the complete `runs`, and metadata.tsv + mapping_rate."""
    done = [r for r in runs if dirs.is_complete(r)]
    tables = {r: read_abundance(dirs.quant_dir(r) / "abundance.tsv") for r in done}
    targets: list[str] = list(tables[done[0]]) if done else []
    for r in done[1:]:
        if set(tables[r]) != set(targets):
            extra = sorted(set(tables[r]) ^ set(targets))[:5]
            raise MergeError(
                f"{r}: target set differs from {done[0]} (e.g. {extra}); were they quantified with another "
                "index? delete quant/<run> for the odd runs and rerun"
            )
    paths: dict[str, Path | None] = {"est_counts": None, "tpm": None}
    if done:
        for col, name in ((0, "est_counts"), (1, "tpm")):
            rows = ({"target_id": t, **{r: _fmt(tables[r][t][col]) for r in done}} for t in targets)
            path = dirs.merged / f"{species}_{name}.tsv"
            write_tsv(path, ["target_id", *done], rows)
            paths[name] = path
    rates = {r: parse_run_info(dirs.quant_dir(r) / "run_info.json").p_pseudoaligned for r in done}
    cols = list(table.columns) + (["mapping_rate"] if "mapping_rate" not in table.columns else [])
    meta_rows = [{**row, "mapping_rate": rates.get(row.get("run", ""), "")} for row in table.rows]
    meta = dirs.root / "metadata.tsv"
    write_tsv(meta, cols, meta_rows)
    return MergeResult(done, len(targets), paths["est_counts"], paths["tpm"], meta)


def _fmt(x: float) -> str:
    """Shortest text that round-trips: the same numbers kallisto wrote, no precision lost."""
    return repr(x)
