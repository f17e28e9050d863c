"""From a manifest to local, checked inputs for regenie: everything is verified before any compute starts.

Order: every referenced file must exist (one error lists all missing ones with their manifest field) ->
files staged (s3:// downloaded and verified; a local s3Path is used in place) -> phenotypes, covariates and
sample ids checked -> chromosomes detected -> VCF converted to PGEN once -> non-human chromosome names
recoded to integers for regenie (mapped back when merging) -> a startStep 2 prediction list rewritten to
paths on this machine.
"""

from __future__ import annotations

import gzip
import json
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from genoflows.gwas import storage
from genoflows.gwas.chromosomes import Chromosome, GenotypeError, detect_chromosomes, read_variants
from genoflows.gwas.inputs import (
    InputError,
    check_covariates,
    check_phenotypes,
    check_sample_overlap,
    csv_to_phenotypes,
    genotype_sample_keys,
    read_pred_list,
    read_table,
    write_inline_phenotypes,
    write_pred_list,
)
from genoflows.gwas.manifest import Manifest, check_relative_path
from genoflows.gwas.plan import chromosome_codes
from genoflows.tools.regenie import RegenieInputs

RunTool = Callable[[list[str]], object]


@dataclass
class StagedInputs:
    regenie: RegenieInputs
    chromosomes: list[Chromosome]
    codes: dict[str, str]  # name -> code given to regenie
    empty_chromosomes: list[str]
    pred_list: Path | None = None  # startStep 2: rewritten to local paths
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> dict[str, str]:
        """code -> name, only when codes differ from names."""
        return {c: n for n, c in self.codes.items() if c != n}


def _genotype_files(m: Manifest) -> list[tuple[str, list[str]]]:
    """(manifest field, candidate relative paths: any one must exist) for every genotype file."""
    fmt, p = m.input_data.format, m.input_data.file_prefix
    if fmt == "bed":
        return [("inputData.filePrefix", [f"{p}.{e}"]) for e in ("bed", "bim", "fam")]
    if fmt == "pgen":
        return [("inputData.filePrefix", [f"{p}.pgen"]),
                ("inputData.filePrefix", [f"{p}.pvar", f"{p}.pvar.zst", f"{p}.pvar.gz"]),
                ("inputData.filePrefix", [f"{p}.psam"])]
    if fmt == "bgen":
        return [("inputData.filePrefix", [p] if p.endswith(".bgen") else [f"{p}.bgen", p])]
    return [("inputData.filePrefix", [p] if p.endswith((".vcf", ".vcf.gz", ".bcf"))
             else [f"{p}.vcf.gz", f"{p}.vcf", f"{p}.bcf", f"{p}.vcf.bgz"])]


def referenced_files(m: Manifest) -> list[tuple[str, list[str]]]:
    """Every file the manifest points at, as (field, alternatives)."""
    out = _genotype_files(m)
    for name, rel in (("inputData.sampleFile", m.input_data.sample_file), ("phenotype.file", m.phenotype.file),
                      ("covariates.file", m.covariates.file if m.covariates else None),
                      ("predictionList", m.prediction_list if m.start_step == 2 else None),
                      ("keep", m.keep), ("remove", m.remove), ("extract", m.extract), ("exclude", m.exclude)):
        if rel:
            out.append((name, [rel]))
    return out


def check_files_exist(m: Manifest, client=None) -> dict[str, str]:
    """relative path -> URI for each referenced file; InputError listing every missing one."""
    found, missing = {}, []
    for fieldname, alternatives in referenced_files(m):
        for rel in alternatives:
            if storage.exists(m.uri(rel), client):
                found[rel] = m.uri(rel)
                break
        else:
            missing.append(f"  {fieldname}: {m.uri(alternatives[0])}"
                           + (f" (also tried {', '.join(alternatives[1:])})" if len(alternatives) > 1 else ""))
    if missing:
        raise InputError(f"manifest {m.experiment_id}: referenced file(s) not found:\n" + "\n".join(missing))
    # optional companions: a BGEN index, VCF index
    for rel in list(found):
        for ext in (".bgi", ".tbi", ".csi"):
            if (rel.endswith(".bgen") and ext == ".bgi") or (ext != ".bgi" and rel.endswith((".vcf.gz", ".bcf"))):
                if storage.exists(m.uri(rel + ext), client):
                    found[rel + ext] = m.uri(rel + ext)
    return found


