"""kallisto command lines, index cache, output checks and the merge, with the real kallisto 0.48."""

from __future__ import annotations

import gzip
import threading

import pytest

from genoflows.rnaseq.merge import MergeError, merge_species
from genoflows.rnaseq.metadata import Run, RunTable
from genoflows.rnaseq.sources import RemoteFile, ResolvedRun
from genoflows.rnaseq.stages import LocalRun, SpeciesDirs, quantify_run
from genoflows.testing import rnaseq_world as sim
from genoflows.tools import kallisto


def test_single_end_fragment_rule():
    assert kallisto.single_end_fragment(None) == (200.0, 20.0)
    assert kallisto.single_end_fragment(150) == (200.0, 20.0)
    assert kallisto.single_end_fragment(350) == (350.0, 35.0)
    assert kallisto.single_end_fragment(350, 50) == (350.0, 50.0)


def test_quant_argv(tmp_path):
    argv = kallisto.quant_argv(tmp_path / "i", tmp_path / "o", [tmp_path / "r.fq"], "single", fragment=(250, 25))
    assert argv[-6:] == ["--single", "-l", "250", "-s", "25", str(tmp_path / "r.fq")]
    with pytest.raises(ValueError):
        kallisto.quant_argv(tmp_path / "i", tmp_path / "o", [tmp_path / "r.fq"], "paired")


