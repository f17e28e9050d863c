"""Which chromosomes a genotype dataset holds, read from the data itself (never a hard-coded 1-22/X/Y).

Sources: `.bim`, `.pvar` (plain, `.gz`, `.zst`), BGEN (its `.bgi` SQLite index, else a scan of the variant
blocks), VCF/BCF (header contigs checked against the records). Names are kept exactly as written
(`NC_000067.7`, `chrZ`, `scaffold_1`); the order is the order of first appearance, which is the order
regenie writes its rows in, so per-chromosome outputs concatenate to an unsplit run.
"""

from __future__ import annotations

import gzip
import re
import sqlite3
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class GenotypeError(ValueError):
    """A genotype file that cannot be read or is inconsistent; the message names the file."""


@dataclass
class Chromosome:
    """One chromosome as found in the data: its name, variant count, positions (file order)."""

    name: str
    n_variants: int
    positions: np.ndarray

    @property
    def sorted(self) -> bool:
        return bool(np.all(np.diff(self.positions) >= 0))


# Names regenie reads and writes back unchanged. It also accepts `chr1`, `X`, `Y`, ... but prints them as
# integers (1, 23, ...), and refuses other names: any such name makes the pipeline recode every chromosome to
# 1..K and map the names back, so every output keeps the names of the input.
_REGENIE_NATIVE = re.compile(r"^([1-9]|1[0-9]|2[0-2])$")


def regenie_native(name: str) -> bool:
    return bool(_REGENIE_NATIVE.match(name))


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt")
    if path.suffix == ".zst":
        tmp = Path(tempfile.mkdtemp()) / path.stem
        subprocess.run(["plink2", "--zst-decompress", str(path), str(tmp)], check=True, capture_output=True)
        return open(tmp)
    return open(path)


def _records(rows: Iterable[tuple[str, int, str]]) -> tuple[list[str], list[int], list[str]]:
    chroms, pos, ids = [], [], []
    for c, p, i in rows:
        chroms.append(c)
        pos.append(p)
        ids.append(i)
    return chroms, pos, ids


def read_bim(path: Path) -> Iterator[tuple[str, int, str]]:
    with _open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            f = line.split()
            if not f:
                continue
            if len(f) != 6:
                raise GenotypeError(f"{path}: line {n} has {len(f)} columns, a .bim line has 6")
            yield f[0], _int(f[3], path, n), f[1]


def read_pvar(path: Path) -> Iterator[tuple[str, int, str]]:
    cols = None
    with _open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if line.startswith("##") or not line.strip():
                continue
            f = line.split()
            if line.startswith("#"):
                cols = {name.lstrip("#"): i for i, name in enumerate(f)}
                if not {"CHROM", "POS", "ID"} <= cols.keys():
                    raise GenotypeError(f"{path}: header needs #CHROM, POS and ID columns, got {line.strip()}")
                continue
            if cols is None:  # headerless .pvar = .bim column order
                cols = {"CHROM": 0, "ID": 1, "POS": 3}
            yield f[cols["CHROM"]], _int(f[cols["POS"]], path, n), f[cols["ID"]]


def read_bgen(path: Path) -> Iterator[tuple[str, int, str]]:
    """Variants of a BGEN file: from its `.bgi` index when present, else by walking the variant blocks."""
    bgi = Path(str(path) + ".bgi")
    if bgi.exists():
        try:
            with sqlite3.connect(f"file:{bgi}?mode=ro", uri=True) as db:
                rows = db.execute(
                    "SELECT chromosome, position, rsid FROM Variant ORDER BY file_start_position"
                ).fetchall()
            yield from ((str(c), int(p), str(r)) for c, p, r in rows)
            return
        except sqlite3.DatabaseError as exc:
            raise GenotypeError(f"{bgi}: not a readable BGEN index ({exc}); delete it to scan the BGEN") from exc
    yield from _scan_bgen(path)


