"""Writing files so that a final name only ever holds a complete file, and the one rule for safe names.

`atomic_output(dest, index=...)` hands out a unique hidden temp path next to `dest` (same file system, so the
rename is atomic; unique, so two writers never share one), optionally indexes it (tabix .tbi/.csi or faidx
.fai), then renames the data into place and its index after it (an index is never newer than other data).
On any error the temp file and its index are removed: nothing half-written survives.

`safe_name(value, what)` is the rule for sample ids, run ids and file names taken from manifests, servers or
users before they become path components.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

Index = Literal["tbi", "csi", "fai"]
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def safe_name(value: str, what: str = "name") -> str:
    """`value` unchanged if it is safe as one path component, else ValueError naming it and the rule.

    Safe: letters, digits, '.', '_' and '-', starting with a letter or digit, no '..', at most 200 characters
    (so no '/', no '..', no leading '-' that a tool would read as an option, no hidden files)."""
    if not isinstance(value, str) or not _SAFE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a safe name: use letters, digits, '.', '_' and '-' only, starting with a "
            f"letter or digit, without '..', at most 200 characters"
        )
    return value


def temp_path(dest: Path) -> Path:
    """A unique hidden name next to `dest` that keeps its suffixes (tools pick formats by suffix)."""
    dest = Path(dest)
    return dest.with_name(f".tmp-{uuid.uuid4().hex[:12]}.{dest.name}")


def _index_suffix(index: Index) -> str:
    return f".{index}"


def _build_index(path: Path, index: Index, final_name: str) -> Path:
    import pysam

    if index == "fai":
        pysam.faidx(str(path))
        return Path(f"{path}.fai")
    preset = "bed" if ".bed" in final_name else "vcf"
    out = pysam.tabix_index(str(path), preset=preset, force=True, keep_original=True, csi=index == "csi")
    return Path(out) if out and str(out).endswith(f".{index}") else Path(f"{path}.{index}")


@contextmanager
def atomic_output(dest: Path, *, index: Index | None = None) -> Iterator[Path]:
    """Yield a temp path to write `dest` into; on success index it (optional) and rename both into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    tmp_index = Path(f"{tmp}{_index_suffix(index)}") if index else None
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temp file for {dest}")
        if index:
            tmp_index = _build_index(tmp, index, dest.name)
        tmp.replace(dest)
        if index and tmp_index is not None:
            tmp_index.replace(Path(f"{dest}{_index_suffix(index)}"))
    finally:
        tmp.unlink(missing_ok=True)
        if tmp_index is not None:
            tmp_index.unlink(missing_ok=True)
