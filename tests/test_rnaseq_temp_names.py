"""RNA-seq writes its merged tables and rewritten run records through the one temp-name helper
(genoflows.files.atomic_output): unique temp names, so a second writer (or the leftover of one) at the name a
fixed-name scheme would use neither breaks the write nor gets renamed into place."""

from __future__ import annotations

import json

from genoflows.rnaseq.merge import merge_species
from genoflows.rnaseq.metadata import RunTable
from genoflows.rnaseq.stages import SpeciesDirs, _replace_in_file


def _quant(dirs: SpeciesDirs, run: str, count: float) -> None:
    d = dirs.quant_dir(run)
    d.mkdir(parents=True)
    (d / "abundance.tsv").write_text(f"target_id\tlength\teff_length\test_counts\ttpm\nt1\t100\t80\t{count!r}\t1.0\n")
    (d / "run_info.json").write_text('{"n_targets": 1, "n_processed": 10, "n_pseudoaligned": 9, "p_pseudoaligned": 90.0, '
                                     '"call": "kallisto quant -i /cache/kallisto/k1/transcripts.idx -o x a.fq"}')  # fmt: skip


def test_merged_tables_do_not_use_a_fixed_temp_name(tmp_path):
    dirs = SpeciesDirs(tmp_path / "Sp")
    dirs.prepare()
    _quant(dirs, "A", 1.5)
    # another writer's temp file sits where a fixed name (".<table>.tmp") would write: it must stay untouched
    dirs.merged.mkdir(parents=True)
    other = {k: dirs.merged / f".Sp_{k}.tsv.tmp" for k in ("est_counts", "tpm")}
    for path in other.values():
        path.write_text("another writer's partial table\n")
    m = merge_species(dirs, "Sp", RunTable(runs=[], rows=[{"run": "A"}], columns=["run"]), ["A"])
    assert m.est_counts.read_text().splitlines() == ["target_id\tA", "t1\t1.5"]
    assert all(p.read_text() == "another writer's partial table\n" for p in other.values())
    assert sorted(p.name for p in dirs.merged.iterdir()) == sorted([*(p.name for p in other.values()),
                                                                    "Sp_est_counts.tsv", "Sp_tpm.tsv"])  # fmt: skip


def test_run_records_are_rewritten_under_a_unique_temp_name(tmp_path):
    record = tmp_path / "run_info.json"
    record.write_text(json.dumps({"call": f"kallisto quant -o {tmp_path}/.tmp-SRR1-x"}))
    other = tmp_path / "run_info.json.tmp"
    other.write_text("another writer's partial record")
    _replace_in_file(record, f"{tmp_path}/.tmp-SRR1-x", f"{tmp_path}/SRR1")
    assert json.loads(record.read_text()) == {"call": f"kallisto quant -o {tmp_path}/SRR1"}
    assert other.read_text() == "another writer's partial record"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_info.json", "run_info.json.tmp"]
