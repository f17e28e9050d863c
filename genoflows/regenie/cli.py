"""``genoflows-regenie``: regenie's command line for the built-in engine.

Options are spelled as regenie spells them. A regenie option this engine does not implement fails with an
``ERROR:`` line naming it (never silently ignored); so does an unknown option. Every run writes
``<out>.log`` (the command, sample and variant counts, and any ERROR line); errors exit with status 1.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genoflows.regenie.errors import RegenieError

VERSION = "genoflows-regenie (regenie v4.1.2 compatible)"

# regenie options (src/Regenie.cpp) that this engine does not implement: named in the error message.
UNSUPPORTED = {
    "--t2e", "--ref-first", "--tpheno-file", "--phenoExcludeList", "--covarExcludeList", "--setl0", "--setl1",
    "--split-l0", "--run-l0", "--run-l1", "--l1-phenoList", "--keep-l0", "--force-step1", "--print-prs",
    "--use-prs", "--write-null-firth", "--use-null-firth", "--spa", "--minINFO", "--gz", "--no-split",
    "--test", "--apply-rint", "--force-impute", "--minCaseCount", "--af-cc", "--write-samples",
    "--print-pheno", "--htp", "--starting-block", "--nauto", "--interaction", "--interaction-snp",
    "--condition-list", "--anno-file", "--set-list", "--mask-def", "--aaf-bins", "--build-mask",
    "--firth-se", "--nb", "--sex-specific", "--par-region", "--maxstep-null", "--maxiter-null",
    "--apply-rerint", "--apply-rerint-cov", "--multiphen", "--mcc", "--skip-fast-firth", "--prop-zero-thr",
    "--exclude-or", "--extract-or", "--keep-or", "--remove-or", "--extract-sets", "--exclude-sets",
    "--vc-tests", "--joint", "--skat-params", "--debug", "--verbose", "--write-mask", "--lovo",
    "--pred-type", "--within", "--niter", "--bgi-index", "--print-cov-betas", "--trait-set",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit 2 with a usage dump
        raise RegenieError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="genoflows-regenie",
        description="regenie-compatible whole-genome regression (step 1) and association tests (step 2), "
        "in Python. Same options, files and numbers as regenie v4.1.2 for what is listed here; any other "
        "regenie option stops with an ERROR naming it.",
        allow_abbrev=False,
        add_help=True,
    )
    a = p.add_argument
    a("--step", type=int, help="1 (whole-genome model, writes LOCO predictions) or 2 (association tests)")
    g = p.add_argument_group("genotypes (exactly one)")
    g.add_argument("--bed", metavar="PFX", help="PLINK 1 .bed/.bim/.fam prefix (.bim column 5 = ALLELE1)")
    g.add_argument("--pgen", metavar="PFX", help="PLINK 2 .pgen/.pvar/.psam prefix (ALT = ALLELE1)")
    g.add_argument("--bgen", metavar="FILE", help="BGEN v1.2 file (first allele = ALLELE1); index <bgen>.bgi if present")
    g.add_argument("--sample", metavar="FILE", help="BGEN .sample file (else embedded IDs are FID_IID)")
    g.add_argument("--bgi", metavar="FILE", help="BGEN index file")
    s = p.add_argument_group("samples, phenotypes, covariates")
    s.add_argument("--phenoFile", "-p", metavar="FILE", help="phenotype file (FID IID ...)")
    s.add_argument("--phenoCol", action="append", metavar="NAME", help="phenotype to analyse (repeatable)")
    s.add_argument("--phenoColList", metavar="A,B", help="comma-separated phenotypes ({i:j} ranges allowed)")
    s.add_argument("--covarFile", "-c", metavar="FILE", help="covariate file (FID IID ...)")
    s.add_argument("--covarCol", action="append", metavar="NAME", help="covariate to use (repeatable)")
    s.add_argument("--covarColList", metavar="A,B", help="comma-separated covariates")
    s.add_argument("--catCovarList", metavar="A,B", help="categorical covariates")
    s.add_argument("--maxCatLevels", type=int, default=10, help="max levels of a categorical covariate (10)")
    s.add_argument("--qt", action="store_true", help="quantitative traits (default)")
    s.add_argument("--bt", action="store_true", help="binary traits, coded 0/1/NA")
    s.add_argument("--cc12", "-1", action="store_true", help="binary traits coded 1=control 2=case")
    s.add_argument("--strict", action="store_true", help="drop samples missing any trait")
    s.add_argument("--force-qt", action="store_true", help="allow a QT with fewer than 3 distinct values")
    s.add_argument("--keep", metavar="FILE", help="keep samples listed (FID IID)")
    s.add_argument("--remove", metavar="FILE", help="remove samples listed (FID IID)")
    v = p.add_argument_group("variants")
    v.add_argument("--extract", metavar="FILE[,FILE]", help="keep variant IDs listed")
    v.add_argument("--exclude", metavar="FILE[,FILE]", help="drop variant IDs listed")
    v.add_argument("--chr", action="append", metavar="CHR", help="test only this chromosome (repeatable)")
    v.add_argument("--chrList", metavar="C1,C2", help="comma-separated chromosomes")
    v.add_argument("--range", metavar="CHR:MIN-MAX", help="test only this region (step 2)")
    m = p.add_argument_group("model")
    m.add_argument("--bsize", type=int, help="variants per block (required)")
    m.add_argument("--cv", type=int, default=5, help="K-fold CV at level 1 (5)")
    m.add_argument("--loocv", action="store_true", help="leave-one-out CV (automatic for BT with N < 5000)")
    m.add_argument("--l0", type=int, default=5, help="h2 grid size at level 0 (5)")
    m.add_argument("--l1", type=int, default=5, help="h2 grid size at level 1 (5)")
    m.add_argument("--lowmem", action="store_true", help="keep level-0 predictions on disk")
    m.add_argument("--lowmem-prefix", metavar="PFX", help="prefix of the --lowmem files (default --out)")
    m.add_argument("--pred", metavar="FILE", help="step-1 <out>_pred.list (step 2)")
    m.add_argument("--ignore-pred", action="store_true", help="no LOCO offset (step 2)")
    m.add_argument("--use-relative-path", action="store_true", help="relative paths in _pred.list (step 1)")
    m.add_argument("--minMAC", type=float, default=None, help="minimum minor allele count tested (5)")
    m.add_argument("--firth", action="store_true", help="Firth correction for BT when p < --pThresh")
    m.add_argument("--approx", action="store_true", help="approximate Firth (the one implemented)")
    m.add_argument("--pThresh", type=float, default=0.05, help="p-value threshold for the correction (0.05)")
    o = p.add_argument_group("run")
    o.add_argument("--threads", type=int, default=None, help="threads for the numerical library")
    o.add_argument("--out", metavar="PFX", help="output prefix (required)")
    o.add_argument("--version", action="version", version=VERSION)
    return p


def _check_unsupported(argv: Sequence[str], known: set[str]) -> None:
    for tok in argv:
        if not tok.startswith("--"):
            continue
        name = tok.split("=", 1)[0]
        if name in UNSUPPORTED:
            raise RegenieError(f"option {name} is a regenie option this engine does not implement; run regenie itself for it.")
        if name not in known:
            raise RegenieError(f"unrecognised option {name} (see genoflows-regenie --help).")


class RunLog:
    """Lines to stdout and ``<out>.log`` (truncated at start, as regenie's)."""

    def __init__(self, out: str | None):
        self.fh = None
        if out:
            try:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                self.fh = open(f"{out}.log", "w")
            except OSError as exc:
                raise RegenieError(f"cannot write log file {out}.log: {exc}") from exc

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        if self.fh:
            self.fh.write(line + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh:
            self.fh.close()


def _read_variant_ids(spec: str, option: str) -> set[str]:
    ids: set[str] = set()
    for f in spec.split(","):
        path = Path(f)
        if not path.is_file():
            raise RegenieError(f"could not open file given to {option}: {path}")
        ids.update(tok.split()[0] for tok in path.read_text().splitlines() if tok.strip())
    return ids


def _variant_mask(args: argparse.Namespace, geno, log: RunLog) -> np.ndarray:
    from genoflows.regenie.genotypes import chrom_to_int

    v = geno.variants
    mask = np.ones(len(v), dtype=bool)
    ids = v["id"].to_numpy(dtype=str)
    if args.extract:
        mask &= np.isin(ids, list(_read_variant_ids(args.extract, "--extract")))
    if args.exclude:
        mask &= ~np.isin(ids, list(_read_variant_ids(args.exclude, "--exclude")))
    if args.extract and args.exclude:
        log("WARNING: both --extract and --exclude were given: the variants kept are those in --extract and not in --exclude.")
    chroms: list[int] = []
    for c in (args.chr or []) + (args.chrList.split(",") if args.chrList else []):
        if c.strip():
            try:
                chroms.append(chrom_to_int(c.strip()))
            except RegenieError:
                raise RegenieError(f"invalid chromosome '{c}' given to --chr/--chrList.") from None
    if chroms:
        if args.step == 1:
            log("WARNING: --chr/--chrList restricts the whole-genome model in step 1 (regenie does the same).")
        mask &= np.isin(v["chrom"].to_numpy(), chroms)
    if args.range:
        if args.step == 1:
            log("WARNING: --range is only used in step 2; ignored.")
        else:
            try:
                c, rng = args.range.split(":")
                lo, hi = (int(x) for x in rng.split("-"))
                cnum = chrom_to_int(c)
            except (ValueError, RegenieError):
                raise RegenieError(f"--range must be CHR:MIN-MAX, got '{args.range}'.") from None
            pos = v["pos"].to_numpy()
            mask &= (v["chrom"].to_numpy() == cnum) & (pos >= lo) & (pos <= hi)
            chroms = chroms or [cnum]
    for c in chroms:
        if not (mask & (v["chrom"].to_numpy() == c)).any():
            raise RegenieError(
                f"chromosome {c} has no variant left after the variant filters (--chr/--chrList/--range/--extract/--exclude)."
            )
    if not mask.any():
        raise RegenieError("no variant left after the variant filters (--extract/--exclude/--chr/--range).")
    return mask


def _validate(args: argparse.Namespace) -> None:
    if not args.out:
        raise RegenieError("must specify an output file prefix using '--out'.")
    if args.step not in (1, 2):
        raise RegenieError("specify which mode regenie should be running using option --step (1 or 2).")
    given = [k for k in ("bed", "pgen", "bgen") if getattr(args, k)]
    if len(given) != 1:
        raise RegenieError("must use either --bed,--bgen or --pgen.")
    if args.sample and not args.bgen:
        raise RegenieError("--sample is only used with --bgen.")
    if not args.phenoFile:
        raise RegenieError("must specify a phenotype file using '--phenoFile'.")
    if args.bsize is None or args.bsize < 1:
        raise RegenieError("must specify the block size using '--bsize' (>= 1).")
    if args.qt and args.bt:
        raise RegenieError("must use only one of --qt/--bt/--t2e.")
    if args.keep and args.remove:
        raise RegenieError("cannot use both --keep and --remove.")
    if (args.covarCol or args.covarColList or args.catCovarList) and not args.covarFile:
        raise RegenieError("you specified covariates (--covarCol/--covarColList/--catCovarList) without --covarFile.")
    if not 0 < args.pThresh < 1:
        raise RegenieError("--pThresh must be in (0,1).")
    if args.step == 2 and not args.pred and not args.ignore_pred:
        raise RegenieError("must specify --pred if using --step 2 (otherwise use --ignore-pred).")
    if args.l0 < 2 or args.l1 < 2:
        raise RegenieError("number of ridge parameters (--l0/--l1) must be at least 2.")
    if args.cv < 2:
        raise RegenieError("number of CV folds (--cv) must be at least 2.")
    if args.minMAC is not None and args.minMAC < 0.5:
        raise RegenieError("minimum MAC (--minMAC) must be at least 0.5.")


def _echo_command(argv: Sequence[str], log: RunLog) -> None:
    log(f"Start time: {time.ctime()}")
    log("")
    log(f"              {VERSION}")
    log("")
    log(f"Log of output saved in file : {log.fh.name if log.fh else '-'}")
    log("")
    log("Options in effect:")
    parts: list[list[str]] = []
    for tok in argv:
        if tok.startswith("--") or tok in ("-p", "-c", "-1", "-h"):
            parts.append([tok])
        elif parts:
            parts[-1].append(tok)
        else:
            parts.append([tok])
    for i, group in enumerate(parts):
        tail = " \\" if i < len(parts) - 1 else ""
        log("  " + " ".join(shlex.quote(x) for x in group) + tail)
    log("")


def _threads(n: int | None) -> int:
    """--threads, else regenie's default: detected cores - 1, at least 1."""
    import os

    return n or max(1, (os.cpu_count() or 2) - 1)


def _set_threads(n: int | None):
    """Limit BLAS threads for the whole run: oversubscribed BLAS threads on a busy machine cost far more
    than they give for step 2's thin products."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=_threads(n), user_api="blas")


def run(argv: Sequence[str], log: RunLog) -> None:
    from genoflows.regenie.genotypes import open_genotypes
    from genoflows.regenie.options import Step1Options, Step2Options
    from genoflows.regenie.phenotypes import load_analysis_data

    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args)
    _limits = _set_threads(args.threads)  # noqa: F841 (kept for the run's lifetime)
    t0 = time.time()
    if args.step == 1:
        for opt, val in (("--minMAC", args.minMAC is not None), ("--firth", args.firth), ("--pred", args.pred),
                         ("--ignore-pred", args.ignore_pred)):
            if val:
                log(f"WARNING: option {opt} is only used in step 2; ignored in step 1.")
    elif args.firth and not args.bt:
        log("WARNING: option --firth only works with binary traits; ignored.")
    if args.firth and not args.approx and args.bt and args.step == 2:
        raise RegenieError("--firth without --approx (exact Firth) is not implemented by this engine: add --approx.")
    if args.loocv and args.step == 2:
        log("WARNING: option --loocv is only used in step 1; ignored.")

    kind = next(k for k in ("bed", "pgen", "bgen") if getattr(args, k))
    log("Fitting null model" if args.step == 1 else "Association testing mode")
    geno = open_genotypes(kind, getattr(args, kind), args.sample, args.bgi)
    try:
        log(f" * {kind:<16}: [{getattr(args, kind)}]")
        log(f"   -summary : {geno.n_samples} samples and {geno.n_variants} variants")
        pheno_cols = (args.phenoCol or []) + ([args.phenoColList] if args.phenoColList else [])
        covar_cols = (args.covarCol or []) + ([args.covarColList] if args.covarColList else [])
        data = load_analysis_data(
            geno.samples,
            pheno_file=args.phenoFile,
            pheno_cols=pheno_cols or None,
            covar_file=args.covarFile,
            covar_cols=covar_cols or None,
            cat_covars=[args.catCovarList] if args.catCovarList else None,
            binary=args.bt,
            cc12=args.cc12,
            keep=args.keep,
            remove=args.remove,
            strict=args.strict,
            step=args.step,
            force_qt=args.force_qt,
            max_cat_levels=args.maxCatLevels,
        )
        if args.keep or args.remove:
            log(f"   -number of genotyped individuals remaining in the analysis = {data.n_genotyped}")
        log(f" * phenotypes       : [{args.phenoFile}] n_pheno = {len(data.trait_names)}")
        if args.covarFile:
            log(f" * covariates       : [{args.covarFile}] n_cov = {len(data.covariate_names) - 1}")
        log(f" * number of individuals used in analysis = {data.n}")
        if args.bt:
            log(" * case-control counts for each trait:")
            for j, nm in enumerate(data.trait_names):
                y = data.y_raw[data.mask[:, j], j]
                log(f"   - '{nm}': {int((y == 1).sum())} cases and {int((y == 0).sum())} controls")
        vmask = _variant_mask(args, geno, log)
        log(f" * number of variants used = {int(vmask.sum())} (of {geno.n_variants})")
        log(f" * block size       : [{args.bsize}]")
        log(f" * # blocks         : [{len(geno.block_plan(args.bsize, vmask))}]")
        if args.step == 1:
            from genoflows.regenie import step1

            step1.run_step1(
                geno, data,
                Step1Options(
                    out=args.out, bsize=args.bsize, variant_mask=vmask, cv_folds=args.cv, loocv=args.loocv,
                    l0=args.l0, l1=args.l1, lowmem=args.lowmem, lowmem_prefix=args.lowmem_prefix,
                    use_relative_path=args.use_relative_path, threads=_threads(args.threads), log=log,
                ),
            )
        else:
            from genoflows.regenie.step2 import run_step2

            min_mac = 5.0 if args.minMAC is None else args.minMAC
            log(f" * using minimum MAC of {min_mac:g} (variants with lower MAC are ignored)")
            if args.firth and args.bt:
                log(f" * using fast Firth correction for logistic regression p-values less than {args.pThresh:g}")
            paths = run_step2(
                geno, data,
                Step2Options(
                    out=args.out, bsize=args.bsize, variant_mask=vmask,
                    pred=None if args.ignore_pred else Path(args.pred), min_mac=min_mac,
                    firth=args.firth and args.bt, approx=args.approx, pthresh=args.pThresh,
                    threads=_threads(args.threads), log=log,
                ),
            )
            log("Association results stored separately for each trait in files : ")
            for pth in paths:
                log(f"* [{pth}]")
    finally:
        geno.close()
    log("")
    log(f"Elapsed time : {time.time() - t0:.6g}s")
    log(f"End time: {time.ctime()}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = {s for act in parser._actions for s in act.option_strings if s.startswith("--")}
    out = None
    for i, tok in enumerate(argv):
        if tok == "--out" and i + 1 < len(argv):
            out = argv[i + 1]
        elif tok.startswith("--out="):
            out = tok.split("=", 1)[1]
    if any(t in ("-h", "--help", "--version") for t in argv):
        try:
            parser.parse_args(argv)  # prints and exits 0
        except RegenieError as exc:
            print(f"ERROR: {exc}", flush=True)
            return 1
        return 0
    try:
        log = RunLog(out)
    except RegenieError as exc:
        print(f"ERROR: {exc}", flush=True)
        return 1
    try:
        _echo_command(argv, log)
        _check_unsupported(argv, known)
        run(argv, log)
    except RegenieError as exc:
        log(f"ERROR: {exc}")
        return 1
    except MemoryError:
        log("ERROR: out of memory; use a smaller --bsize or fewer samples per run.")
        return 1
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
