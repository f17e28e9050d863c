"""Matching and counting of normalised calls, column-wise: the core of the local small-variant engine.

`bcftools query` prints the fields of both sides (CHROM, POS, REF>ALT, FILTER, GT); pandas parses them into
categories, so every distinct allele, genotype and filter string is looked at once and each record becomes a few
integers. Per contig, numpy joins the sides on (pos, allele), places them against the confident regions and the
truth spans with `searchsorted`, and every count of hap.py's summary is a sum over a boolean mask. No Python object
per record, and memory holds one contig at a time (the FN/FP listing is written contig by contig).

The rules (GA4GH, hap.py's defaults; see docs/giab-local-engine.md):
- same allele and genotype -> TP; same allele, other genotype -> truth FN + query FP counted as FP.gt; no allele
  match -> FN / FP, the FP counted as FP.al when its REF span overlaps a truth record;
- only PASS/`.` truth records take part; the query is counted twice, all records (ALL) and PASS/`.` ones (PASS);
- confident regions apply after matching: truth outside is ignored, query outside is UNK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from genoflows.giab.regions import Regions
from genoflows.toolrun import run_tool
from genoflows.tools import bcftools

Log = Callable[[str], None]
SNP, INDEL = "SNP", "INDEL"
FILTERS = ("ALL", "PASS")
DETAIL_COLUMNS = ("chrom", "pos", "ref", "alt", "type", "side", "decision", "mismatch", "query_filter")
_TRANSITIONS = {"AG", "GA", "CT", "TC"}


@dataclass
class Counts:
    """Everything hap.py's summary row needs, for one (type, filter)."""

    truth_total: int = 0
    truth_tp: int = 0
    truth_fn: int = 0
    query_total: int = 0
    query_tp: int = 0
    query_fp: int = 0
    query_unk: int = 0
    fp_gt: int = 0
    fp_al: int = 0
    truth_ti: int = 0
    truth_tv: int = 0
    truth_het: int = 0
    truth_homalt: int = 0
    query_ti: int = 0
    query_tv: int = 0
    query_het: int = 0
    query_homalt: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def variant_type(ref: str, alt: str) -> str:
    """SNP for a single-base substitution; everything else (indels, complex, leftover MNPs) counts as INDEL."""
    return SNP if len(ref) == 1 and len(alt) == 1 else INDEL


# --- reading ------------------------------------------------------------------------------------------------

QUERY_FORMAT = "%CHROM\\t%POS\\t%REF>%ALT\\t%FILTER\\t[%GT]\\n"  # REF never holds '>', so the first '>' splits
_ALLELE_BITS = 34  # key = pos << 34 | allele code: positions below 2**29, allele codes below 2**34
_CHUNK_ROWS = 2_000_000


class Alleles:
    """Every distinct `REF>ALT` seen, upper-cased, with a code; what the counting needs is computed once per
    distinct allele (a genome has a few hundred thousand), never per record."""

    _FIELDS = ("small", "snp", "ti", "ref_len", "ins", "del")

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.text: list[str] = []
        self._props: dict[str, list] = {f: [] for f in self._FIELDS}
        self._table: dict[str, np.ndarray] = {}

    def codes(self, categories: Iterable[str]) -> np.ndarray:
        """The code of each allele string (new ones are added)."""
        texts = list(categories)
        joined = "\n".join(texts)
        if joined.upper() != joined:  # rare: soft-masked (lower-case) alleles
            texts = [t.upper() for t in texts]
        get = self.code.get
        out = [get(t) for t in texts]
        for i, code in enumerate(out):
            if code is None:
                text = texts[i]
                code = self.code.get(text)
                if code is None:
                    code = self.code[text] = len(self.text)
                    self.text.append(text)
                    self._describe(text)
                out[i] = code
        return np.array(out, dtype=np.int64)

    def _describe(self, text: str) -> None:
        ref, alt = text.split(">", 1)
        snp = len(ref) == 1 and len(alt) == 1
        indel = len(ref) != len(alt) and bool(ref) and bool(alt)
        ins = indel and len(ref) == 1 and alt[0] == ref
        props = self._props
        props["small"].append(alt not in (".", "") and not any(ch in alt for ch in ",<>[]*"))
        props["snp"].append(snp)
        props["ti"].append(snp and ref + alt in _TRANSITIONS)
        props["ref_len"].append(len(ref))
        props["ins"].append(ins)
        props["del"].append(indel and not ins and len(alt) == 1 and ref[0] == alt)

    def table(self) -> dict[str, np.ndarray]:
        """Per code: small (a plain biallelic sequence change), snp, transition, REF length, insertion, deletion."""
        if len(self._table.get("snp", ())) != len(self.text):
            self._table = {f: np.array(v, dtype=np.int64 if f == "ref_len" else bool) for f, v in self._props.items()}
        return self._table

    def split(self, codes: np.ndarray) -> tuple[list[str], list[str]]:
        pairs = [self.text[c].split(">", 1) for c in codes.tolist()]
        return [p[0] for p in pairs], [p[1] for p in pairs]


