"""`make demo`, imputation part: a simulated cohort imputed with the local minimac4 engine, then its accuracy
against the simulated truth (r² by allele-frequency bin). A second run finds everything done and keeps it."""

from __future__ import annotations

from pathlib import Path


def run_demo(out: Path) -> dict:
    from flows.imputation import imputation_accuracy, impute
    from genoflows.imputation.simulate import make_cohort

    print(
        f"\n{'=' * 100}\nImputation: local minimac4 engine on a simulated cohort (msprime, 2 chromosomes)\n{'=' * 100}"
    )
    world = Path(out) / "imputation-world"
    cohort = make_cohort(world, chroms=("20", "21"), panel_size=200, study_size=40, length=300_000, seed=9)
    manifest = Path(
        impute(
            inputs=[str(cohort.study[c]) for c in ("20", "21")],
            service="local",
            refpanel=str(world / "panel.chr{chrom}.vcf.gz"),
            out_dir=str(Path(out) / "imputation"),
        )
    )
    rows = imputation_accuracy(str(manifest.parent), {c: str(cohort.truth[c]) for c in ("20", "21")})
    print(f"{'MAF bin':>14} {'sites':>6} {'mean r2':>8} {'minimac4 Rsq':>13} {'corr(Rsq, r2)':>14}")
    for r in rows:
        print(
            f"{r['maf_bin']:>14} {r['sites']:>6} {r['mean_r2'] or 0:>8.3f} {r['mean_rsq'] or 0:>13.3f} "
            f"{'' if r['rsq_vs_r2_corr'] is None else format(r['rsq_vs_r2_corr'], '.2f'):>14}"
        )
    print(f"manifest: {manifest}")
    return {"manifest": str(manifest), "accuracy": rows}
