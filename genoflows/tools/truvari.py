"""truvari (ACEnglish/truvari, 5.x): `truvari bench` command line and its summary.json.

truvari installs with pip into the project venv; the tool runner finds it there even when the venv is not
activated (`genoflows.toolrun.which`).
"""

from __future__ import annotations

import json
from pathlib import Path

TOOL = "truvari"
# StatsBox keys in truvari/bench.py order (docs/giab-benchmarking.md, "truvari"); gt_matrix is nested and left out of the metrics.
SCALAR_KEYS = [
    "TP-base",
    "TP-comp",
    "FP",
    "FN",
    "precision",
    "recall",
    "f1",
    "base cnt",
    "comp cnt",
    "TP-comp_TP-gt",
    "TP-comp_FP-gt",
    "TP-base_TP-gt",
    "TP-base_FP-gt",
    "gt_concordance",
]
COUNT_KEYS = {"TP-base", "TP-comp", "FP", "FN", "base cnt", "comp cnt", "TP-comp_TP-gt", "TP-comp_FP-gt",
              "TP-base_TP-gt", "TP-base_FP-gt"}


class TruvariSummaryError(ValueError):
    """summary.json is missing or lacks the keys truvari always writes."""


def bench_argv(
    base: Path,
    comp: Path,
    out_dir: Path,
    *,
    reference: Path | None = None,
    includebed: Path | None = None,
    passonly: bool = False,
    extra: list[str] | None = None,
) -> list[str]:
    """`truvari bench -b BASE -c COMP -o OUT [-f REF] [--includebed BED] [--passonly]`.

    Inputs must be bgzipped and indexed; OUT must not exist (truvari refuses with exit code 100).
    `-f` is only needed for symbolic alleles, but harmless otherwise.
    """
    argv = [TOOL, "bench", "-b", str(base), "-c", str(comp), "-o", str(out_dir)]
    if reference is not None:
        argv += ["-f", str(reference)]
    if includebed is not None:
        argv += ["--includebed", str(includebed)]
    if passonly:
        argv.append("--passonly")
    return argv + list(extra or [])


def parse_summary(path: Path) -> dict[str, float | None]:
    """The scalar metrics of a truvari summary.json (None where truvari wrote null, e.g. no calls)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TruvariSummaryError(f"{path}: truvari wrote no summary.json; see log.txt next to it") from None
    missing = [k for k in ("TP-base", "FP", "FN") if k not in data]
    if missing:
        raise TruvariSummaryError(f"{path}: not a truvari bench summary, missing {missing}")
    return {k: (None if data.get(k) is None else float(data[k])) for k in SCALAR_KEYS if k in data}
