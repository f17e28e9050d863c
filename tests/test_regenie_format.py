"""Number formatting and p-values as regenie prints them (C++ ostream precision 6; get_logp)."""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

from genoflows.regenie.step2 import fmt, log10p_chisq1


def test_numbers_print_like_cpp_ostream():
    cases = {0.214575: "0.214575", 494.0: "494", 1e-5: "1e-05", 1234567.0: "1.23457e+06", -0.000123456789: "-0.000123457",
             0.0: "0", 100000.0: "100000", 2.5: "2.5", float("nan"): "nan"}
    assert {k if k == k else "nan": fmt(k) for k in cases} == {k if k == k else "nan": v for k, v in cases.items()}


def test_log10p_matches_the_chi2_tail_and_regenie_asymptotics():
    x = np.array([0.0, 0.113736, 3.84146, 29.7, 200.0])
    assert np.allclose(log10p_chisq1(x), -stats.chi2.logsf(x, 1) / math.log(10), rtol=1e-10)
    big = 3000.0  # P underflows: regenie's formula log10(2) - 0.5 log10(2 pi x) - 0.5 x log10(e)
    expect = -(math.log10(2) - 0.5 * math.log10(2 * math.pi * big) - 0.5 * big * math.log10(math.e))
    assert log10p_chisq1(np.array([big]))[0] == expect
    exact = -(math.log(2) + special.log_ndtr(-math.sqrt(big))) / math.log(10)  # P = 2 Phi(-sqrt x)
    assert abs(expect - exact) / exact < 1e-3
    assert list(log10p_chisq1(np.array([-1e-9, -1.0]))) == [0.0, -1.0]
