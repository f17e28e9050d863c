"""bcftools command lines used by the GIAB pipeline, in one place.

Each builder returns an argv list for `genoflows.toolrun.run_tool` (no shell); builders whose input or output may
be a pipe (`run_pipeline`'s PIPE_IN/PIPE_OUT, kept as given: not turned into str) take an explicit `output_type`. Written against bcftools 1.16
(Debian 12); every option used here exists there and in pysam's bundled 1.2x.
"""

from __future__ import annotations

from pathlib import Path

TOOL = "bcftools"


def _arg(value: Path | str) -> str:
    """A path as argv text; a str (e.g. a pipeline's PIPE_IN/PIPE_OUT marker) is kept as the very object."""
    return value if isinstance(value, str) else str(value)


def _out_type(path: Path | str, given: str | None = None) -> str:
    """`-O` value: `given` when the caller says (a pipe `-` has no name to go by), else from the output name:
    .ubcf -> u (uncompressed BCF, for files passed between steps: no compression to pay for), .bcf -> b,
    .vcf.gz -> z, else v. A level may follow (`b1`: BGZF level 1, for work files read once or twice)."""
    if given is not None:
        return given
    name = str(path)
    return "u" if name.endswith(".ubcf") else "b" if name.endswith(".bcf") else "z" if name.endswith(".gz") else "v"


def gvcf_to_variants_argv(src: Path, dst: Path, sample: str | None = None, threads: int | None = None,
                          output_type: str | None = None) -> list[str]:
    """gVCF (or VCF) -> variant sites only: drop reference blocks and no-calls, trim `<NON_REF>`/`<*>`.

    `-i 'GT="alt"'` keeps records whose genotype carries an ALT allele (reference blocks are 0/0 or ./.);
    `--trim-alt-alleles` removes ALT alleles no genotype uses, which is what `<NON_REF>`/`<*>` are after that.
    """
    argv = [TOOL, "view", "-i", 'GT="alt"', "--trim-alt-alleles"]
    if sample:
        argv += ["-s", sample]
    if threads:
        argv += ["--threads", str(threads)]  # BGZF (de)compression threads: most of this step's time
    return argv + ["-O", _out_type(dst, output_type), "-o", str(dst), str(src)]


def norm_argv(src: Path | str, dst: Path | str, reference: Path, output_type: str | None = None) -> list[str]:
    """Left-align and trim against the reference, split multi-allelic records (`-m -any`).

    `-c e` (the default, spelt out) stops on a REF allele that disagrees with the reference: that means the
    wrong build or reference, which must not turn into silently unmatched calls.
    """
    return [TOOL, "norm", "-f", str(reference), "-m", "-any", "-c", "e", "-O", _out_type(dst, output_type), "-o", _arg(dst), _arg(src)]


def atomize_argv(src: Path | str, dst: Path | str, reference: Path, output_type: str | None = None) -> list[str]:
    """Decompose MNPs and complex records into SNPs and indels (hap.py decomposes by default), re-left-aligned.

    Run on already split (biallelic) input: atomizing multi-allelic records makes `*` alleles.
    """
    return [TOOL, "norm", "-f", str(reference), "-a", "-c", "e", "-O", _out_type(dst, output_type), "-o", _arg(dst), _arg(src)]


def sort_argv(src: Path | str, dst: Path | str, tmp_dir: Path, max_mem: str = "300M",
              output_type: str | None = None) -> list[str]:
    """Coordinate-sort (atomizing and left-aligning can move records past their neighbours).

    `-T` is a prefix in 1.16 (`<dir>/sort.XXXXXX` is created), so temporary files stay under `tmp_dir`. `-m` caps
    the in-memory buffer (default 768M) so a whole genome spills to `tmp_dir` instead of holding it all.
    """
    return [TOOL, "sort", "-m", max_mem, "-T", f"{tmp_dir}/sort.", "-O", _out_type(dst, output_type), "-o", _arg(dst), _arg(src)]


def index_argv(path: Path, csi: bool = False, out: Path | None = None) -> list[str]:
    """Index a bgzipped VCF: .tbi (default) or .csi; fails on unsorted or non-BGZF input.

    `out` writes the index under another name (`-o`), so callers can build it under a temp name and rename it:
    a builder killed mid-write must not leave a partial `<vcf>.tbi` that later runs take as complete.
    """
    return [TOOL, "index", "-f", "-c" if csi else "-t", *(["-o", str(out)] if out else []), str(path)]


def rename_chrs_argv(src: Path, dst: Path | str, mapping_file: Path, output_type: str | None = None) -> list[str]:
    """Rename contigs (header and records) with a two-column `old new` file."""
    return [TOOL, "annotate", "--rename-chrs", str(mapping_file), "-O", _out_type(dst, output_type), "-o", _arg(dst),
            str(src)]


def view_regions_argv(src: Path, dst: Path, bed: Path, *, streaming: bool = False) -> list[str]:
    """Keep records overlapping `bed`: `-R` uses the index (jumps), `-T` streams (no index needed)."""
    return [TOOL, "view", "-T" if streaming else "-R", str(bed), "-O", _out_type(dst), "-o", str(dst), str(src)]


def query_argv(src: Path, fmt: str, *, region: str | None = None, sample: str | None = None) -> list[str]:
    """`bcftools query -f FMT [-r REGION] [-s SAMPLE]`: one line per record on stdout, for column-wise reading."""
    argv = [TOOL, "query", "-f", fmt]
    if region is not None:
        argv += ["-r", region]
    if sample is not None:
        argv += ["-s", sample]
    return argv + [str(src)]


def isec_argv(a: Path, b: Path, out_dir: Path) -> list[str]:
    """`bcftools isec -p DIR A B`: records private to A, private to B and shared (by position and alleles);
    the benchmark's yardstick for the local engine's matching step."""
    return [TOOL, "isec", "-p", str(out_dir), str(a), str(b)]


def samples_argv(src: Path) -> list[str]:
    """List the sample names of a VCF (one per line on stdout)."""
    return [TOOL, "query", "-l", str(src)]
