"""Shared helpers for the regenie engine tests: where regenie's example data and v4.1.2 outputs live, running
the CLI in-process, and comparing a ``.regenie`` file with regenie's own within the issue's tolerances."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from genoflows.regenie.cli import main

# CI has shared/ beside the clone; a worktree elsewhere can point GENOFLOWS_SHARED_DIR at it. Missing data
# fails the tests (a skipped golden comparison would pass silently).
_SHARED = Path(os.environ.get("GENOFLOWS_SHARED_DIR") or Path(__file__).parents[1] / ".." / "shared")
EXAMPLE = (_SHARED / "testdata" / "regenie-example").resolve()
GOLDEN = EXAMPLE / "golden"


def _require_example() -> None:
    assert GOLDEN.is_dir(), f"regenie example data not found at {EXAMPLE} (set GENOFLOWS_SHARED_DIR)"


needs_example = pytest.mark.usefixtures("regenie_example")


@pytest.fixture
def regenie_example() -> Path:
    _require_example()
    return EXAMPLE

REL_TOL = 1e-3  # BETA/SE/CHISQ/LOG10P, relative (issue 8)


def run_cli(args: list[str], monkeypatch, cwd: Path = EXAMPLE) -> int:
    """Run ``genoflows-regenie`` in this process from ``cwd`` (regenie's _pred.list paths are relative to it)."""
    monkeypatch.chdir(cwd)
    return main([str(a) for a in args])


def read_regenie(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split(" "), [ln.split(" ") for ln in lines[1:]]


def compare_regenie(mine: Path, gold: Path) -> dict[str, float]:
    """Assert same header, same rows (variant columns, A1FREQ, INFO, N, TEST, EXTRA exact) and BETA/SE/CHISQ/
    LOG10P within REL_TOL; return the largest relative deviation per column."""
    h1, r1 = read_regenie(mine)
    h2, r2 = read_regenie(gold)
    assert h1 == h2, f"header differs: {h1} vs {h2}"
    assert len(r1) == len(r2), f"{mine.name}: {len(r1)} rows, regenie wrote {len(r2)}"
    exact = [c for c in h2 if c not in ("BETA", "SE", "CHISQ", "LOG10P")]
    worst = {c: 0.0 for c in ("BETA", "SE", "CHISQ", "LOG10P")}
    for a, b in zip(r1, r2, strict=True):
        ra, rb = dict(zip(h1, a, strict=True)), dict(zip(h2, b, strict=True))
        for c in exact:
            assert ra[c] == rb[c], f"{mine.name} {rb['ID']} {c}: {ra[c]} != {rb[c]}"
        for c in worst:
            if rb[c] == "NA" or ra[c] == "NA":
                assert ra[c] == rb[c], f"{mine.name} {rb['ID']} {c}: {ra[c]} != {rb[c]}"
                continue
            x, y = float(ra[c]), float(rb[c])
            rel = abs(x - y) / max(abs(y), 1e-300) if y != 0 else abs(x)
            worst[c] = max(worst[c], rel)
            assert math.isclose(x, y, rel_tol=REL_TOL, abs_tol=1e-12), f"{mine.name} {rb['ID']} {c}: {x} vs {y}"
    return worst
