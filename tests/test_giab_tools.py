"""hap.py through a stand-in executable (the real one is Python 2 / Docker only, not runnable here) and truvari for real.

What the hap.py tests here prove: the command line we build, that the wrapper runs the executable found on PATH or
in a configured image, streams its output, reads its summary.csv by header name and files its outputs. They prove
nothing about hap.py's numbers: the stand-in writes the same hand-made summary whatever its inputs.
docs/giab-local-engine.md says what was and was not validated against real hap.py.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from genoflows.giab import catalogue, small, sv
from genoflows.giab.query import variant_sites
from genoflows.settings import get_settings
from genoflows.testing import giab_world
from genoflows.toolrun import ToolError, _version_of, read_provenance

# Hand-made, not produced by hap.py: a summary.csv in hap.py v0.3.15's format (its 18 columns in qfy.py's order,
# its row order, empty TiTv cells for INDEL). The numbers are invented but consistent with each other by hap.py's
# formulas (QUERY.TP = QUERY.TOTAL - QUERY.FP - QUERY.UNK; test_hand_made_summary_is_internally_consistent).
HAND_MADE_SUMMARY = """\
Type,Filter,TRUTH.TOTAL,TRUTH.TP,TRUTH.FN,QUERY.TOTAL,QUERY.FP,QUERY.UNK,FP.gt,FP.al,METRIC.Recall,METRIC.Precision,METRIC.Frac_NA,METRIC.F1_Score,TRUTH.TOTAL.TiTv_ratio,QUERY.TOTAL.TiTv_ratio,TRUTH.TOTAL.het_hom_ratio,QUERY.TOTAL.het_hom_ratio
INDEL,ALL,400,380,20,410,20,10,12,4,0.95,0.95,0.024390243902439025,0.95,,,1.5,1.6
INDEL,PASS,400,370,30,395,15,10,9,3,0.925,0.961038961038961,0.02531645569620253,0.9426751592356688,,,1.5,1.55
SNP,ALL,1000,990,10,1010,10,10,6,0,0.99,0.99,0.009900990099009901,0.99,2.1,2.05,1.6,1.62
SNP,PASS,1000,980,20,990,0,10,0,0,0.98,1.0,0.010101010101010102,0.98989898989899,2.1,2.07,1.6,1.61
"""


def _stand_in_happy(bindir: Path, *, fail: bool = False) -> Path:
    """A stand-in named hap.py, NOT hap.py: it parses its arguments like hap.py, checks that the files it was given
    exist, prints hap.py-like lines and writes the files hap.py writes, with HAND_MADE_SUMMARY as the summary
    whatever its inputs. It exercises our argv, parsing and plumbing, never hap.py's comparison."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "hap.py"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        # genoflows test stand-in for hap.py: writes a fixed hand-made summary, compares nothing.
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
        open(a.o + ".summary.csv", "w").write({HAND_MADE_SUMMARY!r})
        open(a.o + ".extended.csv", "w").write("Type,Subtype\\n")
        json.dump({{"args": sys.argv}}, open(a.o + ".runinfo.json", "w"))
        with gzip.open(a.o + ".metrics.json.gz", "wt") as fh: fh.write("{{}}")
        print("Benchmarking Summary:")
        """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def test_hand_made_summary_is_internally_consistent():
    """The fixture claims only hap.py's format and hap.py's formulas; check the formulas hold for every row."""
    for row in csv.DictReader(io.StringIO(HAND_MADE_SUMMARY)):
        n = {k: float(v) for k, v in row.items() if k not in ("Type", "Filter") and v != ""}
        query_tp = n["QUERY.TOTAL"] - n["QUERY.FP"] - n["QUERY.UNK"]
        recall = n["TRUTH.TP"] / (n["TRUTH.TP"] + n["TRUTH.FN"])
        precision = query_tp / (query_tp + n["QUERY.FP"])
        assert n["TRUTH.TOTAL"] == n["TRUTH.TP"] + n["TRUTH.FN"]
        assert n["FP.gt"] + n["FP.al"] <= n["QUERY.FP"]
        assert n["METRIC.Recall"] == pytest.approx(recall)
        assert n["METRIC.Precision"] == pytest.approx(precision)
        assert n["METRIC.Frac_NA"] == pytest.approx(n["QUERY.UNK"] / n["QUERY.TOTAL"])
        assert n["METRIC.F1_Score"] == pytest.approx(2 * recall * precision / (recall + precision))
        assert ("TRUTH.TOTAL.TiTv_ratio" in n) == (row["Type"] == "SNP")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> giab_world.DemoWorld:
    return giab_world.build_world(tmp_path_factory.mktemp("giab-world"))


@pytest.fixture
def stand_in_happy_on_path(tmp_path, monkeypatch):
    def install(fail: bool = False) -> Path:
        script = _stand_in_happy(tmp_path / "bin", fail=fail)
        monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
        _version_of.cache_clear()
        return script

    yield install
    _version_of.cache_clear()


@pytest.fixture
def images_env(monkeypatch):
    """Set GENOFLOWS_TOOL_IMAGES / GENOFLOWS_CONTAINER_ENGINE for one test."""
    def set_(images: dict | None = None, engine: str | None = None) -> None:
        import json

        if images is not None:
            monkeypatch.setenv("GENOFLOWS_TOOL_IMAGES", json.dumps(images))
        if engine is not None:
            monkeypatch.setenv("GENOFLOWS_CONTAINER_ENGINE", engine)
        get_settings.cache_clear()

    yield set_
    get_settings.cache_clear()


def _engine_script(path: Path, *, answers: bool) -> Path:
    """A container-engine CLI whose `version` succeeds (a reachable engine) or fails like docker without a daemon."""
    reply = 'print("Version: 4.3.1")' if answers else \
        'print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock", file=sys.stderr); sys.exit(1)'
    path.write_text(f"#!{sys.executable}\nimport sys\n{reply}\n")
    path.chmod(0o755)
    return path


def test_auto_engine_picks_happy_only_when_it_can_really_run(stand_in_happy_on_path, images_env, monkeypatch,
                                                             tmp_path):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    images_env(images={})
    assert small.choose_engine("auto") == ("bcftools", "hap.py is not on PATH and no container image is configured "
                                           "for it; using the local bcftools engine")
    with pytest.raises(small.EngineUnavailable, match="not on PATH.*GENOFLOWS_TOOL_IMAGES"):
        small.choose_engine("happy")
    # An image but no container engine installed (the worker image of issue 11): fall back, saying why.
    images_env(images={"hap.py": "jmcdani20/hap.py:v0.3.12"}, engine="no-such-engine")
    chosen, why = small.choose_engine("auto")
    assert chosen == "bcftools" and "container engine 'no-such-engine' is not installed" in why
    # An engine that is installed but cannot reach its daemon.
    images_env(engine=str(_engine_script(tmp_path / "docker", answers=False)))
    chosen, why = small.choose_engine("auto")
    assert chosen == "bcftools" and "does not answer" in why and "Cannot connect to the Docker daemon" in why
    with pytest.raises(small.EngineUnavailable, match="does not answer"):
        small.choose_engine("happy")
    # An engine that answers: the image is usable.
    images_env(engine=str(_engine_script(tmp_path / "podman", answers=True)))
    assert small.choose_engine("auto")[0] == "happy"
    # On PATH wins without any container engine.
    images_env(images={})
    stand_in_happy_on_path()
    assert small.choose_engine("auto")[0] == "happy"
    assert small.choose_engine("bcftools") == ("bcftools", "requested")


def test_happy_wrapper_plumbing_with_the_stand_in(world, stand_in_happy_on_path, tmp_path):
    """Proves argv, output streaming, summary parsing by header and file collection - not hap.py's numbers."""
    stand_in_happy_on_path()
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
    assert rows[("INDEL", "ALL")]["FP.al"] == 4 and rows[("INDEL", "ALL")]["TRUTH.TOTAL.TiTv_ratio"] is None
    assert rows[("SNP", "PASS")]["METRIC.Recall"] == 0.98 and rows[("SNP", "PASS")]["QUERY.FP"] == 0
    assert {p.name for p in out.files} >= {"happy.summary.csv", "happy.extended.csv", "happy.runinfo.json"}
    assert any(line.startswith("[hap.py] hap.py 0.3.15: ok") for line in lines)  # the run log: a summary line
    assert "[I] Comparing with xcmp" in (tmp_path / "out" / "tools.log").read_text()  # the full output: a file
    assert not [p.name for p in (tmp_path / "out").iterdir() if "happy" in p.name and p.name != "happy"]
    prov = [r for r in read_provenance(tmp_path / "out") if r["tool"] == "hap.py"]
    assert prov and prov[0]["version"] == "0.3.15" and prov[0]["argv"][1] == str(truth)


