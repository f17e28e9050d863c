"""Merge per-run kallisto tables of one species, joined on target_id (amalgkit merge, with ID checks).

Unlike amalgkit v0.12 (column-wise paste, target order from the first file), every run must list exactly
the same targets, once each; rows are joined by id, so a differently ordered table still lands in the right
row. Columns are numpy arrays (8 bytes a value), so 300 runs x 100k transcripts stay well under 1 GB, and
values are parsed and written round-trip exact: the merged numbers are the per-run numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genoflows.files import atomic_output
from genoflows.rnaseq.metadata import RunTable, write_tsv
from genoflows.rnaseq.stages import SpeciesDirs
from genoflows.tools.kallisto import RunInfo, parse_run_info

KINDS = ("est_counts", "tpm")


class MergeError(RuntimeError):
    """Per-run tables cannot be merged (different or duplicated target ids)."""


@dataclass(frozen=True)
class MergeResult:
    runs: list[str]
    n_targets: int
    est_counts: Path | None
    tpm: Path | None
    metadata: Path
    reused: bool = False


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", usecols=["target_id", *KINDS], dtype={"target_id": str},
                     float_precision="round_trip")  # fmt: skip
    if df["target_id"].duplicated().any():
        raise MergeError(f"{path}: duplicated target ids, e.g. {df['target_id'][df['target_id'].duplicated()].iloc[0]}")
    return df


def merged_paths(dirs: SpeciesDirs, species: str) -> dict[str, Path]:
    return {k: dirs.merged / f"{species}_{k}.tsv" for k in KINDS}


def is_current(dirs: SpeciesDirs, species: str, runs: Sequence[str]) -> bool:
    """True when the merged tables hold exactly `runs` (header line) and are newer than every run's table."""
    newest = max((dirs.quant_dir(r).joinpath("abundance.tsv").stat().st_mtime_ns for r in runs), default=0)
    for path in merged_paths(dirs, species).values():
        if not path.exists():
            return not runs and not any(p.exists() for p in merged_paths(dirs, species).values())
        with open(path) as fh:
            if fh.readline().rstrip("\n").split("\t") != ["target_id", *runs]:
                return False
        if path.stat().st_mtime_ns < newest:
            return False
    return True


def merge_species(dirs: SpeciesDirs, species: str, table: RunTable, runs: Sequence[str]) -> MergeResult:
    """Write merged/<species>_{est_counts,tpm}.tsv for the complete `runs`, and metadata.tsv + mapping_rate."""
    done = [r for r in runs if dirs.is_complete(r)]
    paths = merged_paths(dirs, species)
    infos = {r: parse_run_info(dirs.quant_dir(r) / "run_info.json") for r in done}
    check_same_index(infos)
    reused = is_current(dirs, species, done)
    n_targets = _count_rows(paths["tpm"]) if reused and done else 0 if reused else _write_tables(dirs, done, paths)
    rates = {r: info.p_pseudoaligned for r, info in infos.items()}
    cols = list(table.columns) + (["mapping_rate"] if "mapping_rate" not in table.columns else [])
    meta_rows = [{**row, "mapping_rate": rates.get(row.get("run", ""), "")} for row in table.rows]
    write_tsv(dirs.root / "metadata.tsv", cols, meta_rows)
    return MergeResult(done, n_targets, paths["est_counts"] if done else None, paths["tpm"] if done else None,
                       dirs.root / "metadata.tsv", reused)  # fmt: skip


def check_same_index(infos: dict[str, RunInfo]) -> None:
    """Runs quantified against different indices (the transcriptome or kallisto changed) must not be merged.

    The index's cache directory name is its key (FASTA hash + kallisto version), so a moved cache still matches.
    """
    keys: dict[str, list[str]] = {}
    for run, info in infos.items():
        if info.index:
            keys.setdefault(Path(info.index).parent.name, []).append(run)
    if len(keys) > 1:
        groups = "; ".join(f"{k}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for k, v in keys.items())
        raise MergeError(
            f"runs were quantified with different kallisto indices ({groups}); delete quant/<run> of the runs "
            "made with the old transcriptome or kallisto and rerun"
        )


def _count_rows(path: Path) -> int:
    with open(path) as fh:
        return sum(1 for _ in fh) - 1


def _write_tables(dirs: SpeciesDirs, done: list[str], paths: dict[str, Path]) -> int:
    """Join the runs' tables on target_id into one matrix per kind; returns the number of targets."""
    targets: pd.Index = pd.Index([])
    columns = {k: np.empty((0, 0)) for k in KINDS}
    for j, run in enumerate(done):
        df = _read(dirs.quant_dir(run) / "abundance.tsv")
        if j == 0:
            targets = pd.Index(df["target_id"])
            columns = {k: np.empty((len(targets), len(done))) for k in KINDS}
        elif not targets.equals(pd.Index(df["target_id"])):
            if len(df) != len(targets) or not targets.isin(df["target_id"]).all():
                diff = sorted(set(df["target_id"]) ^ set(targets))[:5]
                raise MergeError(
                    f"{run}: target set differs from {done[0]} (e.g. {diff}); were they quantified with another "
                    "index? delete quant/<run> for the odd runs and rerun"
                )
            df = df.set_index("target_id").reindex(targets).reset_index()
        for k in KINDS:
            columns[k][:, j] = df[k].to_numpy()
    for k in KINDS:
        if done:
            out = pd.DataFrame(columns[k], columns=done)
            out.insert(0, "target_id", targets)
            with atomic_output(paths[k]) as tmp:  # a unique temp name: two writers never share one
                out.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE)
        else:
            paths[k].unlink(missing_ok=True)
    return len(targets)