@dataclass
class Calls:
    """Normalised calls of one contig carrying the ALT allele, one per (pos, allele), in file order."""

    pos: np.ndarray
    allele: np.ndarray
    alt_count: np.ndarray
    ploidy: np.ndarray
    passed: np.ndarray

    def __len__(self) -> int:
        return len(self.pos)

    def take(self, sel: np.ndarray) -> Calls:
        return Calls(self.pos[sel], self.allele[sel], self.alt_count[sel], self.ploidy[sel], self.passed[sel])

    @property
    def key(self) -> np.ndarray:
        return (self.pos << _ALLELE_BITS) | self.allele

    @classmethod
    def concat(cls, parts: list[Calls]) -> Calls:
        if not parts:
            return empty_calls()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("pos", "allele", "alt_count", "ploidy",
                                                                             "passed")))


def empty_calls() -> Calls:
    z = np.zeros(0, np.int64)
    return Calls(z, z, z, z, np.zeros(0, bool))


def _gt_slots(gt: str) -> tuple[int, int]:
    """(bit mask of the genotype slots carrying allele 1, ploidy) of a GT string: 0/1 -> (0b10, 2), 1|0 -> (0b01, 2),
    1/1 -> (0b11, 2), 1 -> (0b1, 1), ./1 -> (0b10, 2); no sample -> (0, 0)."""
    if gt in ("", "."):
        return 0, 1 if gt else 0
    alleles = gt.replace("|", "/").split("/")
    return sum(1 << i for i, a in enumerate(alleles) if a == "1"), len(alleles)


def _popcount(mask: np.ndarray) -> np.ndarray:
    count = np.zeros(len(mask), dtype=np.int64)
    m = mask.copy()
    while m.any():
        count += m & 1
        m >>= 1
    return count


def _chunk_calls(df: pd.DataFrame, alleles: Alleles) -> Calls:
    """Calls of a parsed chunk: each category is looked up once, then every record becomes integers. Records whose
    genotype carries no ALT are kept here (the contig split needs every row) and dropped by `_merge_same_key`."""
    allele = alleles.codes(df["allele"].cat.categories.to_numpy(dtype=object))[df["allele"].cat.codes.to_numpy()]
    gts = [_gt_slots(g) for g in df["gt"].cat.categories.to_numpy(dtype=object)]
    gt_codes = df["gt"].cat.codes.to_numpy()
    mask = np.array([m for m, _ in gts], dtype=np.int64)[gt_codes]
    ploidy = np.array([p for _, p in gts], dtype=np.int64)[gt_codes]
    passed = np.isin(df["filter"].cat.categories.to_numpy(dtype=object), ["PASS", "."])[df["filter"].cat.codes.to_numpy()]
    return Calls(df["pos"].to_numpy(dtype=np.int64), allele, mask, ploidy, passed)


def _merge_same_key(calls: Calls, small: np.ndarray) -> Calls:
    """Drop non-small alleles; merge records on the same (pos, allele) by haplotype (OR of the ALT slots, largest
    ploidy, PASS only when every part passed), kept at the first one's place. `alt_count` holds slot masks on entry."""
    calls = calls.take(small[calls.allele] & (calls.alt_count != 0))
    key = calls.key
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(uniq) != len(key):
        mask = np.zeros(len(uniq), np.int64)
        np.bitwise_or.at(mask, inverse, calls.alt_count)
        ploidy = np.zeros(len(uniq), np.int64)
        np.maximum.at(ploidy, inverse, calls.ploidy)
        passed = np.ones(len(uniq), bool)
        np.logical_and.at(passed, inverse, calls.passed)
        order = np.argsort(first, kind="stable")
        calls = Calls(calls.pos[first][order], calls.allele[first][order], mask[order], ploidy[order], passed[order])
    return Calls(calls.pos, calls.allele, _popcount(calls.alt_count), calls.ploidy, calls.passed)


def dump_calls(vcf: Path, out: Path, *, sample: str | None = None, log: Log | None = None,
               provenance_dir: Path | None = None) -> Path:
    """`bcftools query` of the fields the matching needs, for the whole file, into `out`."""
    run_tool(bcftools.query_argv(vcf, QUERY_FORMAT, sample=sample), stdout_path=out, log=log,
             provenance_dir=provenance_dir)
    return out


