"""Streaming genotype readers for PLINK 1 BED, PLINK 2 PGEN and BGEN v1.2, oriented as regenie orients them.

One interface for the three formats (`open_genotypes`), so step 1 and step 2 never see the format:

* ``.samples``: DataFrame ``FID, IID, key`` in file order; ``key`` = ``FID_IID``, the string regenie matches on
  (for BGEN without ``--sample`` the embedded ID is the key verbatim).
* ``.variants``: DataFrame ``chrom`` (int, regenie's code: X/Y/XY/PAR1/PAR2 -> 23, ``chr`` stripped),
  ``chrom_label`` (as written), ``id``, ``pos``, ``allele1`` (the counted/effect allele), ``allele0``.
* ``.blocks(block_size, sample_index, variant_mask)``: per chromosome (blocks never span chromosomes, as
  regenie's), consecutive selected variants in chunks of ``block_size``; yields ``(variant_indices,
  dosages)`` where ``dosages`` is float64 samples x variants of ALLELE1 dosage with missing calls replaced by
  the variant's mean over ``sample_index`` (regenie's mean imputation). Only one block is held at a time.
* ``.raw_blocks(...)``: the same blocks with missing left as NaN and, for BGEN, the per-call dosage variance
  (for regenie's INFO), so step 2 can compute A1FREQ/N/INFO over each trait's own samples.

Orientation (regenie default, no ``--ref-first``): BED ``.bim`` column 5 = ALLELE1, column 6 = ALLELE0;
PGEN ALT = ALLELE1, REF = ALLELE0; BGEN first allele = ALLELE1, last allele = ALLELE0.
BED and PGEN are decoded by pgenlib (plink2's own reader); BGEN by cbgen, with variant offsets from the
``.bgi`` index (an SQLite file) or, without one, by walking the variant headers; either way every variant's
extent is checked against the file size first (cbgen crashes on a truncated file).
"""

from __future__ import annotations

import math
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genoflows.regenie.errors import RegenieError

__all__ = ["Genotypes", "RawBlock", "chrom_to_int", "open_genotypes", "mean_impute"]

_BED_MAGIC = b"\x6c\x1b\x01"


def chrom_to_int(label: str) -> int:
    """regenie's chrStrToInt: strip ``chr``, numbers as is, X/Y/XY/PAR1/PAR2 -> 23."""
    s = str(label)
    if s.lower().startswith("chr"):
        s = s[3:]
    if s.isdigit() and int(s) >= 1:
        return int(s)
    if s.upper() in {"X", "Y", "XY", "PAR1", "PAR2"}:
        return 23
    raise RegenieError(f"unknown chromosome code '{label}' in the genotype file.")


@dataclass
class RawBlock:
    """One block before imputation: ``dosages`` samples x variants (NaN = missing); ``dosage_var`` is the
    per-call variance E[g^2]-E[g]^2 (BGEN only, else None)."""

    indices: np.ndarray
    dosages: np.ndarray
    dosage_var: np.ndarray | None


def mean_impute(x: np.ndarray) -> np.ndarray:
    """Replace NaN by the column mean of the non-missing values, in place (regenie: missing -> mean)."""
    miss = np.isnan(x)
    if miss.any():
        cnt = (~miss).sum(axis=0)
        means = np.where(cnt > 0, np.nansum(x, axis=0) / np.maximum(cnt, 1), 0.0)
        rows, cols = np.nonzero(miss)
        x[rows, cols] = means[cols]
    return x


