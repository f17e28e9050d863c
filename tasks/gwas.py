"""Prefect tasks of the GWAS flow: thin wrappers over genoflows.gwas (domain code) and the regenie tool module."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from genoflows.batch import BatchPermanentError
from genoflows.gwas import storage
from genoflows.gwas.inputs import InputError, read_pred_list, write_pred_list
from genoflows.gwas.manifest import SAFE_ID, Manifest, ManifestError, load_manifest
from genoflows.gwas.merge import merge_text, write_gz
from genoflows.gwas.plan import Unit
from genoflows.gwas.report import lambda_gc, lead_table, manhattan_png, qq_png, read_results, top_hits
from genoflows.gwas.stage import StagedInputs, stage_inputs
from genoflows.gwas.steps import StepError, is_done, marker, run_step1, run_step2_unit, unit_outputs
from genoflows.settings import get_settings
from genoflows.toolrun import ToolError
from genoflows.tools.regenie import Engine, RegenieInputs, resolve_engine
from tasks.runtime import run_logger
from tasks.tooling import run_logged, where_tools_run

if TYPE_CHECKING:
    from blocks.aws_batch import AwsBatch
    from blocks.tool_images import ToolImages


@dataclass(frozen=True)
class RunLayout:
    """`<out_dir>/<experimentId>/<run-id>/`: computed in `work` (local), published to `uri`."""

    uri: str
    work: Path

    @classmethod
    def for_run(cls, out_dir: str, experiment_id: str, run_id: str) -> RunLayout:
        if not SAFE_ID.match(run_id):
            raise ValueError(f"run_id {run_id!r}: use letters, digits, '.', '_' and '-' only (it names a folder)")
        if storage.is_s3(out_dir):
            work = get_settings().data_dir / "gwas" / experiment_id / run_id
            return cls(storage.join(out_dir, experiment_id, run_id), work.resolve())
        path = (Path(out_dir) / experiment_id / run_id).resolve()
        return cls(str(path), path)

    @property
    def remote(self) -> bool:
        return storage.is_s3(self.uri)


class ManifestChanged(RuntimeError):
    """The manifest object is no longer the version this run was started for."""


@task(name="read-manifest")
def read_manifest(manifest: str | dict, expected_etag: str | None = None, aws_credentials=None) -> tuple[Manifest, str]:
    """The manifest from a URI (s3:// or path) or given inline; with `expected_etag` only that exact version."""
    if isinstance(manifest, dict):
        return load_manifest(manifest, "(given inline)"), "(inline)"
    client = storage.client_for(aws_credentials) if storage.is_s3(manifest) else None
    info = storage.stat(manifest, client)
    if info is None:
        raise ManifestError(f"manifest {manifest} does not exist")
    if expected_etag and info.etag != expected_etag:
        raise ManifestChanged(
            f"manifest {manifest} changed since this run was started (ETag {info.etag}, expected {expected_etag}); "
            "the watcher starts a separate run for the new version"
        )
    return load_manifest(storage.read_text(manifest, client), manifest), manifest


@task(name="stage-inputs")
def stage(m: Manifest, layout: RunLayout, aws_credentials=None) -> StagedInputs:
    """Every referenced file checked, staged and validated before any compute (InputError names the file)."""
    client = storage.client_for(aws_credentials) if storage.is_s3(m.s3_path) else None
    staged = stage_inputs(m, layout.work, run=_runner(layout.work), client=client)
    log = run_logger()
    log.info("chromosomes: %s", ", ".join(f"{c.name} ({c.n_variants})" for c in staged.chromosomes))
    for note in staged.notes:
        log.info(note)
    return staged


@task(name="pick-engine")
def pick_engine(choice: str) -> Engine:
    engine = resolve_engine(choice)
    run_logger().info("engine: %s", engine.describe())
    return engine


def _runner(work: Path, mounts: tuple[Path, ...] = ()):
    def run(argv: list[str]):
        return run_logged(argv, provenance_dir=work, mounts=[work, *mounts])

    return run


def _mounts(inp: RegenieInputs) -> tuple[Path, ...]:
    paths = [inp.geno_path, inp.pheno_file, inp.sample_file, inp.covar_file, inp.keep, inp.remove, inp.extract,
             inp.exclude]
    return tuple({Path(p).resolve().parent for p in paths if p})


@task(name="regenie-step1")
def step1(engine: Engine, inp: RegenieInputs, layout: RunLayout, aws_credentials=None) -> Path:
    """Step 1 once, on the whole genome; with an s3:// out_dir its outputs are kept there as soon as they exist,
    so a retry on a fresh container reuses them instead of fitting again."""
    step1_dir = layout.work / "step1"
    if layout.remote and not (step1_dir / "fit_pred.list").exists():
        _restore_step1(layout, step1_dir, aws_credentials)
    pred = run_step1(engine, inp, step1_dir, _runner(layout.work, _mounts(inp)))
    if layout.remote:
        client = storage.client_for(aws_credentials)
        for _, loco in read_pred_list(pred, str(pred)):
            storage.upload(Path(loco), storage.join(layout.uri, "step1", Path(loco).name), client)
        storage.upload(pred, storage.join(layout.uri, "step1", pred.name), client)  # last: marks step 1 done
    return pred


def _restore_step1(layout: RunLayout, step1_dir: Path, aws_credentials) -> None:
    client = storage.client_for(aws_credentials)
    remote_pred = storage.join(layout.uri, "step1", "fit_pred.list")
    if not storage.exists(remote_pred, client):
        return
    tmp = storage.download(remote_pred, step1_dir / "remote_pred.list", client)
    rows = []
    for trait, loco in read_pred_list(tmp, remote_pred):
        name = Path(loco).name
        rows.append((trait, storage.download(storage.join(layout.uri, "step1", name), step1_dir / name, client)))
    write_pred_list(step1_dir / "fit_pred.list", rows)


def _retry_step2(task, task_run, state) -> bool:
    """Retry a chromosome that died (killed, out of memory, crashed); not one regenie refused (exit 1), nor a
    Batch job the executor calls permanent (regenie's own failure, out of memory, no such queue, access denied);
    a Batch job whose host went away is retried."""
    try:
        state.result()
    except (InputError, StepError, BatchPermanentError):
        return False
    except ToolError as exc:
        return exc.returncode != 1
    except BaseException:  # noqa: BLE001 - anything else may be transient
        return True
    return False


@task(name="regenie-step2", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_step2,
      task_run_name="step2-{unit.key}")
def step2(engine: Engine, inp: RegenieInputs, pred: Path, unit: Unit, layout: RunLayout, aws_credentials=None,
          batch: AwsBatch | None = None, tool_images: ToolImages | None = None) -> dict:
    """One chromosome (or --range chunk): its own task run, retried when it dies, skipped when already done.

    Runs on the fan-out runner, possibly in a Dask/Ray worker process that does not see the flow's context: the
    flow's `batch` and `tool_images` blocks come as parameters and are applied here (tasks.tooling)."""
    step2_dir = layout.work / "step2"
    if layout.remote and not is_done(step2_dir, unit, inp.pheno_columns):
        _restore_unit(layout, unit, inp.pheno_columns, aws_credentials)
    # The .loco files named inside the pred list are inputs too (mounted in an image, staged for a Batch job).
    locos = tuple(Path(loco) for _, loco in read_pred_list(pred, str(pred)))
    with where_tools_run(batch, tool_images):
        record = run_step2_unit(engine, inp, pred, unit, step2_dir,
                                _runner(layout.work, _mounts(inp) + (pred.parent, *locos)))
    if layout.remote and not record.get("skipped"):
        client = storage.client_for(aws_credentials)
        for path in [*unit_outputs(step2_dir, unit, inp.pheno_columns).values(), marker(step2_dir, unit)]:
            storage.upload(path, storage.join(layout.uri, "step2", path.name), client)
    return record


def _restore_unit(layout: RunLayout, unit: Unit, traits: tuple[str, ...], aws_credentials) -> None:
    """A unit finished by an earlier attempt on another machine: bring its outputs back instead of rerunning."""
    client = storage.client_for(aws_credentials)
    step2_dir = layout.work / "step2"
    names = [p.name for p in [*unit_outputs(step2_dir, unit, traits).values(), marker(step2_dir, unit)]]
    if all(storage.exists(storage.join(layout.uri, "step2", n), client) for n in names):
        for n in names:
            storage.download(storage.join(layout.uri, "step2", n), step2_dir / n, client)


@task(name="merge-trait")
def merge_trait(trait: str, units: list[Unit], layout: RunLayout, names: dict[str, str]) -> tuple[Path, int]:
    """`<trait>.regenie.gz`: the units' outputs in file order, chromosome names restored."""
    parts = [layout.work / "step2" / f"{u.key}_{trait}.regenie" for u in units]
    text, rows = merge_text(parts, names)
    return write_gz(text, layout.work / f"{trait}.regenie.gz"), rows


@task(name="report-trait")
def report_trait(trait: str, merged: Path, layout: RunLayout, engine: Engine, experiment_id: str) -> dict:
    """Top hits (lead variant per locus), λGC, Manhattan and QQ PNGs next to the results, artifacts in the UI."""
    df = read_results(merged)
    lam = lambda_gc(df)
    hits = top_hits(df)
    leads = lead_table(hits)
    hits.table.to_csv(layout.work / f"{trait}.top_hits.tsv", sep="\t", index=False)
    title = f"{experiment_id} · {trait} · {engine.binary} {engine.version}"
    man = manhattan_png(df, layout.work / f"{trait}.manhattan.png", title)
    qq = qq_png(df, layout.work / f"{trait}.qq.png", title, lam)
    key = _artifact_key(experiment_id, trait)
    what = "genome-wide significant (LOG10P ≥ 7.3)" if hits.genome_wide else "none genome-wide; the 20 best"
    create_table_artifact(leads, key=f"{key}-top-hits",
                          description=f"{trait}: lead variants per locus, {what}; λGC {lam:.3f}; {engine.describe()}")
    return {"trait": trait, "lambda_gc": lam, "n_variants": len(df), "loci": len(leads),
            "genome_wide": hits.genome_wide, "manhattan": man, "qq": qq, "leads": leads[:5]}


def _artifact_key(*parts: str) -> str:
    import re

    return re.sub(r"[^a-z0-9-]+", "-", "-".join(["gwas", *parts]).lower()).strip("-")[:100]


@task(name="publish-run")
def publish(layout: RunLayout, aws_credentials=None) -> str:
    """Upload the run folder to s3:// out_dir (a no-op for a local out_dir)."""
    if not layout.remote:
        return layout.uri
    client = storage.client_for(aws_credentials)
    for path in sorted(layout.work.rglob("*")):
        rel = path.relative_to(layout.work).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith(("inputs/", "recoded", "vcf-as-pgen",
                                                                            "bgen-as-pgen", "genotypes")):
            storage.upload(path, storage.join(layout.uri, rel), client)
    return layout.uri


def image_markdown(reports: list[dict], layout: RunLayout, aws_credentials=None) -> str:
    """Markdown with the plots inline: presigned URLs for s3://, else the PNGs embedded as data URIs."""
    import base64

    lines = []
    for r in reports:
        lines.append(f"### {r['trait']}: λGC = {r['lambda_gc']:.3f}, {r['loci']} loci, {r['n_variants']} variants\n")
        for kind in ("manhattan", "qq"):
            path: Path = r[kind]
            if layout.remote:
                bucket, key = storage.split_s3_uri(storage.join(layout.uri, path.name))
                url = storage.client_for(aws_credentials).generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=7 * 24 * 3600)
            else:
                url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
            lines.append(f"![{r['trait']} {kind}]({url})\n")
        lines.append(f"Files: `{storage.join(layout.uri, path.name).rsplit('.', 2)[0]}.*`\n")
    return "\n".join(lines)


def write_run_record(layout: RunLayout, record: dict) -> Path:
    path = layout.work / "run.json"
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)
    return path


def create_report_artifacts(experiment_id: str, reports: list[dict], status_rows: list[dict], layout: RunLayout,
                            aws_credentials=None) -> None:
    key = _artifact_key(experiment_id)
    create_table_artifact(status_rows, key=f"{key}-chromosomes",
                          description=f"{experiment_id}: step 2 per chromosome (status, variants, engine)")
    if reports:
        create_markdown_artifact(image_markdown(reports, layout, aws_credentials), key=f"{key}-plots",
                                 description=f"{experiment_id}: Manhattan and QQ plots")