def iter_contigs(dump: Path, alleles: Alleles) -> Iterator[tuple[str, Calls]]:
    """(contig, its calls) from a `dump_calls` file, one contig at a time (the file is read in chunks)."""
    if dump.stat().st_size == 0:
        return
    reader = pd.read_csv(
        dump, sep="\t", header=None, names=["chrom", "pos", "allele", "filter", "gt"], chunksize=_CHUNK_ROWS,
        dtype={"chrom": "category", "pos": np.int64, "allele": "category", "filter": "category", "gt": "category"},
        keep_default_na=False, na_filter=False, quoting=3, engine="c",
    )
    current, parts = None, []
    with reader:
        for chunk in reader:
            calls = _chunk_calls(chunk, alleles)
            chroms = chunk["chrom"].cat.codes.to_numpy()
            names = chunk["chrom"].cat.categories.to_numpy(dtype=object)
            cuts = np.flatnonzero(np.diff(chroms)) + 1
            for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(chunk)]]), strict=True):
                name = str(names[chroms[lo]])
                if name != current:
                    if current is not None:
                        yield current, Calls.concat(parts)
                    current, parts = name, []
                parts.append(calls.take(slice(lo, hi)))
    if current is not None:
        yield current, Calls.concat(parts)


class ContigReader:
    """Calls of one side by contig, in any order asked; contigs the stream passes on the way are kept until asked
    (none when both sides are sorted in the reference's order, the normal case)."""

    def __init__(self, stream: Iterator[tuple[str, Calls]], small: Callable[[], np.ndarray]):
        self._stream, self._held, self._small = stream, {}, small

    def get(self, chrom: str) -> Calls:
        calls = self._held.pop(chrom, None)
        while calls is None:
            nxt = next(self._stream, None)
            if nxt is None:
                return empty_calls()
            if nxt[0] == chrom:
                calls = nxt[1]
            else:
                self._held[nxt[0]] = nxt[1]
        return _merge_same_key(calls, self._small())


# --- matching and counting ----------------------------------------------------------------------------------


def _overlaps_any(starts: np.ndarray, ends: np.ndarray, q_start: np.ndarray, q_end: np.ndarray) -> np.ndarray:
    """Mask: [q_start, q_end) overlaps at least one of the spans [starts, ends). A span overlaps when it starts
    before q_end and ends after q_start: among the spans sorted by start that begin before q_end, the furthest end
    decides."""
    if len(starts) == 0:
        return np.zeros(len(q_start), dtype=bool)
    order = np.argsort(starts, kind="stable")
    s, furthest = starts[order], np.maximum.accumulate(ends[order])
    j = np.searchsorted(s, q_end, side="left")
    return (j > 0) & (furthest[np.maximum(j - 1, 0)] > q_start)


