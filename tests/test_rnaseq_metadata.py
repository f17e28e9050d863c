"""Run table parsing and validation, species configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.rnaseq_quant import SpeciesConfig, parse_size
from genoflows.rnaseq.config import ConfigError, load_configs
from genoflows.rnaseq.metadata import (
    MetadataError,
    load_runs,
    read_metadata,
    runs_from_accessions,
    species_dirname,
)
from genoflows.testing.rnaseq_world import write_metadata

BASE = {"scientific_name": "Camponotus floridanus", "lib_layout": "paired", "exclusion": "no", "is_sampled": "yes"}


def table(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "metadata.tsv"
    write_metadata(path, rows)
    return path


def test_reads_amalgkit_table_honouring_exclusion_and_is_sampled(tmp_path):
    rows = [
        {**BASE, "run": "SRR1000001", "nominal_length": "300"},
        {**BASE, "run": "SRR1000002", "exclusion": "low_mapping_rate"},
        {**BASE, "run": "SRR1000003", "is_sampled": "no"},
        {**BASE, "run": "SRR1000004", "lib_layout": "single", "exclusion": ""},
        {**BASE, "run": "SRR1000005", "scientific_name": "Solenopsis invicta"},
    ]
    t = read_metadata(table(tmp_path, rows), "Camponotus floridanus")
    assert [r.run for r in t.runs] == ["SRR1000001", "SRR1000004"]
    assert t.runs[0].species == "Camponotus_floridanus" and t.runs[0].nominal_length == 300
    assert t.runs[1].layout == "single"
    assert dict(t.skipped) == {"SRR1000002": "excluded: low_mapping_rate", "SRR1000003": "not sampled (is_sampled=no)"}
    assert len(t.rows) == 4  # the species' rows, for the output metadata.tsv


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("run\tscientific_name\nSRR1000001\tX y\n")
    with pytest.raises(MetadataError, match="required column.*lib_layout"):
        read_metadata(path)


def test_all_row_problems_reported_at_once(tmp_path):
    rows = [
        {**BASE, "run": "SRR1000001"},
        {**BASE, "run": "SRR1000001"},
        {**BASE, "run": "SRR1000002", "lib_layout": "triple"},
        {**BASE, "run": "../../etc"},
        {**BASE, "run": "/abs/path"},
    ]
    with pytest.raises(MetadataError) as err:
        read_metadata(table(tmp_path, rows))
    msg = str(err.value)
    assert "4 problem(s)" in msg and "duplicate run SRR1000001" in msg and "unknown lib_layout 'triple'" in msg
    assert "'../../etc'" in msg and "'/abs/path'" in msg


def test_explicit_uris_allow_non_accession_names_but_not_path_tricks(tmp_path):
    rows = [{**BASE, "run": "lab_sample-1", "fastq_uris": "s3://b/a_1.fq.gz;s3://b/a_2.fq.gz"}]
    t = read_metadata(table(tmp_path, rows))
    assert t.runs[0].uris == ("s3://b/a_1.fq.gz", "s3://b/a_2.fq.gz")
    with pytest.raises(MetadataError, match="unsafe"):
        read_metadata(table(tmp_path, [{**BASE, "run": "..", "fastq_uris": "/x.fq"}]))


def test_unknown_species_and_unreadable_file(tmp_path):
    with pytest.raises(MetadataError, match="no rows with scientific_name"):
        read_metadata(table(tmp_path, [{**BASE, "run": "SRR1000001"}]), "Apis mellifera")
    with pytest.raises(MetadataError, match="cannot read metadata"):
        read_metadata(tmp_path / "missing.tsv")


def test_accession_list():
    t = load_runs(["SRR1000001", "ERR2000002"], "Apis mellifera")
    assert [(r.run, r.species, r.layout) for r in t.runs] == [
        ("SRR1000001", "Apis_mellifera", None), ("ERR2000002", "Apis_mellifera", None)]  # fmt: skip
    with pytest.raises(MetadataError, match="not an SRA"):
        runs_from_accessions(["SRR1", "hello"], "X y")
    with pytest.raises(MetadataError):
        species_dirname("../evil")


def test_species_configs(tmp_path):
    (tmp_path / "meta").mkdir()
    cfg = tmp_path / "project.yaml"
    cfg.write_text(
        "out_dir: out\ndisk_budget: 500MB\nmax_downloads: 2\nspecies:\n"
        "  - {species: Apis mellifera, metadata: meta/am.tsv, transcriptome: am.fa}\n"
        "  - {species: Solenopsis invicta, metadata: [SRR1000001], transcriptome: s3://b/si.fa, disk_budget: 40GB}\n"
    )
    a, b = load_configs(str(cfg), SpeciesConfig)
    assert a.metadata == str(tmp_path / "meta/am.tsv") and a.out_dir == str(tmp_path / "out")
    assert parse_size(a.disk_budget) == 500 * 10**6 and parse_size(b.disk_budget) == 40 * 10**9 and b.max_downloads == 2
    assert b.metadata == ["SRR1000001"] and b.transcriptome == "s3://b/si.fa"
    single = tmp_path / "one.yaml"
    single.write_text("species: Apis mellifera\nmetadata: m.tsv\ntranscriptome: t.fa\nsources: [aws]\n")
    assert load_configs([str(single)], SpeciesConfig)[0].sources == ["aws"]
    single.write_text("species: Apis mellifera\nmetadata: m.tsv\ntranscriptome: t.fa\nsources: [ftp]\n")
    with pytest.raises(ConfigError, match="one.yaml"):
        load_configs([str(single)], SpeciesConfig)
    with pytest.raises(ConfigError, match="cannot read"):
        load_configs([str(tmp_path / "nope.yaml")], SpeciesConfig)
    assert SpeciesConfig(species="x y", metadata="m", transcriptome="t", disk_budget=123).disk_budget == 123


def test_species_yaml_takes_exactly_the_flow_parameters(tmp_path):
    """One definition: a YAML entry accepts what rnaseq_quant accepts (names, limits, defaults), nothing else."""
    import inspect

    import yaml

    from flows.rnaseq_quant import SHARED, rnaseq_quant

    assert set(SHARED) == {"shared_limit", "aws_credentials", "batch"}  # set once for all species by the parent flow
    params = {k: v for k, v in inspect.signature(rnaseq_quant.fn).parameters.items() if k not in SHARED}
    assert list(SpeciesConfig.model_fields) == list(params)
    for name, p in params.items():
        if p.default is not p.empty:
            assert SpeciesConfig.model_fields[name].default == p.default, name
    cfg = tmp_path / "p.yaml"
    required = "species: Apis mellifera\nmetadata: m.tsv\ntranscriptome: t.fa\n"
    cfg.write_text(required + "max_downloads: 100\nfragment_length: 180\n")
    (c,) = load_configs(str(cfg), SpeciesConfig)
    assert c.max_downloads == 100 and c.fragment_length == 180
    assert rnaseq_quant.validate_parameters(c.model_dump())["max_downloads"] == 100
    for bad in ("max_downloads: 300", "threads: 0", "disk_budget: lots", "disk_budget: 0", "sources: []", "sources: [ftp]", "fragment_length: 0", "bogus: 1"):
        cfg.write_text(required + bad + "\n")
        with pytest.raises(ConfigError, match="p.yaml"):
            load_configs(str(cfg), SpeciesConfig)
        with pytest.raises(Exception, match="(?i)validation|parameter"):
            rnaseq_quant.validate_parameters({**yaml.safe_load(required), **yaml.safe_load(bad)})


def test_excel_bom_and_crlf_metadata_is_read(tmp_path):
    """Excel saves UTF-8 with a byte-order mark and CRLF line ends: the first column must still be found."""
    path = tmp_path / "metadata.tsv"
    text = "scientific_name\trun\tlib_layout\r\nCamponotus floridanus\tSRR1000001\tpaired\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    t = read_metadata(path, "Camponotus floridanus")
    assert [r.run for r in t.runs] == ["SRR1000001"] and t.columns[0] == "scientific_name"


def test_the_run_form_describes_every_parameter_and_shows_sizes_as_text():
    """The Prefect UI builds the run form from the flow's schema: every parameter has a description (Args
    docstrings) and the disk budget's default reads "40GB", not 40000000000."""
    from flows.rnaseq_quant import rnaseq_multi_species, rnaseq_quant

    for fl in (rnaseq_quant, rnaseq_multi_species):
        props = fl.parameters.model_dump()["properties"]
        assert all(p.get("description") for p in props.values()), [k for k, p in props.items() if not p.get("description")]
    assert rnaseq_quant.parameters.model_dump()["properties"]["disk_budget"]["default"] == "40GB"
    assert parse_size("40GB") == 40 * 10**9 and parse_size(123) == 123
