"""Step 1 (level-0/level-1 ridge, LOCO predictions). Owned by the regenie-step1 branch: this file is only
the agreed call signature until that branch is merged."""

from __future__ import annotations

from pathlib import Path

from genoflows.regenie.errors import RegenieError
from genoflows.regenie.genotypes import Genotypes
from genoflows.regenie.options import Step1Options
from genoflows.regenie.phenotypes import AnalysisData


def run_step1(geno: Genotypes, data: AnalysisData, opts: Step1Options) -> Path:
    """Fit the whole-genome model; write ``<out>_<i>.loco`` and ``<out>_pred.list``; return the list's path."""
    raise RegenieError("--step 1 is not available in this build yet (step 1 engine not merged).")
