"""plink2 command lines used by the GWAS pipeline (VCF -> PGEN once, any input -> PGEN for recoding)."""

from __future__ import annotations

from pathlib import Path


def vcf_to_pgen_argv(vcf: Path, out_prefix: Path, *, dosage_field: str | None, threads: int = 1) -> list[str]:
    """Convert a VCF/BCF to PGEN once; dosages (DS) are kept when the VCF has them, so step 2 sees them.

    `--double-id` gives FID = IID = the VCF sample name (regenie matches phenotype rows on both);
    `--allow-extra-chr` keeps non-human contig names as they are.
    """
    source = ["--bcf", str(vcf)] if vcf.name.endswith(".bcf") else ["--vcf", str(vcf)]
    if dosage_field:
        source.append(f"dosage={dosage_field}")
    return [
        "plink2", *source, "--double-id", "--allow-extra-chr", "--make-pgen", "--threads", str(threads),
        "--out", str(out_prefix),
    ]


def to_pgen_argv(fmt: str, path: Path, out_prefix: Path, *, sample_file: Path | None = None,
                 id_delim: str | None = None, threads: int = 1) -> list[str]:
    """Rewrite bed/pgen/bgen input as PGEN (used when chromosome names must be recoded for regenie)."""
    if fmt == "bed":
        source = ["--bfile", str(path)]
    elif fmt == "pgen":
        source = ["--pfile", str(path)]
    elif fmt == "bgen":
        source = ["--bgen", str(path), "ref-first"]
        if sample_file:
            source += ["--sample", str(sample_file)]
        elif id_delim:
            source += ["--id-delim", id_delim]
        else:
            source += ["--double-id"]
    else:
        raise ValueError(f"cannot convert {fmt} with plink2 here")
    return ["plink2", *source, "--allow-extra-chr", "--make-pgen", "--threads", str(threads), "--out", str(out_prefix)]
