"""hap.py (Illumina, v0.3.15): command line and the summary.csv format.

hap.py is Python 2 and only ships as Bioconda/Docker (docs/giab-benchmarking.md, "hap.py"), so it runs from PATH or a configured
image (`GENOFLOWS_TOOL_IMAGES='{"hap.py": "jmcdani20/hap.py:v0.3.12"}'`). The local engine writes the same
summary.csv (`write_summary`), so everything downstream reads one format through `parse_summary`.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

TOOL = "hap.py"

# qfy.py `summary_columns` in v0.3.15, in order (docs/giab-benchmarking.md). Older hap.py lacks FP.al / METRIC.F1_Score.
SUMMARY_COLUMNS = [
    "Type",
    "Filter",
    "TRUTH.TOTAL",
    "TRUTH.TP",
    "TRUTH.FN",
    "QUERY.TOTAL",
    "QUERY.FP",
    "QUERY.UNK",
    "FP.gt",
    "FP.al",
    "METRIC.Recall",
    "METRIC.Precision",
    "METRIC.Frac_NA",
    "METRIC.F1_Score",
    "TRUTH.TOTAL.TiTv_ratio",
    "QUERY.TOTAL.TiTv_ratio",
    "TRUTH.TOTAL.het_hom_ratio",
    "QUERY.TOTAL.het_hom_ratio",
]
METRIC_COLUMNS = SUMMARY_COLUMNS[2:]
COUNT_COLUMNS = {"TRUTH.TOTAL", "TRUTH.TP", "TRUTH.FN", "QUERY.TOTAL", "QUERY.FP", "QUERY.UNK", "FP.gt", "FP.al"}
# happyroc.py sorts by Type, Subtype, Subset, Filter: the summary rows come out in this order.
ROW_ORDER = [("INDEL", "ALL"), ("INDEL", "PASS"), ("SNP", "ALL"), ("SNP", "PASS")]


class SummaryFormatError(ValueError):
    """A summary.csv without the columns hap.py always writes."""


@dataclass
class SummaryRow:
    """One (Type, Filter) row; metric values are None where hap.py leaves the cell empty (NaN)."""

    type: str
    filter: str
    values: dict[str, float | None] = field(default_factory=dict)


def happy_argv(
    truth: Path,
    query: Path,
    reference: Path,
    confident_bed: Path | None,
    prefix: Path,
    *,
    engine: str = "xcmp",
    threads: int | None = None,
    pass_only: bool = False,
    extra: list[str] | None = None,
) -> list[str]:
    """`hap.py TRUTH QUERY -r REF -f CONF -o PREFIX --engine E --threads N` (docs/giab-benchmarking.md, "hap.py").

    `-f` confident regions are applied after matching (outside -> UNK), unlike -R/-T. The query has already
    been converted from gVCF and its contigs renamed, so --convert-gvcf-query and --fixchr are not needed.
    """
    argv = [TOOL, str(truth), str(query), "-r", str(reference)]
    if confident_bed is not None:
        argv += ["-f", str(confident_bed)]
    argv += ["-o", str(prefix), "--engine", engine, "--threads", str(threads or os.cpu_count() or 1)]
    if pass_only:
        argv.append("--pass-only")
    return argv + list(extra or [])


def summary_path(prefix: Path) -> Path:
    """hap.py writes `<prefix>.summary.csv`."""
    return Path(f"{prefix}.summary.csv")


def output_paths(prefix: Path) -> list[Path]:
    """The files hap.py writes for `-o prefix` that exist (summary, extended, metrics, runinfo, VCF, ROCs)."""
    parent, stem = Path(prefix).parent, Path(prefix).name
    return sorted(p for p in parent.glob(f"{stem}.*") if p.is_file())


def _number(text: str) -> float | None:
    text = text.strip()
    if text in ("", ".", "NA", "nan", "NaN", "inf", "-inf"):
        return None
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value


def parse_summary(path: Path) -> list[SummaryRow]:
    """Rows of a hap.py summary.csv, read by header name (older hap.py versions order columns differently)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("Type", "Filter", "TRUTH.TP", "TRUTH.FN", "QUERY.FP") if c not in header]
        if missing:
            raise SummaryFormatError(f"{path}: not a hap.py summary.csv, missing columns {missing} (has {header})")
        rows = []
        for rec in reader:
            values = {c: _number(rec[c]) for c in METRIC_COLUMNS if c in rec and rec[c] is not None}
            rows.append(SummaryRow(rec["Type"], rec["Filter"], values))
    return rows


def _cell(column: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return ""
    if column in COUNT_COLUMNS:
        return str(int(value))
    return repr(float(value))


def write_summary(rows: list[SummaryRow], path: Path) -> Path:
    """Write rows as hap.py's summary.csv: the exact 18 columns, rows in hap.py's order, NaN as empty."""
    order = {key: i for i, key in enumerate(ROW_ORDER)}
    rows = sorted(rows, key=lambda r: (order.get((r.type, r.filter), len(order)), r.type, r.filter))
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(SUMMARY_COLUMNS)
        for r in rows:
            writer.writerow([r.type, r.filter, *(_cell(c, r.values.get(c)) for c in METRIC_COLUMNS)])
    tmp.replace(path)
    return Path(path)