def _localize(m: Manifest, found: dict[str, str], inputs_dir: Path, client) -> dict[str, Path]:
    if not storage.is_s3(m.s3_path):
        return {rel: Path(uri).resolve() for rel, uri in found.items()}
    out = {}
    for rel, uri in found.items():
        out[rel] = storage.download(uri, inputs_dir / rel, client)
    return out


def _plain_pvar(local: dict[str, Path], prefix: str, work: Path, run: RunTool) -> Path:
    """A PGEN prefix whose .pvar is plain text (regenie reads only plain .pvar)."""
    pgen, psam = local[f"{prefix}.pgen"], local[f"{prefix}.psam"]
    if f"{prefix}.pvar" in local:
        pvar = local[f"{prefix}.pvar"]
        if pgen.parent == pvar.parent == psam.parent and pgen.name[:-5] == pvar.name[:-5] == psam.name[:-5]:
            return pgen.with_suffix("")
    base = work / "genotypes"
    for src, ext in ((pgen, ".pgen"), (psam, ".psam")):
        _link(src, Path(f"{base}{ext}"))
    dest = Path(f"{base}.pvar")
    if not dest.exists():
        if f"{prefix}.pvar" in local:
            _link(local[f"{prefix}.pvar"], dest)
        elif f"{prefix}.pvar.gz" in local:
            with gzip.open(local[f"{prefix}.pvar.gz"], "rb") as src, open(f"{dest}.part", "wb") as out:
                out.write(src.read())
            os.replace(f"{dest}.part", dest)
        else:
            run(["plink2", "--zst-decompress", str(local[f"{prefix}.pvar.zst"]), f"{dest}.part"])
            os.replace(f"{dest}.part", dest)
    return base


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        if dest.resolve() == src.resolve():
            return
        dest.unlink()
    os.symlink(src.resolve(), dest)


def _vcf_dosage_field(path: Path) -> str | None:
    import pysam

    with pysam.VariantFile(str(path)) as vf:
        return "DS" if "DS" in vf.header.formats else None


def _recode(fmt: str, geno: Path, codes: dict[str, str], work: Path, run: RunTool,
            sample_file: Path | None, id_delim: str | None, threads: int) -> tuple[str, Path]:
    """A copy of the genotypes whose chromosome column holds regenie's integer codes."""
    from genoflows.tools.plink2 import to_pgen_argv

    base = work / "recoded"
    if fmt == "bed":
        _link(Path(f"{geno}.bed"), Path(f"{base}.bed"))
        _link(Path(f"{geno}.fam"), Path(f"{base}.fam"))
        _rewrite_chrom(Path(f"{geno}.bim"), Path(f"{base}.bim"), codes, bim=True)
        return "bed", base
    if fmt == "bgen":
        conv = work / "bgen-as-pgen"
        if not Path(f"{conv}.pgen").exists():
            run(to_pgen_argv("bgen", geno, conv, sample_file=sample_file, id_delim=id_delim, threads=threads))
        geno = conv
    _link(Path(f"{geno}.pgen"), Path(f"{base}.pgen"))
    _link(Path(f"{geno}.psam"), Path(f"{base}.psam"))
    _rewrite_chrom(Path(f"{geno}.pvar"), Path(f"{base}.pvar"), codes, bim=False)
    return "pgen", base


