"""Checks of phenotypes, covariates, sample ids and prediction lists, done before any compute starts.

Each check raises `InputError` naming the file (as the manifest gave it) and what to do, so a scientist fixes
the manifest instead of reading a regenie log an hour later.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from genoflows.gwas.chromosomes import bgen_sample_ids


class InputError(ValueError):
    """A bad input file; the message names it and says what to fix."""


MISSING = {"NA", "nan", "NaN", "inf", "-inf", "Inf", "-Inf"}


@dataclass
class Table:
    """A regenie-style table: FID, IID and named columns (values as text)."""

    name: str
    columns: list[str]
    rows: list[list[str]]

    def keys(self) -> list[str]:
        return [f"{r[0]}_{r[1]}" for r in self.rows]

    def column(self, col: str) -> list[str]:
        i = self.columns.index(col) + 2  # rows start with FID, IID
        return [r[i] for r in self.rows]


def read_table(path: Path, label: str) -> Table:
    """A phenotype/covariate file: header `FID IID ...`, space or tab separated, one row per sample."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt") as fh:
            lines = [line.split() for line in fh if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{label}: cannot read it as text ({exc})") from exc
    if not lines or lines[0][:2] != ["FID", "IID"]:
        raise InputError(f"{label}: the header must start with FID IID (regenie's format); got {lines[0][:3] if lines else 'an empty file'}")
    header, body = lines[0], lines[1:]
    seen: set[tuple[str, str]] = set()
    for n, row in enumerate(body, 2):
        if len(row) != len(header):
            raise InputError(f"{label}: line {n} has {len(row)} fields, the header has {len(header)}")
        if (row[0], row[1]) in seen:
            raise InputError(f"{label}: sample {row[0]} {row[1]} appears twice (line {n})")
        seen.add((row[0], row[1]))
    return Table(label, header[2:], body)


def write_table(path: Path, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w") as fh:
        fh.write(" ".join(["FID", "IID", *columns]) + "\n")
        for r in rows:
            fh.write(" ".join(str(x) for x in r) + "\n")
    tmp.replace(path)
    return path


def _fmt(value: float | None) -> str:
    return "NA" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def write_inline_phenotypes(path: Path, column: str, samples: dict[str, float | None]) -> Path:
    """Inline `samples` (old Step Functions input) as a regenie phenotype file, FID = IID = sample id."""
    return write_table(path, [column], [[s, s, _fmt(v)] for s, v in samples.items()])


def csv_to_phenotypes(src: Path, dest: Path, id_column: str, columns: Sequence[str], label: str) -> Path:
    """A CSV sample manifest (id column + trait columns) as a regenie phenotype file, FID = IID = sample id."""
    with open(src, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        missing = [c for c in [id_column, *columns] if c not in fields]
        if missing:
            raise InputError(f"{label}: column(s) {missing} not found; the CSV has {fields}")
        rows = [[r[id_column], r[id_column], *[(r[c] or "NA").strip() for c in columns]] for r in reader]
    return write_table(dest, columns, rows)


def check_phenotypes(table: Table, columns: Sequence[str], trait: str, cc12: bool = False) -> None:
    """Columns present, values numeric or NA, binary traits coded 0/1 (1/2 with --cc12), traits not constant."""
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise InputError(
            f"{table.name}: phenotype column(s) {absent} not found; the file has {table.columns}. "
            "Fix phenotype.columns in the manifest"
        )
    allowed = {1.0, 2.0} if cc12 else {0.0, 1.0}
    for col in columns:
        values = []
        for (fid, iid), raw in zip(((r[0], r[1]) for r in table.rows), table.column(col), strict=True):
            if raw in MISSING:
                continue
            try:
                v = float(raw)
            except ValueError:
                raise InputError(
                    f"{table.name}: column {col}, sample {fid} {iid}: {raw!r} is not a number "
                    "(missing values must be written NA)"
                ) from None
            if trait == "bt" and v not in allowed:
                coding = "1=control, 2=case (--cc12)" if cc12 else "0=control, 1=case"
                raise InputError(
                    f"{table.name}: binary trait {col} has value {raw!r} for sample {fid} {iid}; code it "
                    f"{coding} or NA, or set traitType qt"
                )
            values.append(v)
        if not values:
            raise InputError(f"{table.name}: trait {col} has no non-missing value")
        distinct = len(set(values))
        if trait == "bt" and distinct < 2:
            raise InputError(f"{table.name}: binary trait {col} has only one class; it needs cases and controls")
        if trait == "qt" and distinct < 3:
            raise InputError(
                f"{table.name}: quantitative trait {col} has {distinct} distinct values; "
                "if it is binary set traitType bt"
            )


def check_covariates(table: Table, columns: Sequence[str], categorical: Sequence[str]) -> None:
    absent = [c for c in [*columns, *categorical] if c not in table.columns]
    if absent:
        raise InputError(f"{table.name}: covariate column(s) {absent} not found; the file has {table.columns}")
    for col in columns or [c for c in table.columns if c not in categorical]:
        for r, raw in zip(table.rows, table.column(col), strict=True):
            if raw in MISSING:
                continue
            try:
                float(raw)
            except ValueError:
                raise InputError(
                    f"{table.name}: covariate {col}, sample {r[0]} {r[1]}: {raw!r} is not a number; "
                    "list it under covariates.categorical if it is a category"
                ) from None


def genotype_sample_keys(fmt: str, path: Path, sample_file: Path | None) -> list[str]:
    """The FID_IID keys regenie would read for the genotype samples."""
    if fmt == "bed":
        return [f"{f[0]}_{f[1]}" for f in _split_lines(Path(f"{path}.fam"))]
    if fmt == "pgen":
        rows = _split_lines(Path(f"{path}.psam"))
        head = rows[0] if rows and rows[0][0].startswith("#") else None
        if head is None:
            return [f"{f[0]}_{f[1]}" for f in rows]
        cols = [c.lstrip("#") for c in head]
        if "FID" in cols:
            fi, ii = cols.index("FID"), cols.index("IID")
            return [f"{f[fi]}_{f[ii]}" for f in rows[1:]]
        ii = cols.index("IID")
        return [f"{f[ii]}_{f[ii]}" for f in rows[1:]]
    if fmt == "bgen":
        if sample_file is not None:
            return [f"{f[0]}_{f[1]}" for f in _split_lines(sample_file)[2:]]
        ids = bgen_sample_ids(path)
        if ids is None:
            raise InputError(f"{path.name}: the BGEN has no embedded sample ids; give inputData.sampleFile")
        return ids
    if fmt == "vcf":
        import pysam

        with pysam.VariantFile(str(path)) as vf:
            return [f"{s}_{s}" for s in vf.header.samples]
    raise ValueError(fmt)


def _split_lines(path: Path) -> list[list[str]]:
    with open(path) as fh:
        return [line.split() for line in fh if line.strip()]


def check_sample_overlap(geno_keys: Sequence[str], table: Table, geno_label: str) -> int:
    """How many phenotyped samples are genotyped; none is an error that shows ids from both sides."""
    shared = set(geno_keys) & set(table.keys())
    if not shared:
        g = ", ".join(list(geno_keys)[:3])
        p = ", ".join(table.keys()[:3])
        raise InputError(
            f"no sample of {table.name} matches a sample of {geno_label} (genotype FID_IID e.g. {g}; "
            f"phenotype FID_IID e.g. {p}); check the FID/IID columns"
        )
    return len(shared)


def read_pred_list(path: Path, label: str) -> list[tuple[str, str]]:
    """(trait, loco path as written) rows of a step-1 `_pred.list`."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        f = line.split()
        if len(f) != 2:
            raise InputError(f"{label}: line {n} must have 2 fields (trait, .loco path), got {len(f)}")
        rows.append((f[0], f[1]))
    if not rows:
        raise InputError(f"{label}: empty prediction list")
    return rows


def write_pred_list(path: Path, rows: Sequence[tuple[str, Path]]) -> Path:
    """A `_pred.list` whose paths are absolute on this machine (where step 2 runs)."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("".join(f"{t} {Path(p).resolve()}\n" for t, p in rows))
    tmp.replace(path)
    return path
