"""metrics.csv, the benchmark's one output table (long format), and its headline view for the run's artifact.

One row per (engine, type, filter, metric): hap.py's summary metrics for small variants (hap.py or the local
engine), truvari's summary.json scalars for SVs. Counts are written as integers, ratios as floats, undefined
metrics as empty cells.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from genoflows.files import atomic_output
from genoflows.giab import small, sv
from genoflows.tools import happy, truvari

METRICS_COLUMNS = ["sample", "genome", "build", "engine", "type", "filter", "metric", "value"]
HEADLINE = {
    "small": ["METRIC.Recall", "METRIC.Precision", "METRIC.F1_Score", "TRUTH.TP", "TRUTH.FN", "QUERY.FP"],
    "sv": ["recall", "precision", "f1", "TP-base", "FN", "FP"],
}


def metrics_rows(
    sample_id: str, genome: str, build: str, small_result: small.SmallOutcome | None, sv_result: sv.SvResult | None
) -> list[dict]:
    """The long-format metrics table: one row per (engine, type, filter, metric)."""
    rows = []
    base = {"sample": sample_id, "genome": genome, "build": build}
    if small_result is not None:
        for r in small_result.rows:
            for metric in happy.METRIC_COLUMNS:
                if metric in r.values:
                    rows.append({**base, "engine": small_result.engine, "type": r.type, "filter": r.filter,
                                 "metric": metric, "value": r.values[metric]})
    if sv_result is not None:
        for flt, metrics in sv_result.metrics.items():
            for metric, value in metrics.items():
                rows.append({**base, "engine": sv.ENGINE_NAME, "type": "SV", "filter": flt, "metric": metric,
                             "value": value})
    return rows


def typed(metric: str, value: float | None) -> int | float | None:
    """Counts as integers, everything else as floats; None stays None (an undefined metric)."""
    if value is None:
        return None
    return int(value) if metric in happy.COUNT_COLUMNS or metric in truvari.COUNT_KEYS else float(value)


def write_metrics_csv(rows: list[dict], path: Path) -> Path:
    """metrics.csv (temp name, then rename); empty cells where a metric is undefined."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            value = typed(row["metric"], row["value"])
            writer.writerow({**row, "value": "" if value is None else repr(value)})
    return path


def headline_table(rows: list[dict]) -> list[dict]:
    """One row per (engine, type, filter) with the headline metrics, for the table artifact."""
    table: dict[tuple, dict] = {}
    for r in rows:
        if r["metric"] not in HEADLINE["sv" if r["type"] == "SV" else "small"]:
            continue
        key = (r["engine"], r["type"], r["filter"])
        value = typed(r["metric"], r["value"])
        entry = table.setdefault(key, {"engine": key[0], "type": key[1], "filter": key[2]})
        entry[r["metric"]] = "" if value is None else round(value, 4) if isinstance(value, float) else value
    return list(table.values())


def slug(text: str) -> str:
    """An artifact-key-safe form of a sample id (lower case, letters, digits and '-')."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "sample"