def test_happy_failure_carries_its_last_lines_and_leaves_no_result_stand_in(world, stand_in_happy_on_path, tmp_path):
    stand_in_happy_on_path(fail=True)
    ref = giab_world.local_reference(world, "GRCh38", tmp_path / "ref")
    truth, bed = giab_world.truth_paths(world, "HG004", "GRCh38")
    with pytest.raises(ToolError, match="contig chrQ not found"):
        small.run_happy(truth, truth, ref, tmp_path / "out", confident_bed=bed)
    assert not (tmp_path / "out" / "happy").exists()
    assert not [p.name for p in (tmp_path / "out").iterdir() if "happy" in p.name]  # its temp directory is gone too


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


def test_truvari_against_the_cmrg_sv_truth_on_grch38(world, tmp_path):
    """GRCh38 SV calls against the catalogue's GRCh38 choice (CMRG v1.00), laid out as GIAB releases it."""
    sid = world.sample_id("HG002")
    ref = giab_world.local_reference(world, "GRCh38", tmp_path / "ref")
    t = catalogue.sv_truth("HG002", "GRCh38", "BASE")
    assert "/CMRG_v1.00/GRCh38/StructuralVariant/" in t.vcf.url
    truth = world.mirror / t.vcf.url.removeprefix("BASE/")
    bed = world.mirror / t.bed.url.removeprefix("BASE/")
    res = sv.run_truvari(truth, world.lab / f"{sid}.sv.vcf.gz", ref, tmp_path / "out", include_bed=bed)
    for flt, expected in (("ALL", world.sv.expected_all), ("PASS", world.sv.expected_pass)):
        assert {k: res.metrics[flt][k] for k in expected} == {k: float(v) for k, v in expected.items()}, flt
