"""Bad input to genoflows-regenie: one regenie-style ``ERROR:`` line naming the file or option, exit 1, the
same line in ``<out>.log``, and no output file written (issue 8, "Bad input")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.regenie_golden import EXAMPLE, needs_example, regenie_example, run_cli  # noqa: F401

pytestmark = needs_example


def _copy_set(dst: Path, prefix: str, exts: tuple[str, ...]) -> Path:
    for ext in exts:
        shutil.copy(EXAMPLE / f"{prefix}{ext}", dst / f"{prefix}{ext}")
    return dst / prefix


def _step2(geno: list, tmp_path: Path, *extra, pheno: Path | None = None, bt: bool = False) -> list:
    return ["--step", "2", *geno, "--phenoFile", pheno or EXAMPLE / ("phenotype_bin.txt" if bt else "phenotype.txt"),
            "--covarFile", EXAMPLE / "covariates.txt", "--bsize", "100", "--bt" if bt else "--qt",
            *extra, "--out", tmp_path / "out"]


def _expect_error(args: list, tmp_path: Path, monkeypatch, capsys, *needles: str) -> str:
    rc = run_cli(args, monkeypatch, cwd=tmp_path)
    printed = capsys.readouterr().out
    errors = [ln for ln in printed.splitlines() if ln.startswith("ERROR: ")]
    assert rc == 1, printed
    assert len(errors) == 1, printed
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert errors[0] in (tmp_path / "out.log").read_text()
    assert not list(tmp_path.glob("out_*")), "no result file may be written on an error"
    return errors[0]


def test_missing_genotype_file(tmp_path, monkeypatch, capsys):
    _expect_error(_step2(["--bed", tmp_path / "nope"], tmp_path, "--ignore-pred"), tmp_path, monkeypatch, capsys,
                  str(tmp_path / "nope.bed"))


def test_truncated_bed(tmp_path, monkeypatch, capsys):
    pfx = _copy_set(tmp_path, "example_3chr", (".bed", ".bim", ".fam"))
    data = (tmp_path / "example_3chr.bed").read_bytes()
    (tmp_path / "example_3chr.bed").write_bytes(data[: len(data) - 125])  # one variant short
    _expect_error(_step2(["--bed", pfx], tmp_path, "--ignore-pred"), tmp_path, monkeypatch, capsys,
                  "example_3chr.bed", "truncated")


@pytest.mark.parametrize("which", [".bim", ".fam"])
def test_bim_fam_rows_disagree_with_bed_size(which, tmp_path, monkeypatch, capsys):
    pfx = _copy_set(tmp_path, "example_3chr", (".bed", ".bim", ".fam"))
    f = tmp_path / f"example_3chr{which}"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:-1] if which == ".bim" else lines + ["999 999 0 0 1 -9"]) + "\n")
    _expect_error(_step2(["--bed", pfx], tmp_path, "--ignore-pred"), tmp_path, monkeypatch, capsys,
                  "example_3chr.bed", f"example_3chr{which}")


def test_truncated_bgen_with_and_without_index(tmp_path, monkeypatch, capsys):
    data = (EXAMPLE / "example.bgen").read_bytes()
    (tmp_path / "a.bgen").write_bytes(data[: len(data) // 2])
    shutil.copy(EXAMPLE / "example.bgen.bgi", tmp_path / "a.bgen.bgi")
    _expect_error(_step2(["--bgen", tmp_path / "a.bgen"], tmp_path, "--ignore-pred"), tmp_path, monkeypatch, capsys,
                  "a.bgen", "truncated")
    (tmp_path / "a.bgen.bgi").unlink()
    (tmp_path / "out.log").unlink()
    _expect_error(_step2(["--bgen", tmp_path / "a.bgen"], tmp_path, "--ignore-pred"), tmp_path, monkeypatch, capsys,
                  "a.bgen", "truncated")


def test_truncated_pgen(tmp_path, monkeypatch, capsys):
    pfx = _copy_set(tmp_path, "example", (".pvar", ".psam"))
    data = (EXAMPLE / "example.pgen").read_bytes()
    (tmp_path / "example.pgen").write_bytes(data[: len(data) // 2])
    _expect_error(_step2(["--pgen", pfx], tmp_path, "--ignore-pred"), tmp_path, monkeypatch, capsys,
                  "example.pgen")


def test_phenotype_column_that_does_not_exist(tmp_path, monkeypatch, capsys):
    _expect_error(_step2(["--bed", EXAMPLE / "example_3chr"], tmp_path, "--ignore-pred", "--phenoCol", "Y9"),
                  tmp_path, monkeypatch, capsys, "'Y9'", "phenotype.txt")


def test_binary_trait_with_other_values(tmp_path, monkeypatch, capsys):
    lines = (EXAMPLE / "phenotype_bin.txt").read_text().splitlines()
    f = lines[7].split()
    f[2] = "2"
    lines[7] = " ".join(f)
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    err = _expect_error(_step2(["--bed", EXAMPLE / "example_3chr"], tmp_path, "--ignore-pred", pheno=tmp_path / "p.txt",
                               bt=True), tmp_path, monkeypatch, capsys, "0/1/NA", "p.txt")
    assert f"FID={f[0]} IID={f[1]}" in err


def test_no_sample_shared(tmp_path, monkeypatch, capsys):
    lines = (EXAMPLE / "phenotype.txt").read_text().splitlines()
    renamed = [lines[0]] + ["x" + ln for ln in lines[1:]]
    (tmp_path / "p.txt").write_text("\n".join(renamed) + "\n")
    _expect_error(_step2(["--bed", EXAMPLE / "example_3chr"], tmp_path, "--ignore-pred", pheno=tmp_path / "p.txt"),
                  tmp_path, monkeypatch, capsys, "no sample", "p.txt")


def test_pred_list_pointing_at_missing_loco(tmp_path, monkeypatch, capsys):
    (tmp_path / "pred.list").write_text(f"Y1 {tmp_path / 'gone_1.loco'}\nY2 {EXAMPLE / 'golden' / 'qt3_step1_2.loco'}\n")
    _expect_error(_step2(["--bed", EXAMPLE / "example_3chr"], tmp_path, "--pred", tmp_path / "pred.list"),
                  tmp_path, monkeypatch, capsys, "gone_1.loco", "pred.list")


def test_chromosome_with_no_variant_left(tmp_path, monkeypatch, capsys):
    _expect_error(_step2(["--bed", EXAMPLE / "example_3chr"], tmp_path, "--ignore-pred", "--chr", "5"),
                  tmp_path, monkeypatch, capsys, "chromosome 5", "--chr")
    (tmp_path / "out.log").unlink()
    (tmp_path / "ids.txt").write_text("mog_0\n")  # a chr-1 variant only
    _expect_error(_step2(["--bed", EXAMPLE / "example_3chr"], tmp_path, "--ignore-pred", "--chr", "2", "--extract",
                         tmp_path / "ids.txt"), tmp_path, monkeypatch, capsys, "chromosome 2")


def test_step2_without_pred_or_ignore_pred(tmp_path, monkeypatch, capsys):
    _expect_error(_step2(["--bed", EXAMPLE / "example_3chr"], tmp_path), tmp_path, monkeypatch, capsys,
                  "--pred", "--ignore-pred")


@pytest.mark.parametrize(
    ("option", "needle"),
    [(["--spa"], "--spa"), (["--gz"], "--gz"), (["--no-such-thing"], "--no-such-thing"), (["--bsize", "x"], "--bsize"),
     (["--firth"], "--approx")],
)
def test_unsupported_or_malformed_option_is_named(option, needle, tmp_path, monkeypatch, capsys):
    _expect_error(_step2(["--bed", EXAMPLE / "example_3chr"], tmp_path, "--ignore-pred", *option, bt=True),
                  tmp_path, monkeypatch, capsys, needle)


def test_console_script_help_and_exit_status(tmp_path):
    """The installed entry point: --help lists the supported options; an error exits 1 on stdout."""
    exe = Path(sys.executable).with_name("genoflows-regenie")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "genoflows.regenie.cli"]
    helptext = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True).stdout
    for opt in ("--step", "--bed", "--pgen", "--bgen", "--sample", "--phenoFile", "--phenoColList", "--covarColList",
                "--catCovarList", "--bt", "--bsize", "--loocv", "--l0", "--lowmem", "--keep", "--extract", "--pred",
                "--ignore-pred", "--chrList", "--range", "--minMAC", "--firth", "--approx", "--pThresh",
                "--use-relative-path", "--threads", "--out"):
        assert opt in helptext
    bad = subprocess.run([*cmd, "--step", "2", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stdout.strip().splitlines()[-1].startswith("ERROR: ")