def _columns(calls: Calls, table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-record arrays the counting needs, looked up by allele code: type, transition, het, confident span."""
    a = calls.allele
    pos = calls.pos
    ref_len = table["ref_len"][a]
    start = np.where(table["del"][a], pos, pos - 1)
    end = np.where(table["ins"][a], pos + 1, pos - 1 + ref_len)
    return {"snp": table["snp"][a], "ti": table["ti"][a], "het": calls.alt_count < calls.ploidy, "start": start,
            "end": end, "ref_len": ref_len, "pos": pos}


def _tally(counts: dict[tuple[str, str], Counts], flt: str, side: str, sel: np.ndarray, cols: dict) -> None:
    """Add the ti/tv and het/homalt classes of the selected records, per type."""
    for vtype, is_type in ((SNP, cols["snp"]), (INDEL, ~cols["snp"])):
        row = counts[(vtype, flt)]
        m = sel & is_type
        if vtype == SNP:
            setattr(row, f"{side}_ti", getattr(row, f"{side}_ti") + int((m & cols["ti"]).sum()))
            setattr(row, f"{side}_tv", getattr(row, f"{side}_tv") + int((m & ~cols["ti"]).sum()))
        setattr(row, f"{side}_het", getattr(row, f"{side}_het") + int((m & cols["het"]).sum()))
        setattr(row, f"{side}_homalt", getattr(row, f"{side}_homalt") + int((m & ~cols["het"]).sum()))


def count_contig(
    chrom: str,
    truth: Calls,
    query: Calls,
    regions: Regions,
    counts: dict[tuple[str, str], Counts],
    alleles: Alleles,
    table: dict[str, np.ndarray],
    details: TextIO | None = None,
) -> None:
    """Add one contig's decisions to `counts` for the ALL and the PASS view of the query; write its FNs and FPs
    (ALL view) to `details`. `truth` holds the PASS truth records only."""
    t, q = _columns(truth, table), _columns(query, table)
    # Join on (pos, allele): where each query key sits in the truth (-1: no such allele).
    hit = np.full(len(query), -1, dtype=np.int64)
    if len(truth) and len(query):
        order = np.argsort(truth.key, kind="stable")
        sorted_keys = truth.key[order]
        i = np.minimum(np.searchsorted(sorted_keys, query.key), len(sorted_keys) - 1)
        found = sorted_keys[i] == query.key
        hit[found] = order[i[found]]
    q_allele = hit >= 0
    safe = np.maximum(hit, 0)
    q_gt = q_allele & (query.alt_count == truth.alt_count[safe] if len(truth) else False) & (
        query.ploidy == truth.ploidy[safe] if len(truth) else False)
    q_passed = query.passed
    t_conf = regions.contains_all(chrom, t["start"], t["end"])
    q_conf = regions.contains_all(chrom, q["start"], q["end"])
    t_allele = {flt: np.zeros(len(truth), dtype=bool) for flt in FILTERS}
    t_tp = {flt: np.zeros(len(truth), dtype=bool) for flt in FILTERS}
    for flt in FILTERS:
        view = q_allele if flt == "ALL" else q_allele & q_passed
        t_allele[flt][hit[view]] = True
        t_tp[flt][hit[view & q_gt]] = True
    q_fp_any = q_conf & ~q_gt
    q_al = q_fp_any & ~q_allele
    q_al[q_al] = _overlaps_any(t["pos"] - 1, t["pos"] - 1 + t["ref_len"], q["pos"][q_al] - 1,
                               q["pos"][q_al] - 1 + q["ref_len"][q_al])
    for flt in FILTERS:
        in_view = np.ones(len(query), dtype=bool) if flt == "ALL" else q_passed
        for vtype, is_type in ((SNP, t["snp"]), (INDEL, ~t["snp"])):
            row = counts[(vtype, flt)]
            m = t_conf & is_type
            row.truth_total += int(m.sum())
            row.truth_tp += int((m & t_tp[flt]).sum())
            row.truth_fn += int((m & ~t_tp[flt]).sum())
        _tally(counts, flt, "truth", t_conf, t)
        for vtype, is_type in ((SNP, q["snp"]), (INDEL, ~q["snp"])):
            row = counts[(vtype, flt)]
            m = in_view & is_type
            row.query_total += int(m.sum())
            row.query_unk += int((m & ~q_conf).sum())
            row.query_tp += int((m & q_conf & q_gt).sum())
            row.query_fp += int((m & q_fp_any).sum())
            row.fp_gt += int((m & q_fp_any & q_allele).sum())
            row.fp_al += int((m & q_al).sum())
        _tally(counts, flt, "query", in_view, q)
    if details is not None:
        fn = t_conf & ~t_tp["ALL"]
        _write_rows(details, chrom, truth.take(fn), alleles, t["snp"][fn], "TRUTH", "FN",
                    np.where(t_allele["ALL"][fn], "gt", ""), np.full(int(fn.sum()), "", dtype=object))
        _write_rows(details, chrom, query.take(q_fp_any), alleles, q["snp"][q_fp_any], "QUERY", "FP",
                    np.where(q_allele[q_fp_any], "gt", np.where(q_al[q_fp_any], "al", "")),
                    np.where(q_passed[q_fp_any], "PASS", "FILTERED"))


def _write_rows(fh: TextIO, chrom: str, calls: Calls, alleles: Alleles, snp: np.ndarray, side: str, decision: str,
                mismatch: np.ndarray, query_filter: np.ndarray) -> None:
    """fp_fn.tsv rows of the selected calls, in file order."""
    if not len(calls):
        return
    ref, alt = alleles.split(calls.allele)
    vtype = np.where(snp, SNP, INDEL)
    fh.writelines(
        f"{chrom}\t{p}\t{r}\t{a}\t{v}\t{side}\t{decision}\t{m}\t{f}\n"
        for p, r, a, v, m, f in zip(calls.pos.tolist(), ref, alt, vtype, mismatch, query_filter, strict=True)
    )


def details_header() -> str:
    return "\t".join(DETAIL_COLUMNS) + "\n"


def contigs_in_order(names: Iterable[str], reference_order: list[str]) -> list[str]:
    """Contigs sorted as in the reference (unknown ones last)."""
    order = {c: i for i, c in enumerate(reference_order)}
    return sorted(set(names), key=lambda c: order.get(c, len(order)))
