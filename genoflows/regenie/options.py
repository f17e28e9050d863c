"""The parsed, validated options handed from the CLI to step 1 and step 2 (no argparse types leak further)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Step1Options:
    """What ``genoflows.regenie.step1.run_step1`` needs besides the genotypes and the analysis data."""

    out: str  # --out prefix: writes <out>_<i>.loco (i = 1-based trait index) and <out>_pred.list
    bsize: int  # --bsize
    variant_mask: np.ndarray  # bool per genotype-file variant: kept by --extract/--exclude/--chr filters
    cv_folds: int = 5  # --cv
    loocv: bool = False  # --loocv (BT with N < 5000 forces it: step 1 decides, as regenie's set_blocks)
    l0: int = 5  # --l0: number of h2 values at level 0
    l1: int = 5  # --l1
    lowmem: bool = False
    lowmem_prefix: str | None = None  # default = out
    use_relative_path: bool = False  # --use-relative-path: relative paths in _pred.list
    threads: int = 1
    log: Callable[[str], None] = print  # one line of the <out>.log (also echoed to stdout)


@dataclass
class Step2Options:
    out: str
    bsize: int
    variant_mask: np.ndarray
    pred: Path | None = None  # --pred (None with --ignore-pred)
    min_mac: float = 5.0
    firth: bool = False
    approx: bool = False
    pthresh: float = 0.05
    threads: int = 1
    log: Callable[[str], None] = print
    extra: dict = field(default_factory=dict)
