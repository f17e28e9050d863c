"""Step-2 work units: one per chromosome, or `--range` chunks for chromosomes above a variant count.

Chunks never split variants that share a position, and follow file order, so the chunk outputs concatenated
are the chromosome's unsplit output byte for byte. A chromosome whose positions are not sorted is not split
(a range would reorder its rows); the plan says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from genoflows.gwas.chromosomes import Chromosome, regenie_native


@dataclass(frozen=True)
class Unit:
    """One step-2 job."""

    chrom: str  # name as in the data (kept in outputs)
    code: str  # what regenie is given (the name, or an integer code for non-human names)
    part: int  # 0 = whole chromosome; 1.. = chunk number
    n_parts: int
    region: tuple[int, int] | None  # inclusive positions for --range
    n_variants: int

    @property
    def key(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.chrom)
        return f"chr{safe}" if self.part == 0 else f"chr{safe}.part{self.part:03d}of{self.n_parts:03d}"


def chromosome_codes(chromosomes: list[Chromosome]) -> dict[str, str]:
    """name -> regenie code: unchanged when regenie understands every name, else 1..K in file order."""
    names = [c.name for c in chromosomes]
    if all(regenie_native(n) for n in names):
        return {n: n for n in names}
    return {n: str(i) for i, n in enumerate(names, 1)}


def chunk_ranges(positions: np.ndarray, max_variants: int) -> list[tuple[int, int, int]]:
    """(first pos, last pos, n variants) chunks of at most ~max_variants, never splitting a position."""
    n = len(positions)
    if n <= max_variants:
        return [(int(positions[0]), int(positions[-1]), n)]
    out, start = [], 0
    while start < n:
        end = min(start + max_variants, n)  # exclusive
        while end < n and positions[end] == positions[end - 1]:
            end += 1
        out.append((int(positions[start]), int(positions[end - 1]), end - start))
        start = end
    return out


def plan_units(chromosomes: list[Chromosome], codes: dict[str, str], max_variants: int) -> tuple[list[Unit], list[str]]:
    """The step-2 units and notes (why a big chromosome was not split)."""
    units, notes = [], []
    for c in chromosomes:
        if c.n_variants > max_variants and not c.sorted:
            notes.append(f"chromosome {c.name} is not sorted by position: run whole, not in --range chunks")
        if c.n_variants <= max_variants or not c.sorted:
            units.append(Unit(c.name, codes[c.name], 0, 1, None, c.n_variants))
            continue
        chunks = chunk_ranges(c.positions, max_variants)
        for i, (lo, hi, k) in enumerate(chunks, 1):
            units.append(Unit(c.name, codes[c.name], i, len(chunks), (lo, hi), k))
    return units, notes
