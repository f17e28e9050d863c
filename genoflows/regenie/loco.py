"""Reading step 1's outputs in step 2: ``<out>_pred.list`` and ``<out>_<i>.loco`` (regenie's formats).

``_pred.list``: one line per trait, ``<PHENO> <path>``, exactly two fields; a relative path is opened
relative to the current directory, as regenie does. ``.loco``: first line ``FID_IID`` then one key per
sample; then one line per chromosome ``<chr> <pred>...`` (``NA`` for masked samples).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genoflows.regenie.errors import RegenieError

__all__ = ["read_pred_list", "read_loco"]


def read_pred_list(path: str | Path, traits: list[str]) -> dict[str, Path]:
    """Map trait -> .loco path for the analysed ``traits``; every listed file must exist."""
    p = Path(path)
    if not p.is_file():
        raise RegenieError(f"could not open file given to --pred: {p}")
    out: dict[str, Path] = {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) != 2:
            raise RegenieError(f"--pred file {p} line {n}: expected 2 fields '<phenotype> <loco file>', got {len(f)}.")
        out[f[0]] = Path(f[1])
    for name, loco in out.items():
        if name in traits and not loco.is_file():
            raise RegenieError(
                f"could not open LOCO file {loco} listed for phenotype '{name}' in --pred {p} "
                "(rewrite the list when moving step-1 outputs)."
            )
    return out


def read_loco(path: Path, keys: np.ndarray, chrom: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The LOCO predictions of chromosome ``chrom`` for the samples ``keys`` (FID_IID) and a bool array of
    samples absent from the file (regenie masks those for the trait); None when the file has no such row.
    NaN where the file says NA."""
    try:
        with open(path) as fh:
            header = fh.readline().split()
            if not header or header[0] != "FID_IID":
                raise RegenieError(f"LOCO file {path} does not start with a 'FID_IID' header line.")
            ids = header[1:]
            prefix = f"{chrom} "
            for line in fh:
                if line.startswith(prefix):
                    vals = line.split()[1:]
                    break
            else:
                return None
    except UnicodeDecodeError as exc:
        raise RegenieError(f"LOCO file {path} is not text (gzip needs --gz builds): {exc}") from exc
    if len(vals) != len(ids):
        raise RegenieError(f"LOCO file {path}: chromosome {chrom} row has {len(vals)} values for {len(ids)} samples.")
    pos = {k: i for i, k in enumerate(ids)}
    idx = np.array([pos.get(k, -1) for k in keys], dtype=np.int64)
    try:
        arr = np.array([np.nan if v == "NA" else float(v) for v in vals])
    except ValueError as exc:
        raise RegenieError(f"LOCO file {path}: chromosome {chrom} row has a non-numeric value ({exc}).") from None
    absent = idx < 0
    return np.where(absent, 0.0, arr[np.maximum(idx, 0)]), absent