def bgen_header(path: Path) -> tuple[int, int, int, int, list[str] | None]:
    """(offset of first variant, n variants, n samples, layout, embedded sample ids or None)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        if len(head) < 4:
            raise GenotypeError(f"{path}: too short to be a BGEN file")
        offset = struct.unpack("<I", head)[0]
        lh = struct.unpack("<I", fh.read(4))[0]
        m, n = struct.unpack("<II", fh.read(8))
        magic = fh.read(4)
        if magic not in (b"bgen", b"\x00\x00\x00\x00"):
            raise GenotypeError(f"{path}: not a BGEN file (magic {magic!r})")
        fh.seek(4 + lh - 4)
        flags = struct.unpack("<I", fh.read(4))[0]
        layout = (flags >> 2) & 0xF
        ids = None
        if flags >> 31:
            fh.seek(4 + lh)
            _block_len, count = struct.unpack("<II", fh.read(8))
            ids = []
            for _ in range(count):
                (ln,) = struct.unpack("<H", fh.read(2))
                ids.append(fh.read(ln).decode())
    return offset, m, n, layout, ids


def _scan_bgen(path: Path) -> Iterator[tuple[str, int, str]]:
    offset, m, _n, layout, _ids = bgen_header(path)
    if layout not in (1, 2):
        raise GenotypeError(f"{path}: BGEN layout {layout} is not supported (1 or 2)")
    with open(path, "rb") as fh:
        fh.seek(offset + 4)
        for k in range(m):
            try:
                if layout == 1:
                    fh.read(4)
                (ln,) = struct.unpack("<H", fh.read(2))
                fh.read(ln)
                (ln,) = struct.unpack("<H", fh.read(2))
                rsid = fh.read(ln).decode()
                (ln,) = struct.unpack("<H", fh.read(2))
                chrom = fh.read(ln).decode()
                (pos,) = struct.unpack("<I", fh.read(4))
                n_alleles = struct.unpack("<H", fh.read(2))[0] if layout == 2 else 2
                for _ in range(n_alleles):
                    (ln,) = struct.unpack("<I", fh.read(4))
                    fh.read(ln)
                (c,) = struct.unpack("<I", fh.read(4))
                fh.seek(c, 1)
            except struct.error as exc:
                raise GenotypeError(f"{path}: truncated at variant {k + 1} of {m}") from exc
            yield chrom, pos, rsid


def read_vcf(path: Path) -> Iterator[tuple[str, int, str]]:
    """VCF/BCF records; every record's contig must be declared in the header (a file that lies is refused)."""
    import pysam

    try:
        vf = pysam.VariantFile(str(path))
    except (OSError, ValueError) as exc:
        raise GenotypeError(f"{path}: not a readable VCF/BCF ({exc})") from exc
    with vf:
        declared = set(vf.header.contigs)
        if not declared:
            raise GenotypeError(f"{path}: the header declares no ##contig lines; add them (bcftools reheader)")
        try:
            for rec in vf:
                if rec.chrom not in declared:
                    raise GenotypeError(
                        f"{path}: record at {rec.chrom}:{rec.pos} is on a contig the header does not declare; "
                        "fix the header (bcftools reheader) so contigs and records agree"
                    )
                yield rec.chrom, rec.pos, rec.id or f"{rec.chrom}:{rec.pos}"
        except (OSError, ValueError) as exc:
            raise GenotypeError(f"{path}: unreadable record ({exc})") from exc


def _int(text: str, path: Path, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise GenotypeError(f"{path}: line {line}: position {text!r} is not an integer") from None


def variant_source(fmt: str, prefix: Path) -> Path:
    """The file that lists the variants for a format and local prefix/file."""
    if fmt == "bed":
        return _first(prefix, [".bim", ".bim.gz"])
    if fmt == "pgen":
        return _first(prefix, [".pvar", ".pvar.gz", ".pvar.zst", ".bim"])
    return prefix


def _first(prefix: Path, exts: list[str]) -> Path:
    for ext in exts:
        p = Path(str(prefix) + ext)
        if p.exists():
            return p
    raise GenotypeError(f"none of {', '.join(str(prefix) + e for e in exts)} exists")


def read_variants(fmt: str, path: Path) -> tuple[list[str], list[int], list[str]]:
    """(chromosomes, positions, ids) of every variant, in file order."""
    path = Path(path)
    if fmt == "bgen":
        rows = read_bgen(path)
    elif fmt == "vcf":
        rows = read_vcf(path)
    elif path.name.endswith((".bim", ".bim.gz")):
        rows = read_bim(path)
    else:
        rows = read_pvar(path)
    return _records(rows)


def detect_chromosomes(
    chroms: list[str], positions: list[int], ids: list[str], *, extract: set[str] | None = None,
    exclude: set[str] | None = None, source: str = "",
) -> tuple[list[Chromosome], list[str]]:
    """Chromosomes in order of first appearance with their variants after --extract/--exclude, and the names
    of chromosomes that have none left after those filters."""
    if not chroms:
        raise GenotypeError(f"{source}: no variants")
    keep = np.ones(len(chroms), dtype=bool)
    if extract is not None:
        keep &= np.fromiter((i in extract for i in ids), dtype=bool, count=len(ids))
    if exclude:
        keep &= np.fromiter((i not in exclude for i in ids), dtype=bool, count=len(ids))
    order: list[str] = []
    seen: dict[str, list[int]] = {}
    last = None
    for idx, c in enumerate(chroms):
        if c != last:
            if c in seen:
                raise GenotypeError(
                    f"{source}: chromosome {c!r} appears in more than one block; sort the variants by chromosome "
                    "(plink2 --sort-vars) so each chromosome is contiguous"
                )
            seen[c] = []
            order.append(c)
            last = c
        if keep[idx]:
            seen[c].append(positions[idx])
    found = [Chromosome(c, len(seen[c]), np.asarray(seen[c], dtype=np.int64)) for c in order if seen[c]]
    empty = [c for c in order if not seen[c]]
    return found, empty


def bgen_sample_ids(path: Path) -> list[str] | None:
    """Sample ids embedded in a BGEN header (regenie uses them verbatim as FID_IID), or None."""
    return bgen_header(path)[4]
