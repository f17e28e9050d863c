"""Confident regions: a BED read strictly (line numbers in errors), merged per contig, asked column-wise.

hap.py's `-f` applies the regions after matching: a truth variant outside them is ignored and a query call
outside them is UNK. What must lie inside is the variant's trimmed span (`confident_span`).
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from pathlib import Path

import numpy as np

from genoflows.giab.query import InputError


def confident_span(pos: int, ref: str, alt: str) -> tuple[int, int]:
    """0-based half-open reference span that must lie inside a confident region (hap.py trims alleles first).

    Substitutions: their bases. Deletions: the deleted bases (not the padding base). Insertions: both bases
    flanking the insertion point, as hap.py requires.
    """
    if len(ref) == len(alt):
        return pos - 1, pos - 1 + len(ref)
    if len(ref) == 1 and alt[0] == ref:  # insertion after the padding base
        return pos - 1, pos + 1
    if len(alt) == 1 and ref[0] == alt:  # deletion after the padding base
        return pos, pos - 1 + len(ref)
    return pos - 1, pos - 1 + len(ref)


def confident_spans(pos: np.ndarray, ref_len: np.ndarray, alt_len: np.ndarray, ref0: np.ndarray, alt0: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """`confident_span` for whole columns: positions, allele lengths and first bases of normalised records."""
    start = pos - 1
    end = pos - 1 + ref_len
    ins = (ref_len != alt_len) & (ref_len == 1) & (alt0 == ref0)
    dele = (ref_len != alt_len) & ~ins & (alt_len == 1) & (ref0 == alt0)
    end = np.where(ins, pos + 1, end)
    start = np.where(dele, pos, start)
    return start, end


def read_bed(bed: Path, name: str | None = None) -> dict[str, list[tuple[int, int]]]:
    """Intervals per contig of a BED (plain or gzipped). A line that is not `chrom start end` with integers
    0 <= start <= end stops with InputError naming the file (`name`, else its file name) and the line number."""
    shown = name or Path(bed).name
    intervals: dict[str, list[tuple[int, int]]] = defaultdict(list)
    opener = gzip.open if str(bed).endswith(".gz") else open
    with opener(bed, "rt") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            parts = line.rstrip("\r\n").split("\t")
            try:
                start, end = int(parts[1]), int(parts[2])
            except (IndexError, ValueError):
                raise InputError(
                    f"BED {shown} line {n} is not `chrom<TAB>start<TAB>end` with integer positions: "
                    f"{line.strip()[:80]!r}; fix or remove the line"
                ) from None
            if start < 0 or start > end:
                why = "a negative start" if start < 0 else f"start {start:,} after end {end:,}"
                raise InputError(
                    f"BED {shown} line {n} has {why} ({line.strip()[:80]!r}); BED intervals are 0-based, half-open "
                    f"[start, end): fix or remove the line"
                )
            intervals[parts[0]].append((start, end))
    return intervals


class Regions:
    """Merged confident intervals per contig; `contains` asks whether spans lie inside one interval."""

    def __init__(self, intervals: dict[str, list[tuple[int, int]]]):
        self._starts: dict[str, np.ndarray] = {}
        self._ends: dict[str, np.ndarray] = {}
        for chrom, ivs in intervals.items():
            merged: list[list[int]] = []
            for s, e in sorted(ivs):
                if merged and s <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], e)
                else:
                    merged.append([s, e])
            self._starts[chrom] = np.array([m[0] for m in merged], dtype=np.int64)
            self._ends[chrom] = np.array([m[1] for m in merged], dtype=np.int64)

    @classmethod
    def from_bed(cls, bed: Path, name: str | None = None, rename: dict[str, str] | None = None) -> Regions:
        """The regions of a BED, validated line by line; `rename` maps its contig names to the reference's."""
        intervals = read_bed(bed, name)
        if rename:
            renamed: dict[str, list[tuple[int, int]]] = defaultdict(list)
            for chrom, ivs in intervals.items():
                renamed[rename.get(chrom, chrom)] += ivs
            intervals = renamed
        return cls(intervals)

    def contains(self, chrom: str, start: int, end: int) -> bool:
        return bool(self.contains_all(chrom, np.array([start]), np.array([end]))[0])

    def contains_all(self, chrom: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Boolean mask: span i lies inside one merged interval (merged intervals never touch, so one suffices)."""
        ivs = self._starts.get(chrom)
        if ivs is None or len(ivs) == 0:
            return np.zeros(len(starts), dtype=bool)
        i = np.searchsorted(ivs, starts, side="right") - 1
        ok = i >= 0
        return ok & (ends <= self._ends[chrom][np.maximum(i, 0)])


class Everywhere(Regions):
    """No BED given: every span counts as confident."""

    def __init__(self) -> None:
        super().__init__({})

    def contains_all(self, chrom: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return np.ones(len(starts), dtype=bool)
