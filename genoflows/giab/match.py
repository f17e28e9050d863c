"""Matching and counting of normalised calls, column-wise: the core of the local small-variant engine.

Per contig, `bcftools query` prints the fields of both sides (POS, REF, ALT, FILTER, GT); pandas/numpy join them on
(pos, ref, alt), place them against the confident regions and the truth spans with `searchsorted`, and every count
of hap.py's summary is a sum over a boolean mask. No Python object per record: a whole genome's millions of
records cost seconds, and memory holds one contig at a time (the FN/FP listing is written contig by contig).

The rules (GA4GH, hap.py's defaults; see docs/giab-local-engine.md):
- same allele and genotype -> TP; same allele, other genotype -> truth FN + query FP counted as FP.gt; no allele
  match -> FN / FP, the FP counted as FP.al when its REF span overlaps a truth record;
- only PASS/`.` truth records take part; the query is counted twice, all records (ALL) and PASS/`.` ones (PASS);
- confident regions apply after matching: truth outside is ignored, query outside is UNK.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from genoflows.giab.regions import Regions, confident_spans
from genoflows.toolrun import run_tool
from genoflows.tools import bcftools

Log = Callable[[str], None]
SNP, INDEL = "SNP", "INDEL"
FILTERS = ("ALL", "PASS")
QUERY_FORMAT = "%POS\\t%REF\\t%ALT\\t%FILTER\\t[%GT]\\n"
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


def _gt_slots(gt: str) -> tuple[int, int]:
    """(bit mask of the genotype slots carrying allele 1, ploidy) of a GT string: 0/1 -> (0b10, 2), 1|0 -> (0b01, 2),
    1/1 -> (0b11, 2), 1 -> (0b1, 1), ./1 -> (0b10, 2); no sample -> (0, 0)."""
    if gt == "":
        return 0, 0
    alleles = gt.replace("|", "/").split("/")
    return sum(1 << i for i, a in enumerate(alleles) if a == "1"), len(alleles)


def parse_calls(text: str | TextIO) -> pd.DataFrame:
    """`bcftools query -f QUERY_FORMAT` output -> one row per (pos, ref, alt) carrying the ALT allele.

    Columns: pos, ref, alt, alt_count, ploidy, passed, order (first file position). Symbolic alleles (`<DEL>`),
    spanning deletions (`*`), breakends and multi-allelic leftovers are not small variants and are skipped. Records
    that land on the same key merge by haplotype: a `1/2` MNP whose alleles share a base splits into `1/0` + `0/1`
    of that base, which together are `1/1`; a record repeated on the same haplotype (`0/1` twice) stays `0/1`. The
    merged call is PASS only when every part passed.
    """
    df = pd.read_csv(
        io.StringIO(text) if isinstance(text, str) else text, sep="\t", header=None,
        names=["pos", "ref", "alt", "filter", "gt"], dtype={"pos": np.int64, "ref": str, "alt": str, "filter": str,
                                                             "gt": str},
        keep_default_na=False, na_filter=False, quoting=3, engine="c",
    )
    if df.empty:
        return empty_calls()
    df["order"] = np.arange(len(df), dtype=np.int64)
    alt = df["alt"]
    small = (alt != ".") & ~alt.str.contains(r"[,<\[\]*]", regex=True)
    df = df[small]
    slots = {g: _gt_slots(g) for g in df["gt"].unique()}  # a handful of distinct strings
    mask = df["gt"].map({g: m for g, (m, _) in slots.items()}).to_numpy(dtype=np.int64)
    ploidy = df["gt"].map({g: p for g, (_, p) in slots.items()}).to_numpy(dtype=np.int64)
    keep = mask != 0
    df = pd.DataFrame({
        "pos": df["pos"].to_numpy()[keep],
        "ref": df["ref"].str.upper().to_numpy()[keep],
        "alt": alt[small].str.upper().to_numpy()[keep],
        "mask": mask[keep],
        "ploidy": ploidy[keep],
        "passed": df["filter"].isin(("PASS", ".")).to_numpy()[keep],
        "order": df["order"].to_numpy()[keep],
    })
    dup = df.duplicated(["pos", "ref", "alt"], keep=False).to_numpy()
    if dup.any():  # rare: merge the repeated keys by haplotype, keep the first position
        merged = (
            df[dup].groupby(["pos", "ref", "alt"], sort=False)
            .agg(mask=("mask", lambda m: int(np.bitwise_or.reduce(m.to_numpy()))), ploidy=("ploidy", "max"),
                 passed=("passed", "all"), order=("order", "min"))
            .reset_index()
        )
        df = pd.concat([df[~dup], merged], ignore_index=True).sort_values("order", kind="stable", ignore_index=True)
    df["alt_count"] = _popcount(df["mask"].to_numpy())
    return df.drop(columns="mask")


def _popcount(mask: np.ndarray) -> np.ndarray:
    count = np.zeros(len(mask), dtype=np.int64)
    m = mask.copy()
    while m.any():
        count += m & 1
        m >>= 1
    return count


def empty_calls() -> pd.DataFrame:
    return pd.DataFrame({
        "pos": np.array([], dtype=np.int64), "ref": np.array([], dtype=object), "alt": np.array([], dtype=object),
        "ploidy": np.array([], dtype=np.int64), "passed": np.array([], dtype=bool),
        "order": np.array([], dtype=np.int64), "alt_count": np.array([], dtype=np.int64),
    })


def query_calls(vcf: Path, chrom: str, work_dir: Path, *, sample: str | None = None, log: Log | None = None,
                provenance_dir: Path | None = None) -> pd.DataFrame:
    """The normalised calls of `vcf` on `chrom` (indexed file), read through `bcftools query`."""
    out = work_dir / f".query.{Path(vcf).name}.{chrom}.tsv"
    try:
        run_tool(bcftools.query_argv(vcf, QUERY_FORMAT, region=chrom, sample=sample), stdout_path=out, log=log,
                 provenance_dir=provenance_dir)
        with open(out) as fh:
            return parse_calls(fh) if out.stat().st_size else empty_calls()
    finally:
        out.unlink(missing_ok=True)


# --- matching and counting ----------------------------------------------------------------------------------


def _columns(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-record arrays the counting needs: type, transition, het, confident span."""
    ref, alt = df["ref"], df["alt"]
    ref_len = ref.str.len().to_numpy(dtype=np.int64)
    alt_len = alt.str.len().to_numpy(dtype=np.int64)
    ref0 = ref.str[0].to_numpy(dtype=object)
    alt0 = alt.str[0].to_numpy(dtype=object)
    snp = (ref_len == 1) & (alt_len == 1)
    ti = np.zeros(len(df), dtype=bool)
    if snp.any():
        ti[snp] = (ref[snp] + alt[snp]).isin(_TRANSITIONS).to_numpy()
    pos = df["pos"].to_numpy(dtype=np.int64)
    start, end = confident_spans(pos, ref_len, alt_len, ref0, alt0)
    return {"snp": snp, "ti": ti, "het": df["alt_count"].to_numpy() < df["ploidy"].to_numpy(), "start": start,
            "end": end, "ref_len": ref_len, "pos": pos}


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
    truth: pd.DataFrame,
    query: pd.DataFrame,
    regions: Regions,
    counts: dict[tuple[str, str], Counts],
    details: TextIO | None = None,
) -> None:
    """Add one contig's decisions to `counts` for the ALL and the PASS view of the query; write its FNs and FPs
    (ALL view) to `details`. `truth` holds the PASS truth records only."""
    truth = truth.reset_index(drop=True)
    query = query.reset_index(drop=True)
    t, q = _columns(truth), _columns(query)
    # Join on (pos, ref, alt): where each query key sits in the truth (-1: no such allele).
    t_keys = pd.MultiIndex.from_frame(truth[["pos", "ref", "alt"]])
    hit = t_keys.get_indexer(pd.MultiIndex.from_frame(query[["pos", "ref", "alt"]])) if len(truth) and len(query) \
        else np.full(len(query), -1, dtype=np.int64)
    q_allele = hit >= 0
    safe = np.maximum(hit, 0)
    q_gt = q_allele & (query["alt_count"].to_numpy() == truth["alt_count"].to_numpy()[safe]) & (
        query["ploidy"].to_numpy() == truth["ploidy"].to_numpy()[safe]) if len(truth) else np.zeros(len(query), bool)
    q_passed = query["passed"].to_numpy()
    t_conf = regions.contains_all(chrom, t["start"], t["end"])
    q_conf = regions.contains_all(chrom, q["start"], q["end"])
    # For the truth side: which truth rows a query call matches (allele; allele and genotype), per view.
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
        _write_details(details, chrom, truth, t, t_conf & ~t_tp["ALL"], t_allele["ALL"], query, q, q_fp_any,
                       q_allele, q_al)