class Genotypes:
    """Base of the three readers; subclasses fill ``samples``/``variants`` and implement ``_read``."""

    kind: str = ""
    path: Path
    samples: pd.DataFrame
    variants: pd.DataFrame

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @property
    def n_variants(self) -> int:
        return len(self.variants)

    def close(self) -> None:
        """Release file handles."""

    def __enter__(self) -> Genotypes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, indices: np.ndarray, sample_index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def block_plan(self, block_size: int, variant_mask: np.ndarray | None = None) -> list[np.ndarray]:
        """Variant indices of each block: per chromosome in file order, ``block_size`` selected at a time."""
        if block_size < 1:
            raise RegenieError("must specify a block size >= 1 using '--bsize'.")
        chrom = self.variants["chrom"].to_numpy()
        sel = np.arange(self.n_variants) if variant_mask is None else np.flatnonzero(variant_mask)
        plan: list[np.ndarray] = []
        if sel.size == 0:
            return plan
        cuts = np.flatnonzero(np.diff(chrom[sel]) != 0) + 1
        for run in np.split(sel, cuts):
            for start in range(0, run.size, block_size):
                plan.append(run[start : start + block_size])
        return plan

    def read(self, indices: np.ndarray, sample_index: np.ndarray | None = None) -> RawBlock:
        """Read the given variants (missing = NaN) for ``sample_index`` (default: all samples)."""
        si = np.arange(self.n_samples) if sample_index is None else np.asarray(sample_index, dtype=np.int64)
        idx = np.asarray(indices, dtype=np.int64)
        dos, var = self._read(idx, si)
        return RawBlock(idx, dos, var)

    @property
    def dosage_mode(self) -> bool:
        """True when the file can hold dosages (regenie then writes an INFO column in step 2)."""
        return False

    def raw_blocks(
        self,
        block_size: int,
        sample_index: np.ndarray | None = None,
        variant_mask: np.ndarray | None = None,
    ) -> Iterator[RawBlock]:
        """Blocks with missing calls as NaN (see module docstring)."""
        si = np.arange(self.n_samples) if sample_index is None else np.asarray(sample_index, dtype=np.int64)
        for idx in self.block_plan(block_size, variant_mask):
            dos, var = self._read(idx, si)
            yield RawBlock(idx, dos, var)

    def blocks(
        self,
        block_size: int,
        sample_index: np.ndarray | None = None,
        variant_mask: np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(variant_indices, dosages)``, dosages samples x variants, missing mean-imputed."""
        for blk in self.raw_blocks(block_size, sample_index, variant_mask):
            yield blk.indices, mean_impute(blk.dosages)


# ---------------------------------------------------------------- PLINK 1 / PLINK 2 via pgenlib


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise RegenieError(f"could not open {what} file : {path}")
    return path


def _read_table(path: Path, names: list[str] | None, what: str, comment_header: bool = False) -> pd.DataFrame:
    try:
        if comment_header:
            # .pvar/.psam: skip '##' lines; the '#'-prefixed line is the header
            lines = path.read_text().splitlines()
            body = [ln for ln in lines if not ln.startswith("##")]
            if not body:
                raise RegenieError(f"{what} file {path} is empty.")
            header = body[0].lstrip("#").split()
            rows = [ln.split() for ln in body[1:] if ln.strip()]
            if any(len(r) != len(header) for r in rows):
                raise RegenieError(f"{what} file {path} has rows with a number of columns other than {len(header)}.")
            return pd.DataFrame(rows, columns=header, dtype=str)
        df = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, names=names, engine="c")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise RegenieError(f"could not read {what} file {path}: {exc}") from exc
    if names is not None and df.isna().any().any():
        raise RegenieError(f"{what} file {path} has rows with fewer than {len(names)} columns.")
    return df


def _variants_frame(chrom: pd.Series, vid: pd.Series, pos: pd.Series, a1: pd.Series, a0: pd.Series) -> pd.DataFrame:
    labels = chrom.astype(str).to_numpy()
    uniq = {lab: chrom_to_int(lab) for lab in pd.unique(labels)}
    return pd.DataFrame(
        {
            "chrom": np.array([uniq[x] for x in labels], dtype=np.int64),
            "chrom_label": labels,
            "id": vid.astype(str).to_numpy(),
            "pos": pd.to_numeric(pos).astype(np.int64).to_numpy(),
            "allele1": a1.astype(str).to_numpy(),
            "allele0": a0.astype(str).to_numpy(),
        }
    )


class _PgenlibGenotypes(Genotypes):
    """BED and PGEN share pgenlib; pgenlib counts ALT (.bim column 5 for BED), i.e. regenie's ALLELE1."""

    def _open_reader(self, path: Path, raw_sample_ct: int) -> None:
        import pgenlib

        try:
            self._reader = pgenlib.PgenReader(str(path).encode(), raw_sample_ct=raw_sample_ct)
        except RuntimeError as exc:
            raise RegenieError(f"could not read genotype file {path}: {str(exc).strip()}") from exc
        if self._reader.get_variant_ct() != self.n_variants:
            raise RegenieError(
                f"genotype file {path} holds {self._reader.get_variant_ct()} variants but the variant file "
                f"lists {self.n_variants}."
            )
        self._subset: np.ndarray | None = None
        if self.n_variants:  # pgenlib reads lazily: touch the last record now so truncation fails up front
            self._read(np.array([self.n_variants - 1]), np.arange(min(self.n_samples, 1)))

    def close(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
            self._reader = None

    def _read(self, indices: np.ndarray, sample_index: np.ndarray) -> tuple[np.ndarray, None]:
        # pgenlib reads a sorted subset; reorder afterwards if sample_index is not sorted
        order = np.argsort(sample_index, kind="stable")
        sorted_si = sample_index[order].astype(np.uint32)
        if self._subset is None or not np.array_equal(self._subset, sorted_si):
            if sorted_si.size == self.n_samples and np.array_equal(sorted_si, np.arange(self.n_samples)):
                self._reader.change_sample_subset(None)
            else:
                self._reader.change_sample_subset(sorted_si)
            self._subset = sorted_si
        buf = np.empty((indices.size, sorted_si.size), dtype=np.float64)
        contiguous = indices.size > 0 and indices[-1] - indices[0] + 1 == indices.size
        try:
            if contiguous:
                self._reader.read_dosages_range(int(indices[0]), int(indices[-1]) + 1, buf)
            else:
                self._reader.read_dosages_list(indices.astype(np.uint32), buf)
        except RuntimeError as exc:
            raise RegenieError(
                f"could not read variants {indices[0] + 1}-{indices[-1] + 1} of {self.path} "
                f"(file truncated or corrupt?): {str(exc).strip()}"
            ) from exc
        buf[buf == -9] = np.nan
        out = buf.T
        if not np.array_equal(order, np.arange(order.size)):
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            out = out[inv]
        return out, None  # samples x variants, Fortran order (no copy)


class BedGenotypes(_PgenlibGenotypes):
    kind = "bed"

    def __init__(self, prefix: str | Path):
        prefix = str(prefix)
        bed, bim, fam = (Path(prefix + ext) for ext in (".bed", ".bim", ".fam"))
        self.path = _need(bed, "bed")
        _need(bim, "bim")
        _need(fam, "fam")
        famdf = _read_table(fam, ["FID", "IID", "PAT", "MAT", "SEX", "PHENO"], "fam")
        bimdf = _read_table(bim, ["chrom", "id", "cm", "pos", "a1", "a0"], "bim")
        self.samples = _samples_frame(famdf["FID"], famdf["IID"])
        self.variants = _variants_frame(bimdf["chrom"], bimdf["id"], bimdf["pos"], bimdf["a1"], bimdf["a0"])
        with open(bed, "rb") as fh:
            magic = fh.read(3)
        if magic != _BED_MAGIC:
            raise RegenieError(f"{bed} is not a variant-major PLINK 1 .bed file (bad magic number).")
        expected = 3 + math.ceil(self.n_samples / 4) * self.n_variants
        size = bed.stat().st_size
        if size != expected:
            raise RegenieError(
                f"size of {bed} is {size} bytes but {fam.name} ({self.n_samples} samples) and {bim.name} "
                f"({self.n_variants} variants) imply {expected}: the files disagree or the .bed is truncated."
            )
        self._open_reader(bed, self.n_samples)


class PgenGenotypes(_PgenlibGenotypes):
    kind = "pgen"

    def __init__(self, prefix: str | Path):
        prefix = str(prefix)
        pgen, pvar, psam = (Path(prefix + ext) for ext in (".pgen", ".pvar", ".psam"))
        self.path = _need(pgen, "pgen")
        _need(pvar, "pvar")
        _need(psam, "psam")
        psamdf = _read_table(psam, None, "psam", comment_header=True)
        if "IID" not in psamdf.columns:
            raise RegenieError(f"psam file {psam} has no IID column.")
        fid = psamdf["FID"] if "FID" in psamdf.columns else psamdf["IID"]
        self.samples = _samples_frame(fid, psamdf["IID"])
        pvardf = _read_table(pvar, None, "pvar", comment_header=True)
        for col in ("CHROM", "POS", "ID", "REF", "ALT"):
            if col not in pvardf.columns:
                raise RegenieError(f"pvar file {pvar} has no {col} column.")
        if pvardf["ALT"].str.contains(",").any():
            raise RegenieError(f"pvar file {pvar} has multi-allelic variants; split them first.")
        self.variants = _variants_frame(pvardf["CHROM"], pvardf["ID"], pvardf["POS"], pvardf["ALT"], pvardf["REF"])
        self._open_reader(pgen, self.n_samples)
        self._dosage_mode = _pgen_dosage_present(pgen, self.n_variants)

    @property
    def dosage_mode(self) -> bool:
        return self._dosage_mode


def _pgen_dosage_present(pgen: Path, n_variants: int) -> bool:
    """plink2's DosagePresent(), from the .pgen header: fixed-width modes 0x03/0x04 carry dosages; in the
    variable-width mode (0x10/0x11) only 8-bit record types can, flagged by bits 5-6 of any record type."""
    with open(pgen, "rb") as fh:
        head = fh.read(12)
        if len(head) < 3:
            raise RegenieError(f"pgen file {pgen} is truncated.")
        mode = head[2]
        if mode in (0x02,):
            return False
        if mode in (0x03, 0x04):
            return True
        if len(head) < 12:
            raise RegenieError(f"pgen file {pgen} is truncated.")
        ctrl = head[11]
        if (ctrl & 0xF) < 4:
            return False  # 4-bit record types: hard calls only
        len_bytes = (ctrl & 3) + 1
        n_blocks = -(-n_variants // 65536)
        fh.seek(12 + 8 * n_blocks)
        for b in range(n_blocks):
            nv = min(65536, n_variants - b * 65536)
            vrtypes = fh.read(nv)
            if len(vrtypes) < nv:
                raise RegenieError(f"pgen file {pgen} is truncated.")
            if np.any(np.frombuffer(vrtypes, dtype=np.uint8) & 0x60):
                return True
            fh.seek(nv * len_bytes, 1)
            if (ctrl >> 4) & 3:
                return True  # allele-count storage present: multi-allelic file, be conservative
    return False


def _samples_frame(fid: pd.Series, iid: pd.Series) -> pd.DataFrame:
    fid = fid.astype(str).to_numpy()
    iid = iid.astype(str).to_numpy()
    df = pd.DataFrame({"FID": fid, "IID": iid})
    df["key"] = df["FID"] + "_" + df["IID"]
    if df["key"].duplicated().any():
        dup = df.loc[df["key"].duplicated(), "key"].iloc[0]
        raise RegenieError(f"duplicate sample ID {dup} in the genotype sample list.")
    return df


# ---------------------------------------------------------------- BGEN v1.2 via cbgen + .bgi


class BgenGenotypes(Genotypes):
    kind = "bgen"

    def __init__(self, path: str | Path, sample_file: str | Path | None = None, bgi: str | Path | None = None):
        import cbgen

        self.path = _need(Path(path), "bgen")
        self._check_header()
        try:
            self._bgen = cbgen.bgen_file(self.path)
        except RuntimeError as exc:
            raise RegenieError(f"could not read bgen file {self.path}: {exc}") from exc
        self.samples = self._read_sample_ids(sample_file)
        bgi_path = Path(bgi) if bgi else Path(str(self.path) + ".bgi")
        if bgi is not None:
            _need(bgi_path, "bgi")
        if bgi_path.is_file():
            self.variants, self._offsets = self._from_bgi(bgi_path)
        else:
            self.variants, self._offsets = self._from_scan()

    @property
    def dosage_mode(self) -> bool:
        return True

    def _check_header(self) -> None:
        with open(self.path, "rb") as fh:
            head = fh.read(24)
        if len(head) < 24:
            raise RegenieError(f"bgen file {self.path} is truncated (no header).")
        offset, hlen, nvar, nsamp = struct.unpack("<IIII", head[:16])
        flags = struct.unpack("<I", head[20:24])[0] if hlen >= 20 else 0
        layout = (flags >> 2) & 0xF
        if head[16:20] not in (b"bgen", b"\x00\x00\x00\x00"):
            raise RegenieError(f"{self.path} is not a bgen file (bad magic number).")
        if layout != 2:
            raise RegenieError(f"bgen file {self.path} uses layout {layout}; only BGEN v1.2 (layout 2) is supported.")
        self._flag_sample_ids = bool(flags >> 31)
        self._nvar, self._nsamp = nvar, nsamp
        if self.path.stat().st_size < offset + 4:
            raise RegenieError(f"bgen file {self.path} is truncated.")

    def _read_sample_ids(self, sample_file: str | Path | None) -> pd.DataFrame:
        if sample_file is not None:
            sp = _need(Path(sample_file), "sample")
            lines = [ln.split() for ln in sp.read_text().splitlines() if ln.strip()]
            if len(lines) < 2 or lines[0][:2] != ["ID_1", "ID_2"]:
                raise RegenieError(f"sample file {sp} must start with a header 'ID_1 ID_2 ...' and a type line.")
            rows = lines[2:]
            if len(rows) != self._bgen.nsamples:
                raise RegenieError(
                    f"sample file {sp} lists {len(rows)} samples but bgen file {self.path} has {self._bgen.nsamples}."
                )
            return _samples_frame(pd.Series([r[0] for r in rows]), pd.Series([r[1] for r in rows]))
        if not self._bgen.contain_samples:
            raise RegenieError(f"bgen file {self.path} has no sample identifiers: use --sample.")
        ids = [s.decode() for s in self._bgen.read_samples()]
        split = [s.split("_", 1) if "_" in s else [s, s] for s in ids]
        df = pd.DataFrame({"FID": [a for a, _ in split], "IID": [b for _, b in split]})
        df["key"] = ids
        if df["key"].duplicated().any():
            raise RegenieError(f"duplicate sample ID in bgen file {self.path}.")
        return df

    def _from_bgi(self, bgi: Path) -> tuple[pd.DataFrame, np.ndarray]:
        try:
            con = sqlite3.connect(f"file:{bgi}?mode=ro", uri=True)
            rows = con.execute("SELECT file_start_position FROM Variant ORDER BY file_start_position").fetchall()
            con.close()
        except sqlite3.DatabaseError as exc:
            raise RegenieError(f"could not read bgen index file {bgi}: {exc}") from exc
        if len(rows) != self._nvar:
            raise RegenieError(f"index {bgi} lists {len(rows)} variants but {self.path} holds {self._nvar}: rebuild the .bgi.")
        return self._scan([int(r[0]) for r in rows])

    def _from_scan(self) -> tuple[pd.DataFrame, np.ndarray]:
        return self._scan(None)

    def _scan(self, starts: list[int] | None) -> tuple[pd.DataFrame, np.ndarray]:
        """Read each variant's identifying block (at the .bgi's offsets, or walking the file when there is
        no index) and check that its genotype block lies inside the file: a truncated file fails here,
        naming the variant, instead of inside the decoder."""
        size = self.path.stat().st_size
        cols: dict[str, list] = {"chrom": [], "pos": [], "id": [], "a1": [], "a0": []}
        offsets = np.empty(self._nvar, dtype=np.int64)
        with open(self.path, "rb") as fh:
            fh.seek(0)
            nxt = struct.unpack("<I", fh.read(4))[0] + 4
            for i in range(self._nvar):
                pos0 = starts[i] if starts is not None else nxt
                fh.seek(pos0)

                def need(n: int, _i: int = i) -> bytes:
                    raw = fh.read(n)
                    if len(raw) < n:
                        raise RegenieError(f"bgen file {self.path} is truncated (variant {_i + 1} of {self._nvar}).")
                    return raw

                fields = []
                for _ in range(3):  # variant id, rsid, chromosome
                    n = struct.unpack("<H", need(2))[0]
                    fields.append(need(n).decode(errors="replace"))
                bp, k = struct.unpack("<IH", need(6))
                if k != 2:
                    raise RegenieError(f"bgen file {self.path} has a variant with {k} alleles; only bi-allelic variants are supported.")
                alleles = []
                for _ in range(k):
                    n = struct.unpack("<I", need(4))[0]
                    alleles.append(need(n).decode(errors="replace"))
                geno_at = fh.tell()
                c = struct.unpack("<I", need(4))[0]
                if geno_at + 4 + c > size:
                    raise RegenieError(f"bgen file {self.path} is truncated (variant {i + 1} of {self._nvar}).")
                nxt = geno_at + 4 + c
                offsets[i] = geno_at
                cols["id"].append(fields[1])
                cols["chrom"].append(fields[2])
                cols["pos"].append(bp)
                cols["a1"].append(alleles[0])
                cols["a0"].append(alleles[1])
        df = _variants_frame(pd.Series(cols["chrom"]), pd.Series(cols["id"]), pd.Series(cols["pos"]),
                             pd.Series(cols["a1"]), pd.Series(cols["a0"]))
        return df, offsets

    def close(self) -> None:
        if getattr(self, "_bgen", None) is not None:
            self._bgen.close()
            self._bgen = None

    def _read(self, indices: np.ndarray, sample_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dos = np.empty((sample_index.size, indices.size), dtype=np.float64)
        var = np.empty_like(dos)
        for j, v in enumerate(indices):
            try:
                g = self._bgen.read_genotype(int(self._offsets[v]))
            except RuntimeError as exc:
                raise RegenieError(f"could not read variant {self.variants['id'].iat[v]} of {self.path}: {exc}") from exc
            p = g.probability[sample_index]
            if g.phased:
                d = p[:, 0] + p[:, 2]
                e2 = p[:, 0] * (1 - p[:, 2]) + p[:, 2] * (1 - p[:, 0]) + 4 * p[:, 0] * p[:, 2]
            else:
                d = 2 * p[:, 0] + p[:, 1]
                e2 = 4 * p[:, 0] + p[:, 1]
            miss = g.missing[sample_index]
            d = np.where(miss, np.nan, d)
            dos[:, j] = d
            var[:, j] = np.where(miss, np.nan, e2 - d * d)
        return dos, var


def open_genotypes(kind: str, prefix_or_path: str | Path, sample_file: str | Path | None = None,
                   bgi: str | Path | None = None) -> Genotypes:
    """Open ``--bed PFX`` / ``--pgen PFX`` / ``--bgen FILE`` (with optional ``--sample`` / ``--bgi``)."""
    if kind == "bed":
        return BedGenotypes(prefix_or_path)
    if kind == "pgen":
        return PgenGenotypes(prefix_or_path)
    if kind == "bgen":
        return BgenGenotypes(prefix_or_path, sample_file, bgi)
    raise RegenieError(f"unknown genotype format '{kind}' (use --bed, --pgen or --bgen).")