def test_check_fasta_rejects_unusable_input(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text("hello\n")
    with pytest.raises(kallisto.TranscriptomeError, match="not a FASTA"):
        kallisto.check_fasta(bad)
    bad.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(kallisto.TranscriptomeError, match="cannot read"):
        kallisto.check_fasta(bad)
    bad.write_text(">a\n>b\nACGT\n")
    with pytest.raises(kallisto.TranscriptomeError, match="empty"):
        kallisto.check_fasta(bad)
    gz = tmp_path / "ok.fa.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(">t1 desc\nACGT\n>t2\nGGCC\n")
    assert kallisto.check_fasta(gz) == ["t1", "t2"]


def test_index_built_once_concurrently_and_reused(tmp_path):
    fasta = tmp_path / "tx.fa"
    sim.make_transcriptome(fasta, n_genes=5, seed=2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(kallisto.ensure_index(fasta, tmp_path / "c")))
               for _ in range(3)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({str(r[0]) for r in results}) == 1
    index = results[0][0]
    assert index.exists() and "kallisto0.48.0" in index.parent.name
    mtime = index.stat().st_mtime_ns
    assert kallisto.ensure_index(fasta, tmp_path / "c")[0].stat().st_mtime_ns == mtime
    assert not [p for p in index.parent.iterdir() if p.name.startswith(".build-")]


def _local(sim_run, layout, expected=None):
    files = tuple(RemoteFile(str(f), f.name, f.stat().st_size) for f in sim_run.files)
    res = ResolvedRun(Run(sim_run.run, "Sp", layout, 250), "explicit", files, layout, 0, expected)
    return LocalRun(res, layout, sim_run.files, expected or sim_run.n_fragments, 0, 0.0)


def test_quantify_checks_and_merge(tmp_path):
    fasta = tmp_path / "tx.fa"
    tx = sim.make_transcriptome(fasta, n_genes=10, seed=4)
    index, targets = kallisto.ensure_index(fasta, tmp_path / "cache")
    dirs = SpeciesDirs(tmp_path / "out" / "Sp")
    dirs.prepare()
    a = sim.simulate_run(tx, tmp_path / "g", "SRR4000001", n_fragments=2000, seed=1)
    b = sim.simulate_run(tx, tmp_path / "g", "SRR4000002", layout="single", n_fragments=2000, seed=2)
    ra = quantify_run(_local(a, "paired"), index, targets, dirs)
    rb = quantify_run(_local(b, "single"), index, targets, dirs)
    assert ra.n_processed == 2000 and ra.p_pseudoaligned > 90 and rb.layout == "single"
    assert sorted(p.name for p in dirs.quant.iterdir()) == ["SRR4000001", "SRR4000002"]
    # counts follow the truth: the most abundant transcript family gets the most reads
    est = kallisto.read_abundance(dirs.quant_dir("SRR4000001") / "abundance.tsv")
    assert sum(c for c, _ in est.values()) == pytest.approx(ra.n_pseudoaligned, rel=1e-3)
    # a truncated run is caught although kallisto exits 0 on it
    with pytest.raises(kallisto.QuantCheckError, match="1000 of 2000 expected|of 2000 expected"):
        cut = sim.simulate_run(tx, tmp_path / "g2", "SRR4000003", n_fragments=1000, seed=3)
        quantify_run(_local(cut, "paired", expected=2000), index, targets, dirs)
    assert not dirs.is_complete("SRR4000003") and not [p for p in dirs.quant.iterdir() if p.name.startswith(".tmp")]
    table = RunTable(runs=[], rows=[{"run": "SRR4000001", "x": "1"}, {"run": "SRR4000002", "x": "2"}], columns=["run", "x"])
    m = merge_species(dirs, "Sp", table, ["SRR4000001", "SRR4000002", "SRR4000009"])
    assert m.runs == ["SRR4000001", "SRR4000002"] and m.n_targets == len(targets)
    lines = m.est_counts.read_text().splitlines()
    assert lines[0] == "target_id\tSRR4000001\tSRR4000002"
    first = lines[1].split("\t")
    assert float(first[1]) == est[first[0]][0]
    meta = m.metadata.read_text().splitlines()
    assert meta[0] == "run\tx\tmapping_rate" and meta[1].split("\t")[2] == str(ra.p_pseudoaligned)
    (dirs.quant_dir("SRR4000002") / "abundance.tsv").write_text("target_id\tlength\teff_length\test_counts\ttpm\nzz\t1\t1\t1\t1\n")
    with pytest.raises(MergeError, match="target set differs"):
        merge_species(dirs, "Sp", table, ["SRR4000001", "SRR4000002"])


def _fake_quant(dirs: SpeciesDirs, run: str, rows: list[tuple[str, float, float]], rate: float, key: str = "k1") -> None:
    d = dirs.quant_dir(run)
    d.mkdir(parents=True)
    body = "".join(f"{t}\t100\t80\t{c!r}\t{tpm!r}\n" for t, c, tpm in rows)
    (d / "abundance.tsv").write_text("target_id\tlength\teff_length\test_counts\ttpm\n" + body)
    (d / "run_info.json").write_text(
        f'{{"n_targets": {len(rows)}, "n_processed": 10, "n_pseudoaligned": 9, "p_pseudoaligned": {rate}, '
        f'"call": "kallisto quant -i /cache/kallisto/{key}/transcripts.idx -o x a.fq"}}'
    )


def test_merge_joins_on_target_id_and_reuses_current_tables(tmp_path):
    dirs = SpeciesDirs(tmp_path / "Sp")
    dirs.prepare()
    _fake_quant(dirs, "A", [("t1", 1.5, 10.0), ("t2", 2.0, 20.0), ("t3", 0.0, 0.0)], 90.0)
    _fake_quant(dirs, "B", [("t3", 3.25, 30.0), ("t1", 1e-05, 1.0), ("t2", 7.0, 70.0)], 80.5)
    table = RunTable(runs=[], rows=[{"run": "A"}, {"run": "B"}, {"run": "C"}], columns=["run"])
    m = merge_species(dirs, "Sp", table, ["A", "B", "C"])
    rows = [line.split("\t") for line in m.est_counts.read_text().splitlines()]
    assert rows == [["target_id", "A", "B"], ["t1", "1.5", "1e-05"], ["t2", "2.0", "7.0"], ["t3", "0.0", "3.25"]]
    assert [line.split("\t")[1] for line in m.metadata.read_text().splitlines()] == ["mapping_rate", "90.0", "80.5", ""]
    again = merge_species(dirs, "Sp", table, ["A", "B", "C"])
    assert again.reused and again.n_targets == 3
    _fake_quant(dirs, "C", [("t1", 1.0, 1.0), ("t1", 1.0, 1.0), ("t3", 1.0, 1.0)], 50.0)
    with pytest.raises(MergeError, match="duplicated target ids"):
        merge_species(dirs, "Sp", table, ["A", "B", "C"])


def test_merge_refuses_runs_from_different_indices(tmp_path):
    dirs = SpeciesDirs(tmp_path / "Sp")
    dirs.prepare()
    _fake_quant(dirs, "A", [("t1", 1.0, 1.0)], 90.0, key="abc-k31-kallisto0.48.0")
    _fake_quant(dirs, "B", [("t1", 2.0, 2.0)], 90.0, key="def-k31-kallisto0.50.1")
    table = RunTable(runs=[], rows=[{"run": "A"}, {"run": "B"}], columns=["run"])
    with pytest.raises(MergeError, match="different kallisto indices"):
        merge_species(dirs, "Sp", table, ["A", "B"])


def test_quant_task_uses_the_targets_build_index_returned(settings_env, tmp_path):
    """build_index hands back the index and its targets; quant_run takes them as given (no file read back)."""
    from tasks import rnaseq as t

    fasta = tmp_path / "tx.fa"
    tx = sim.make_transcriptome(fasta, n_genes=6, seed=8)
    index, targets = t.build_index.fn(str(fasta))
    assert targets == kallisto.check_fasta(fasta) and index.is_file()
    dirs = SpeciesDirs(tmp_path / "out" / "Sp")
    dirs.prepare()
    run = sim.simulate_run(tx, tmp_path / "g", "SRR4000010", n_fragments=500, seed=5)
    result = t.quant_run.fn(_local(run, "paired").resolved, list(run.files), (index, targets), dirs.root)
    assert result.n_processed == 500
    assert list(kallisto.read_abundance(dirs.quant_dir("SRR4000010") / "abundance.tsv")) == targets


def _spearman(a: list[float], b: list[float]) -> float:
    import numpy as np
    import pandas as pd

    return float(np.corrcoef(pd.Series(a).rank(), pd.Series(b).rank())[0, 1])


def test_counts_follow_the_simulated_truth_and_equal_kallisto_run_by_hand(tmp_path):
    """Simulated runs with known true fragment counts per transcript (isoforms share exons, 0.5% errors): the
    pipeline's est_counts rank like the truth (Spearman >= 0.95 on expressed transcripts) and are exactly what
    kallisto gives when run by hand on the same files; run_info.json names the final directory, not a temp one."""
    import json
    import subprocess

    fasta = tmp_path / "tx.fa"
    tx = sim.make_transcriptome(fasta, n_genes=40, seed=21)
    index, targets = kallisto.ensure_index(fasta, tmp_path / "cache")
    dirs = SpeciesDirs(tmp_path / "out" / "Sp")
    dirs.prepare()
    for layout, run, seed in (("paired", "SRR4100001", 31), ("single", "SRR4100002", 32)):
        truth = sim.simulate_run(tx, tmp_path / "g", run, layout=layout, n_fragments=40_000, seed=seed)
        quantify_run(_local(truth, layout), index, targets, dirs)
        est = kallisto.read_abundance(dirs.quant_dir(run) / "abundance.tsv")
        expressed = [t for t, n in truth.true_counts.items() if n > 0]
        assert len(expressed) > 50
        rho = _spearman([truth.true_counts[t] for t in expressed], [est[t][0] for t in expressed])
        assert rho >= 0.95, f"{run} ({layout}): Spearman {rho:.3f} against the simulated truth"
        by_hand = tmp_path / "by-hand" / run
        by_hand.mkdir(parents=True)
        extra = ["--single", "-l", "250", "-s", "25"] if layout == "single" else []  # nominal_length 250
        subprocess.run(["kallisto", "quant", "-i", str(index), "-o", str(by_hand), "-t", "1", *extra,
                        *map(str, truth.files)], check=True, capture_output=True)  # fmt: skip
        assert est == kallisto.read_abundance(by_hand / "abundance.tsv")
        info = json.loads((dirs.quant_dir(run) / "run_info.json").read_text())
        assert ".tmp-" not in info["call"] and f"-o {dirs.quant_dir(run)} " in info["call"]
        assert ".tmp-" not in (dirs.quant_dir(run) / "provenance.jsonl").read_text()
        assert "pseudoaligned" in (dirs.quant_dir(run) / "tools.log").read_text()  # the tool's full output, kept


def test_a_defaulted_fragment_length_is_noted(tmp_path):
    fasta = tmp_path / "tx.fa"
    tx = sim.make_transcriptome(fasta, n_genes=5, seed=2)
    index, targets = kallisto.ensure_index(fasta, tmp_path / "cache")
    dirs = SpeciesDirs(tmp_path / "out" / "Sp")
    dirs.prepare()
    run = sim.simulate_run(tx, tmp_path / "g", "SRR4100003", layout="single", n_fragments=300, seed=3)
    local = _local(run, "single")
    local = LocalRun(ResolvedRun(Run(run.run, "Sp", "single", None), "explicit", local.resolved.files, "single", 0),
                     "single", run.files, 300, 0, 0.0)  # fmt: skip
    result = quantify_run(local, index, targets, dirs)
    assert result.notes and "defaulted to -l 200 -s 20" in result.notes[0] and "nominal_length missing" in result.notes[0]
    assert not quantify_run(_local(run, "single"), index, targets, dirs).notes  # nominal_length 250 given
