"""regenie command lines: ONE argv builder for both binaries (the real `regenie` and `genoflows-regenie`).

The real regenie runs from PATH or from its image (`GENOFLOWS_TOOL_IMAGES={"regenie": "<registry>/rgcgithub/
regenie/regenie:v4.1.2.gz"}` or a ToolImages block); the built-in engine `genoflows-regenie` speaks the same
options and writes the same files. `resolve_engine` picks one and records which, with its version, so every
result says what made it. Nothing here runs a process except the version probe.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from genoflows.toolrun import image_for, tool_version, which

REAL = "regenie"
BUILTIN = "genoflows-regenie"
# Real regenie's image (registry host left to the lab's ToolImages block / GENOFLOWS_TOOL_IMAGES).
OFFICIAL_IMAGE_PATH = "rgcgithub/regenie/regenie:v4.1.2.gz"

STEP1_ONLY = {"--cv", "--loocv", "--l0", "--l1", "--lowmem"}
STEP2_ONLY = {"--minMAC", "--minINFO", "--firth", "--approx", "--spa", "--pThresh", "--test"}


class EngineUnavailable(RuntimeError):
    """The requested engine is neither on PATH nor configured as an image."""


@dataclass(frozen=True)
class Engine:
    """Which binary runs, and the version it reports (recorded next to every result)."""

    kind: Literal["regenie", "builtin"]
    binary: str
    version: str
    image: str | None = None

    def describe(self) -> str:
        where = f"image {self.image}" if self.image else "PATH"
        return f"{self.binary} {self.version} ({where})"


def _builtin_binary() -> str | None:
    return which(BUILTIN)


def resolve_engine(choice: Literal["auto", "regenie", "builtin"] = "auto") -> Engine:
    """auto = the real regenie when it is on PATH or has an image, else the built-in engine."""
    if choice not in ("auto", "regenie", "builtin"):
        raise ValueError(f"engine must be auto, regenie or builtin, got {choice!r}")
    if choice in ("auto", "regenie") and (which(REAL) or image_for(REAL)):
        return Engine("regenie", REAL, tool_version(REAL), image_for(REAL))
    if choice == "regenie":
        raise EngineUnavailable(
            "engine='regenie' but regenie is not on PATH and has no image: install it, set "
            f"GENOFLOWS_TOOL_IMAGES='{{\"regenie\": \"<registry>/{OFFICIAL_IMAGE_PATH}\"}}', or use engine='builtin'"
        )
    if _builtin_binary() is None:
        raise EngineUnavailable(
            f"the built-in engine ({BUILTIN}) is not installed: `pip install -e .` installs it with genoflows"
        )
    return Engine("builtin", BUILTIN, _builtin_version(), None)


def _builtin_version() -> str:
    """The genoflows package version plus what `genoflows-regenie --version` says it is compatible with."""
    try:
        version = metadata.version("genoflows")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "source-tree"
    binary = _builtin_binary()
    if binary:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
            text = (out.stdout + out.stderr).strip().splitlines()
            if out.returncode == 0 and text:
                return f"{version} {text[0].strip().removeprefix(BUILTIN).strip()}".strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return version


@dataclass(frozen=True)
class RegenieInputs:
    """Local paths and settings shared by step 1 and step 2 (what the manifest resolved to on this machine)."""

    geno_format: Literal["bed", "pgen", "bgen"]
    geno_path: Path  # prefix for bed/pgen, the file for bgen
    pheno_file: Path
    pheno_columns: tuple[str, ...]
    trait: Literal["qt", "bt"]
    sample_file: Path | None = None
    covar_file: Path | None = None
    covar_columns: tuple[str, ...] = ()
    cat_covar_columns: tuple[str, ...] = ()
    keep: Path | None = None
    remove: Path | None = None
    extract: Path | None = None
    exclude: Path | None = None
    options: dict = field(default_factory=dict)
    nauto: int | None = None  # only for > 22 recoded (non-human) chromosomes
    threads: int = 1


def _option_args(options: dict, step: int) -> list[str]:
    skip = STEP2_ONLY if step == 1 else STEP1_ONLY
    args: list[str] = []
    for name, value in options.items():
        if name in skip or name == "--bsize":
            continue
        args += [name] if value is True else [name, str(value)]
    return args


def common_args(inp: RegenieInputs, step: int) -> list[str]:
    flag = {"bed": "--bed", "pgen": "--pgen", "bgen": "--bgen"}[inp.geno_format]
    args = [flag, str(inp.geno_path)]
    if inp.sample_file:
        args += ["--sample", str(inp.sample_file)]
    args += ["--phenoFile", str(inp.pheno_file), "--phenoColList", ",".join(inp.pheno_columns)]
    if inp.covar_file:
        args += ["--covarFile", str(inp.covar_file)]
        if inp.covar_columns:
            args += ["--covarColList", ",".join(inp.covar_columns)]
        if inp.cat_covar_columns:
            args += ["--catCovarList", ",".join(inp.cat_covar_columns)]
    args += ["--bt"] if inp.trait == "bt" else ["--qt"]
    for opt, path in (("--keep", inp.keep), ("--remove", inp.remove), ("--extract", inp.extract),
                      ("--exclude", inp.exclude)):
        if path:
            args += [opt, str(path)]
    if inp.nauto:
        args += ["--nauto", str(inp.nauto)]
    bsize = inp.options.get("--bsize") or (1000 if step == 1 else 400)
    args += ["--bsize", str(bsize), "--threads", str(inp.threads)]
    return args + _option_args(inp.options, step)


def step1_argv(engine: Engine, inp: RegenieInputs, out: Path) -> list[str]:
    """Step 1 on the whole genome; never `--chr` (it would silently restrict the whole-genome model)."""
    return [engine.binary, "--step", "1", *common_args(inp, 1), "--out", str(out)]


def step2_argv(
    engine: Engine, inp: RegenieInputs, pred_list: Path, out: Path, *, chrom: str | None = None,
    region: tuple[str, int, int] | None = None,
) -> list[str]:
    """Step 2 for one chromosome (`--chr`) or one chunk of it (`--range CHR:MIN-MAX`)."""
    args = [engine.binary, "--step", "2", *common_args(inp, 2), "--pred", str(pred_list)]
    if inp.trait == "bt" and not {"--firth", "--spa"} & inp.options.keys():
        args += ["--firth", "--approx"]
    if region is not None:
        c, lo, hi = region
        args += ["--range", f"{c}:{lo}-{hi}"]
    elif chrom is not None:
        args += ["--chr", chrom]
    return [*args, "--out", str(out)]


def step1_outputs(out: Path) -> Path:
    return Path(f"{out}_pred.list")


def step2_outputs(out: Path, pheno_columns: tuple[str, ...]) -> dict[str, Path]:
    """trait -> `<out>_<trait>.regenie` (what regenie writes per trait without --gz/--no-split)."""
    return {p: Path(f"{out}_{p}.regenie") for p in pheno_columns}
