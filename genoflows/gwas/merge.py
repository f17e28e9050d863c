"""Merge step-2 outputs: header once, bodies in unit order, chromosome codes mapped back to their names.

The merged text equals what one unsplit regenie run writes (byte for byte, before gzip); the `.gz` is
written with a fixed mtime so that equal content gives equal bytes.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path


class MergeError(RuntimeError):
    pass


def merge_text(parts: Sequence[Path], names: dict[str, str] | None = None) -> tuple[str, int]:
    """(merged text, number of rows) of regenie `.regenie` parts in the given order."""
    header: str | None = None
    body: list[str] = []
    rows = 0
    for part in parts:
        with open(part) as fh:
            first = fh.readline()
            if not first:
                raise MergeError(f"{part}: empty output (not even a header); rerun that chromosome")
            if header is None:
                header = first
            elif first != header:
                raise MergeError(f"{part}: header differs from the first part's; parts come from different runs")
            for line in fh:
                if names:
                    code, sep, rest = line.partition(" ")
                    line = f"{names.get(code, code)}{sep}{rest}"
                body.append(line)
                rows += 1
    if header is None:
        raise MergeError("no step-2 output to merge")
    return header + "".join(body), rows


def write_gz(text: str, dest: Path) -> Path:
    """Write gzip with mtime 0 via a temp name; rename only when complete."""
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.encode())
    tmp.replace(dest)
    return dest


def require_rows(trait: str, rows: int) -> None:
    """A trait with no tested variant must not end green (all filtered by minMAC/extract, or no samples)."""
    if rows == 0:
        raise MergeError(
            f"trait {trait}: step 2 tested no variant on any chromosome (all removed by --minMAC/--minINFO or the "
            "variant filters, or no sample with a value); check the filters and the trait's samples"
        )
