"""regenie step 1 and one step-2 unit, with the checks regenie itself does not make (no Prefect here).

regenie can exit 0 and still leave a trait out (no `.loco` when a level-1 fit fails, a trait skipped in step
2 without a prediction): every expected file is checked. A step-2 unit writes a `.done.json` marker only when
all its outputs are there, so a rerun redoes exactly the units without a marker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from genoflows.gwas.inputs import read_pred_list
from genoflows.gwas.plan import Unit
from genoflows.tools.regenie import (
    Engine,
    RegenieInputs,
    step1_argv,
    step1_outputs,
    step2_argv,
    step2_outputs,
)

RunTool = Callable[[list[str]], object]


class StepError(RuntimeError):
    """A step finished without the files it must write."""


def run_step1(engine: Engine, inp: RegenieInputs, out_dir: Path, run: RunTool) -> Path:
    """Step 1 once on the whole genome; returns the `_pred.list` after checking every trait has its `.loco`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "fit"
    pred = step1_outputs(out)
    if not _step1_complete(pred, inp.pheno_columns):
        run(step1_argv(engine, inp, out))
    if not pred.exists():
        raise StepError(f"step 1 exited 0 but wrote no {pred.name}; see {out}.log")
    _step1_complete(pred, inp.pheno_columns, strict=True)
    return pred


def _step1_complete(pred: Path, traits: tuple[str, ...], strict: bool = False) -> bool:
    if not pred.exists():
        return False
    rows = dict(read_pred_list(pred, str(pred)))
    missing = [t for t in traits if t not in rows]
    gone = [rows[t] for t in traits if t in rows and not Path(rows[t]).exists()]
    if strict and missing:
        raise StepError(
            f"step 1 made no predictions for trait(s) {missing} (regenie skips a trait whose level-1 model "
            f"does not converge); see {pred.with_name('fit.log')}"
        )
    if strict and gone:
        raise StepError(f"step 1 lists .loco files that do not exist: {gone}")
    return not missing and not gone


def marker(step2_dir: Path, unit: Unit) -> Path:
    return step2_dir / f"{unit.key}.done.json"


def unit_outputs(step2_dir: Path, unit: Unit, traits: tuple[str, ...]) -> dict[str, Path]:
    return step2_outputs(step2_dir / unit.key, traits)


def is_done(step2_dir: Path, unit: Unit, traits: tuple[str, ...]) -> bool:
    return marker(step2_dir, unit).exists() and all(p.exists() for p in unit_outputs(step2_dir, unit, traits).values())


def run_step2_unit(engine: Engine, inp: RegenieInputs, pred: Path, unit: Unit, step2_dir: Path, run: RunTool) -> dict:
    """One chromosome (or chunk): skipped when its marker and outputs exist, else run and checked."""
    traits = inp.pheno_columns
    outputs = unit_outputs(step2_dir, unit, traits)
    if is_done(step2_dir, unit, traits):
        return {**json.loads(marker(step2_dir, unit).read_text()), "skipped": True}
    step2_dir.mkdir(parents=True, exist_ok=True)
    region = (unit.code, *unit.region) if unit.region else None
    argv = step2_argv(engine, inp, pred, step2_dir / unit.key, chrom=None if region else unit.code, region=region)
    run(argv)
    missing = [t for t, p in outputs.items() if not p.exists()]
    if missing:
        raise StepError(
            f"chromosome {unit.chrom}: regenie exited 0 but wrote no results for trait(s) {missing}; "
            f"see {step2_dir / unit.key}.log"
        )
    rows = {t: max(0, sum(1 for _ in open(p)) - 1) for t, p in outputs.items()}
    record = {"unit": asdict(unit) | {"key": unit.key}, "rows": rows, "engine": engine.kind,
              "version": engine.version, "argv": argv, "skipped": False}
    tmp = marker(step2_dir, unit).with_suffix(".part")
    tmp.write_text(json.dumps(record, default=str))
    tmp.replace(marker(step2_dir, unit))
    return record