def _rewrite_chrom(src: Path, dest: Path, codes: dict[str, str], *, bim: bool) -> None:
    tmp = dest.with_name(dest.name + ".part")
    with open(src) as fin, open(tmp, "w") as fout:
        for line in fin:
            if line.startswith("##"):
                if not line.startswith("##contig"):
                    fout.write(line)
                continue
            if line.startswith("#") and not bim:
                fout.write(line)
                continue
            chrom, sep, rest = line.partition("\t") if "\t" in line else line.partition(" ")
            fout.write(f"{codes.get(chrom, chrom)}{sep}{rest}")
    tmp.replace(dest)


def _id_set(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


def stage_inputs(m: Manifest, work: Path, *, run: RunTool, client=None, threads: int | None = None) -> StagedInputs:
    """Check, stage and prepare every input of `m` under `work` (see the module docstring for the order)."""
    work.mkdir(parents=True, exist_ok=True)
    found = check_files_exist(m, client)
    local = _localize(m, found, work / "inputs", client)
    fmt, prefix = m.input_data.format, m.input_data.file_prefix
    threads = threads or m.resources.vcpus
    notes: list[str] = []

    # genotypes: the path regenie will read
    sample_file = local.get(m.input_data.sample_file) if m.input_data.sample_file else None
    if fmt == "bed":
        geno = local[f"{prefix}.bed"].with_suffix("")
        variant_file = Path(f"{geno}.bim")
        for ext in (".bim", ".fam"):
            if local[f"{prefix}{ext}"].with_suffix("") != geno:
                raise InputError(f"{prefix}: .bed/.bim/.fam must sit side by side")
    elif fmt == "pgen":
        geno = _plain_pvar(local, prefix, work, run)
        variant_file = Path(f"{geno}.pvar")
    else:
        geno = next(local[rel] for rel in _genotype_files(m)[0][1] if rel in local)
        variant_file = geno
    label = m.uri(prefix)
    geno_keys = genotype_sample_keys(fmt, geno, sample_file)

    # phenotypes / covariates
    pheno_dir = work / "inputs"
    pheno_dir.mkdir(parents=True, exist_ok=True)
    ph = m.phenotype
    if ph.samples is not None:
        pheno_file = write_inline_phenotypes(pheno_dir / "phenotype.inline.txt", ph.columns[0], ph.samples)
        pheno_label = "phenotype.samples"
    elif ph.csv_id_column:
        pheno_file = csv_to_phenotypes(local[ph.file], pheno_dir / "phenotype.from-csv.txt", ph.csv_id_column,
                                       ph.columns, m.uri(ph.file))
        pheno_label = m.uri(ph.file)
    else:
        pheno_file, pheno_label = local[ph.file], m.uri(ph.file)
    table = read_table(pheno_file, pheno_label)
    check_phenotypes(table, ph.columns, m.trait_type, cc12=bool(m.regenie_options.get("--cc12")))
    n_shared = check_sample_overlap(geno_keys, table, label)
    notes.append(f"{n_shared} of {len(geno_keys)} genotyped samples have phenotypes")
    covar_file = None
    if m.covariates:
        covar_file = local[m.covariates.file]
        ctab = read_table(covar_file, m.uri(m.covariates.file))
        check_covariates(ctab, m.covariates.columns, m.covariates.categorical)
        check_sample_overlap(geno_keys, ctab, label)

    # chromosomes, after --extract/--exclude
    try:
        chroms, positions, ids = read_variants(fmt, variant_file)
        chromosomes, empty = detect_chromosomes(
            chroms, positions, ids, extract=_id_set(local.get(m.extract) if m.extract else None),
            exclude=_id_set(local.get(m.exclude) if m.exclude else None), source=label)
    except GenotypeError as exc:
        raise InputError(str(exc)) from exc
    if not chromosomes:
        raise InputError(f"{label}: no variant is left after extract/exclude; check those lists against the IDs")
    for c in empty:
        notes.append(f"chromosome {c} has zero variants after extract/exclude: skipped")

    # VCF -> PGEN once (dosages kept when present)
    if fmt == "vcf":
        from genoflows.tools.plink2 import vcf_to_pgen_argv

        conv = work / "vcf-as-pgen"
        done = Path(f"{conv}.done")
        dosage = _vcf_dosage_field(geno)
        if not done.exists():
            run(vcf_to_pgen_argv(geno, conv, dosage_field=dosage, threads=threads))
            done.write_text(json.dumps({"source": label, "dosage": dosage}))
        geno, fmt = conv, "pgen"
        notes.append("VCF converted once to PGEN with plink2" + (" (dosages from DS)" if dosage else ""))

    codes = chromosome_codes(chromosomes)
    nauto = None
    if any(c != n for n, c in codes.items()):
        id_delim = "_" if fmt == "bgen" and sample_file is None and all(k.count("_") == 1 for k in geno_keys) else None
        fmt, geno = _recode(fmt, geno, codes, work, run, sample_file, id_delim, threads)
        sample_file = None if fmt == "pgen" else sample_file
        nauto = len(codes) if len(codes) > 22 else None
        notes.append("chromosome names recoded 1..K for regenie and mapped back in the merged results")

    opts = dict(m.regenie_options)
    inp = RegenieInputs(
        geno_format=fmt, geno_path=geno, pheno_file=pheno_file, pheno_columns=tuple(ph.columns), trait=m.trait_type,
        sample_file=sample_file, covar_file=covar_file,
        covar_columns=tuple(m.covariates.columns) if m.covariates else (),
        cat_covar_columns=tuple(m.covariates.categorical) if m.covariates else (),
        keep=local.get(m.keep) if m.keep else None, remove=local.get(m.remove) if m.remove else None,
        extract=local.get(m.extract) if m.extract else None, exclude=local.get(m.exclude) if m.exclude else None,
        options=opts, nauto=nauto, threads=threads,
    )
    staged = StagedInputs(inp, chromosomes, codes, empty, notes=notes)
    if m.start_step == 2:
        staged.pred_list = stage_predictions(m, local[m.prediction_list], work / "step1", client)
    return staged


def stage_predictions(m: Manifest, pred_local: Path, dest_dir: Path, client=None) -> Path:
    """Rewrite a step-1 `_pred.list` so its `.loco` paths resolve here (where step 2 runs).

    A path in the list is tried as written (absolute, on this machine), then relative to the list's folder
    under s3Path, then by file name next to the list; every `.loco` is staged and checked to exist.
    """
    label = m.uri(m.prediction_list)
    rows = read_pred_list(pred_local, label)
    traits = [t for t, _ in rows]
    absent = [c for c in m.phenotype.columns if c not in traits]
    if absent:
        raise InputError(f"{label}: no step-1 predictions for trait(s) {absent}; it lists {traits}. "
                         "Run step 1 for them (startStep 1)")
    base = posixpath.dirname(m.prediction_list)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for trait, written in rows:
        if trait not in m.phenotype.columns:
            continue
        candidates = []
        if Path(written).is_absolute() and Path(written).is_file():
            out.append((trait, Path(written)))
            continue
        if not Path(written).is_absolute() and "://" not in written:
            try:
                candidates.append(check_relative_path(posixpath.join(base, written)))
            except ValueError:
                pass
        candidates.append(check_relative_path(posixpath.join(base, posixpath.basename(written))))
        for rel in dict.fromkeys(candidates):
            uri = m.uri(rel)
            if storage.exists(uri, client):
                local = storage.download(uri, dest_dir / posixpath.basename(rel), client)
                out.append((trait, local))
                break
        else:
            raise InputError(f"{label}: prediction file for {trait} not found: {written!r} "
                             f"(looked for {', '.join(m.uri(c) for c in dict.fromkeys(candidates))})")
    return write_pred_list(dest_dir / "staged_pred.list", out)
