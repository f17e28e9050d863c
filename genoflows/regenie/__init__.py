"""A regenie-compatible GWAS engine in numpy/scipy (no Prefect here): regenie's command line, files and numbers.

Stable interfaces (step 1 and the GWAS flow build on these; change them only together):

``genoflows.regenie.genotypes``
    ``open_genotypes(kind, prefix_or_path, sample_file=None, bgi=None) -> Genotypes`` with kind in
    ``bed | pgen | bgen``. ``Genotypes.samples`` (DataFrame FID, IID, key=``FID_IID``, file order),
    ``Genotypes.variants`` (DataFrame chrom:int, chrom_label, id, pos, allele1, allele0; ALLELE1 is the
    counted allele, as regenie), ``Genotypes.blocks(block_size, sample_index=None, variant_mask=None)``
    yielding ``(variant_indices, X)`` with X float64 samples x variants of ALLELE1 dosages, missing
    mean-imputed; blocks never span chromosomes; one block in memory at a time. ``raw_blocks`` keeps NaN.
    ``block_plan(block_size, variant_mask)`` lists the blocks' variant indices without reading.

``genoflows.regenie.phenotypes``
    ``load_analysis_data(geno.samples, pheno_file=..., pheno_cols=..., covar_file=..., covar_cols=...,
    cat_covars=..., binary=..., cc12=..., keep=..., remove=..., strict=..., step=1|2) -> AnalysisData``:
    ``sample_index`` (rows of geno.samples analysed, in genotype order; pass it to ``blocks``),
    ``trait_names``, ``y_raw`` (N x P, NaN missing, BT 0/1), ``mask`` (N x P bool, regenie masked_indivs),
    ``covariates`` (N x c with intercept), ``basis`` (Q, N x k orthonormal), ``k``, ``n_eff``,
    ``imputed_traits()``, ``residualized_traits() -> (Y scaled, sd_Y)``.

``genoflows.regenie.options``
    ``Step1Options`` / ``Step2Options``: validated option values from the CLI.

``genoflows.regenie.step1``  (branch regenie-step1)
    ``run_step1(geno, data, opts: Step1Options) -> Path`` writes ``<out>_<i>.loco`` and ``<out>_pred.list``
    as regenie does and returns the pred.list path. Raises ``RegenieError`` for user-facing problems.

``genoflows.regenie.loco``
    ``read_pred_list(path, traits) -> {trait: Path}``; ``read_loco(path, keys, chrom) -> (values, absent)``
    (one chromosome row for the given FID_IID keys; absent samples are masked by step 2, as regenie).

``genoflows.regenie.step2``
    ``run_step2(geno, data, opts: Step2Options) -> list[Path]`` writes ``<out>_<PHENO>.regenie``.

``genoflows.regenie.cli``
    ``main(argv) -> int``: the ``genoflows-regenie`` console script. Errors are ``RegenieError`` printed as
    regenie's ``ERROR: <msg>`` line (stdout and ``<out>.log``), exit status 1.
"""
