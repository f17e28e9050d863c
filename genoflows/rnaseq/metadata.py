"""Read the run list: an amalgkit `metadata.tsv` or a plain list of accessions, validated up front.

Runs become directory names and URLs, so every id is checked before anything touches disk or network;
errors name the file, the row and what to fix, and all problems are reported at once.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from genoflows.files import atomic_output

Layout = Literal["paired", "single"]

REQUIRED_COLUMNS = ("run", "scientific_name", "lib_layout")
#: Our own optional columns for runs that are not on ENA/SRA: `;`-separated URIs (s3://, https://, paths).
URI_COLUMN, MD5_COLUMN = "fastq_uris", "fastq_md5"
SRA_ACCESSION = re.compile(r"^[SED]RR\d{6,12}$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class MetadataError(ValueError):
    """The run table cannot be used; the message lists every problem found."""


@dataclass(frozen=True)
class Run:
    """One sequencing run to quantify."""

    run: str
    species: str  # Genus_species, safe as a directory name
    layout: Layout | None  # from the metadata; the files decide in the end
    nominal_length: int | None = None
    uris: tuple[str, ...] = ()
    md5s: tuple[str, ...] = ()
    aws_link: str | None = None


@dataclass
class RunTable:
    """Runs to do, runs skipped on purpose (with why), and the species' rows for the output metadata."""

    runs: list[Run]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


def species_dirname(name: str) -> str:
    """'Camponotus floridanus' -> 'Camponotus_floridanus' (amalgkit's Genus_species), validated."""
    cleaned = "_".join(name.strip().split())
    if not SAFE_NAME.match(cleaned) or ".." in cleaned:
        raise MetadataError(f"species {name!r} is not usable as a directory name; use letters, digits, _ . -")
    return cleaned


def check_run_id(run: str, *, where: str, needs_accession: bool) -> str | None:
    """Return a problem description for a bad run id (None when fine)."""
    if not run:
        return f"{where}: empty run id"
    if needs_accession and not SRA_ACCESSION.match(run):
        return f"{where}: {run!r} is not an SRA/ENA/DDBJ run accession (SRR/ERR/DRR + digits)"
    if not SAFE_NAME.match(run) or ".." in run:
        return f"{where}: run id {run!r} is unsafe as a directory name (letters, digits, _ . - only)"
    return None


def _layout(value: str) -> Layout | None | str:
    v = value.strip().lower()
    if v in ("paired", "single"):
        return v  # type: ignore[return-value]
    if v == "":
        return None
    return "bad"


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(";") if p.strip())


def read_metadata(path: Path, species: str | None = None) -> RunTable:
    """Parse an amalgkit metadata.tsv, keeping one species (all when None); raise MetadataError on problems."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # Excel writes a BOM; CRLF is handled by csv
            reader = csv.DictReader(fh, delimiter="\t")
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(f"cannot read metadata {path}: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise MetadataError(
            f"{path}: required column(s) missing: {', '.join(missing)} "
            f"(found: {', '.join(columns) or 'none'}); an amalgkit metadata.tsv has them all"
        )
    want = species_dirname(species) if species else None
    problems: list[str] = []
    seen: dict[str, int] = {}
    table = RunTable(runs=[], columns=columns)
    for i, row in enumerate(rows, start=2):
        run = (row.get("run") or "").strip()
        where = f"{path} line {i}"
        sp_raw = (row.get("scientific_name") or "").strip()
        if not sp_raw:
            problems.append(f"{where}: empty scientific_name for run {run!r}")
            continue
        try:
            sp = species_dirname(sp_raw)
        except MetadataError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if want and sp != want:
            continue
        uris = _split(row.get(URI_COLUMN))
        if problem := check_run_id(run, where=where, needs_accession=not uris):
            problems.append(problem)
            continue
        if run in seen:
            problems.append(f"{where}: duplicate run {run} (first on line {seen[run]}); keep one row per run")
            continue
        seen[run] = i
        layout = _layout(row.get("lib_layout") or "")
        if layout == "bad":
            problems.append(f"{where}: run {run} has unknown lib_layout {row.get('lib_layout')!r} (paired|single)")
            continue
        table.rows.append(row)
        exclusion = (row.get("exclusion") or "").strip().lower()
        if exclusion not in ("", "no"):
            table.skipped.append((run, f"excluded: {exclusion}"))
            continue
        if (row.get("is_sampled") or "").strip().lower() == "no":
            table.skipped.append((run, "not sampled (is_sampled=no)"))
            continue
        table.runs.append(
            Run(
                run=run,
                species=sp,
                layout=layout,  # type: ignore[arg-type]
                nominal_length=_int_or_none(row.get("nominal_length")),
                uris=uris,
                md5s=_split(row.get(MD5_COLUMN)),
                aws_link=(row.get("AWS_Link") or "").strip() or None,
            )
        )
    if problems:
        raise MetadataError(f"{len(problems)} problem(s) in {path}:\n  " + "\n  ".join(problems))
    if want and not table.rows:
        raise MetadataError(f"{path}: no rows with scientific_name {species!r}; check the species name")
    return table


def runs_from_accessions(accessions: Iterable[str], species: str) -> RunTable:
    """A RunTable from a plain list of run accessions (layout unknown: taken from the files)."""
    sp = species_dirname(species)
    problems, runs, seen = [], [], set()
    for i, acc in enumerate(accessions, start=1):
        acc = acc.strip()
        if problem := check_run_id(acc, where=f"accession #{i}", needs_accession=True):
            problems.append(problem)
        elif acc in seen:
            problems.append(f"accession #{i}: duplicate run {acc}")
        else:
            seen.add(acc)
            runs.append(Run(run=acc, species=sp, layout=None))
    if problems:
        raise MetadataError(f"{len(problems)} problem(s) in the accession list:\n  " + "\n  ".join(problems))
    rows = [{"run": r.run, "scientific_name": species, "lib_layout": ""} for r in runs]
    return RunTable(runs=runs, rows=rows, columns=["run", "scientific_name", "lib_layout"])


def load_runs(metadata: Path | Sequence[str], species: str | None) -> RunTable:
    """Dispatch on the input kind: a metadata.tsv path or a list of accessions."""
    if isinstance(metadata, (str, Path)):
        return read_metadata(Path(metadata), species)
    if species is None:
        raise MetadataError("a list of accessions needs a species name")
    return runs_from_accessions(metadata, species)


def write_tsv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, object]]) -> None:
    """Write a TSV atomically (temp name, then rename)."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), delimiter="\t", extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow(row)