def _write_details(fh: TextIO, chrom: str, truth: pd.DataFrame, t: dict, t_fn: np.ndarray, t_seen: np.ndarray,
                   query: pd.DataFrame, q: dict, q_fp: np.ndarray, q_allele: np.ndarray, q_al: np.ndarray) -> None:
    """This contig's FNs (truth order) then FPs (query order), as fp_fn.tsv rows."""
    if t_fn.any():
        fn = pd.DataFrame({
            "chrom": chrom, "pos": truth["pos"][t_fn], "ref": truth["ref"][t_fn], "alt": truth["alt"][t_fn],
            "type": np.where(t["snp"][t_fn], SNP, INDEL), "side": "TRUTH", "decision": "FN",
            "mismatch": np.where(t_seen[t_fn], "gt", ""), "query_filter": "",
        })
        fn.to_csv(fh, sep="\t", header=False, index=False, lineterminator="\n")
    if q_fp.any():
        fp = pd.DataFrame({
            "chrom": chrom, "pos": query["pos"][q_fp], "ref": query["ref"][q_fp], "alt": query["alt"][q_fp],
            "type": np.where(q["snp"][q_fp], SNP, INDEL), "side": "QUERY", "decision": "FP",
            "mismatch": np.where(q_allele[q_fp], "gt", np.where(q_al[q_fp], "al", "")),
            "query_filter": np.where(query["passed"].to_numpy()[q_fp], "PASS", "FILTERED"),
        })
        fp.to_csv(fh, sep="\t", header=False, index=False, lineterminator="\n")


def details_header() -> str:
    return "\t".join(DETAIL_COLUMNS) + "\n"


def contigs_in_order(names: Iterable[str], reference_order: list[str]) -> list[str]:
    """Contigs sorted as in the reference (unknown ones last)."""
    order = {c: i for i, c in enumerate(reference_order)}
    return sorted(set(names), key=lambda c: order.get(c, len(order)))
