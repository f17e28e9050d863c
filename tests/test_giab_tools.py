"""hap.py through a fake executable (the real one is Python 2 / Docker only) and truvari for real."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from genoflows.giab import catalogue, small, sv
from genoflows.testing import giab_world
from genoflows.giab.query import variant_sites
from genoflows.toolrun import ToolError, _version_of, read_provenance

# A real hap.py v0.3.15 summary.csv (18 columns, its row order, empty TiTv cells for INDEL).
HAPPY_SUMMARY = """\
Type,Filter,TRUTH.TOTAL,TRUTH.TP,TRUTH.FN,QUERY.TOTAL,QUERY.FP,QUERY.UNK,FP.gt,FP.al,METRIC.Recall,METRIC.Precision,METRIC.Frac_NA,METRIC.F1_Score,TRUTH.TOTAL.TiTv_ratio,QUERY.TOTAL.TiTv_ratio,TRUTH.TOTAL.het_hom_ratio,QUERY.TOTAL.het_hom_ratio
INDEL,ALL,29465,26677,2788,29855,2816,110,2772,44,0.905379,0.905329,0.003684,0.905354,,,0.93563464,1.004317906
INDEL,PASS,29465,26500,2965,29600,2700,108,2650,40,0.899372,0.907500,0.003649,0.903418,,,0.93563464,1.001
SNP,ALL,100,99,1,101,2,0,1,0,0.99,0.98,0.0,0.985,2.1,2.05,1.5,1.6
SNP,PASS,100,98,2,100,2,0,1,0,0.98,0.98,0.0,0.98,2.1,2.06,1.5,1.58
"""


def _fake_happy(bindir: Path, *, fail: bool = False) -> Path:
    """An executable named hap.py that checks its arguments like hap.py and writes the files it writes."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "hap.py"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import argparse, gzip, json, os, sys
        if sys.argv[1:] == ["--version"]:
            print("Hap.py v0.3.15")
            sys.exit(0)
        p = argparse.ArgumentParser()
        p.add_argument("truth"); p.add_argument("query")
        p.add_argument("-r", required=True); p.add_argument("-f"); p.add_argument("-o", required=True)
        p.add_argument("--engine", default="xcmp"); p.add_argument("--threads", type=int)
        p.add_argument("--pass-only", action="store_true")
        a = p.parse_args()
        for f in (a.truth, a.query, a.r, a.f, a.truth + ".tbi", a.query + ".tbi", a.r + ".fai"):
            if f and not os.path.exists(f):
                print("ERROR: cannot read " + f, file=sys.stderr); sys.exit(1)
        print("[I] Comparing with " + a.engine, flush=True)
        if {fail!r}:
            print("Exception: Error running xcmp: contig chrQ not found", file=sys.stderr); sys.exit(1)
        open(a.o + ".summary.csv", "w").write({HAPPY_SUMMARY!r})
        open(a.o + ".extended.csv", "w").write("Type,Subtype\\n")
        json.dump({{"args": sys.argv}}, open(a.o + ".runinfo.json", "w"))
        with gzip.open(a.o + ".metrics.json.gz", "wt") as fh: fh.write("{{}}")
        print("Benchmarking Summary:")
        """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> giab_world.DemoWorld:
    return giab_world.build_world(tmp_path_factory.mktemp("giab-world"))


@pytest.fixture
def fake_happy_on_path(tmp_path, monkeypatch):
    def install(fail: bool = False) -> Path:
        script = _fake_happy(tmp_path / "bin", fail=fail)
        monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
        _version_of.cache_clear()
        return script

    yield install
    _version_of.cache_clear()


def test_auto_engine_picks_happy_only_when_it_can_run(fake_happy_on_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert small.choose_engine("auto") == "bcftools"
    with pytest.raises(small.EngineUnavailable, match="GENOFLOWS_TOOL_IMAGES"):
        small.choose_engine("happy")
    fake_happy_on_path()
    assert small.choose_engine("auto") == "happy"
    assert small.choose_engine("bcftools") == "bcftools"


def test_happy_wrapper_runs_and_parses_by_header(world, fake_happy_on_path, tmp_path):
    fake_happy_on_path()
    hg = "HG004"
    ref = giab_world.local_reference(world, "GRCh38", tmp_path / "ref")
    truth, bed = giab_world.truth_paths(world, hg, "GRCh38")
    query = variant_sites(world.lab / f"{world.sample_id(hg)}.g.vcf.gz", tmp_path / "q.vcf.gz", sample_id=world.sample_id(hg))
    lines: list[str] = []
    out = small.run_happy(truth, query, ref, tmp_path / "out", confident_bed=bed, log=lines.append,
                          provenance_dir=tmp_path / "out")
    assert out.engine == "happy"
    assert out.summary_csv == tmp_path / "out" / "happy" / "happy.summary.csv"
    rows = {(r.type, r.filter): r.values for r in out.rows}
    assert rows[("INDEL", "ALL")]["FP.al"] == 44 and rows[("INDEL", "ALL")]["TRUTH.TOTAL.TiTv_ratio"] is None
    assert rows[("SNP", "PASS")]["METRIC.Recall"] == 0.98
    assert {p.name for p in out.files} >= {"happy.summary.csv", "happy.extended.csv", "happy.runinfo.json"}
    assert "[hap.py] [I] Comparing with xcmp" in lines
    assert not (tmp_path / "out" / ".happy.tmp").exists()
    prov = [r for r in read_provenance(tmp_path / "out") if r["tool"] == "hap.py"]
    assert prov and prov[0]["version"] == "0.3.15" and prov[0]["argv"][1] == str(truth)


def test_happy_failure_carries_its_last_lines_and_leaves_no_result(world, fake_happy_on_path, tmp_path):
    fake_happy_on_path(fail=True)
    ref = giab_world.local_reference(world, "GRCh38", tmp_path / "ref")
    truth, bed = giab_world.truth_paths(world, "HG004", "GRCh38")
    with pytest.raises(ToolError, match="contig chrQ not found"):
        small.run_happy(truth, truth, ref, tmp_path / "out", confident_bed=bed)
    assert not (tmp_path / "out" / "happy").exists()


def test_truvari_bench_counts_the_planted_svs(world, tmp_path):
    sid = world.sample_id("HG002")
    ref = giab_world.local_reference(world, "GRCh37", tmp_path / "ref")
    t = catalogue.sv_truth("HG002", "GRCh37", "BASE")
    truth = world.mirror / t.vcf.url.removeprefix("BASE/")
    bed = world.mirror / t.bed.url.removeprefix("BASE/")
    lines: list[str] = []
    res = sv.run_truvari(truth, world.lab / f"{sid}.sv.vcf.gz", ref, tmp_path / "out", include_bed=bed,
                         log=lines.append, provenance_dir=tmp_path / "out")
    for flt, expected in (("ALL", world.sv.expected_all), ("PASS", world.sv.expected_pass)):
        got = res.metrics[flt]
        assert {k: got[k] for k in expected} == {k: float(v) for k, v in expected.items()}, flt
    assert (tmp_path / "out" / "truvari" / "summary.json").exists()
    assert (tmp_path / "out" / "truvari-pass" / "tp-base.vcf.gz").exists()
    assert any("sv-query" in ln and "renaming chr1->1" in ln for ln in lines)
    assert [r["tool"] for r in read_provenance(tmp_path / "out")].count("truvari") == 2
    # A rerun replaces the previous result instead of tripping over truvari's "output exists" refusal.
    again = sv.run_truvari(truth, world.lab / f"{sid}.sv.vcf.gz", ref, tmp_path / "out", include_bed=bed)
    assert again.metrics == res.metrics
