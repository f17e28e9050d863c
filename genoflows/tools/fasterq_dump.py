"""fasterq-dump (sra-tools 3.x): turn a local .sra into uncompressed FASTQ, and make sense of what it wrote.

A path containing `/` is read locally (a bare accession would go to the network, sra-tools #318), so we
always pass an absolute path. Output is uncompressed; the temp dir may need as much again, hence the
~10x reservation the caller makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

TOOL = "fasterq-dump"
SRA_MAGIC = b"NCBI.sra"


class SraFormatError(ValueError):
    """The downloaded object is not an SRA archive (an XML error page, an HTML login page...)."""


def check_sra_magic(path: Path) -> None:
    """A bad ODP URL can return an XML error body with HTTP 200; real .sra files start with `NCBI.sra`."""
    with open(path, "rb") as fh:
        head = fh.read(len(SRA_MAGIC))
    if head != SRA_MAGIC:
        raise SraFormatError(f"{path} is not an SRA file (starts with {head!r}, expected {SRA_MAGIC!r})")


def dump_argv(sra: Path, out_dir: Path, tmp_dir: Path, threads: int = 2) -> list[str]:
    return [
        TOOL, "--split-3", "--skip-technical", "-e", str(threads),
        "-O", str(out_dir), "-t", str(tmp_dir), str(Path(sra).resolve()),
    ]  # fmt: skip


def collect_outputs(out_dir: Path, stem: str) -> tuple[Literal["paired", "single"], list[Path]]:
    """Mates `<stem>_1/_2.fastq` make a paired run (the split-3 singleton file is ignored); else `<stem>.fastq`."""
    r1, r2, single = out_dir / f"{stem}_1.fastq", out_dir / f"{stem}_2.fastq", out_dir / f"{stem}.fastq"
    if r1.exists() and r2.exists():
        single.unlink(missing_ok=True)
        return "paired", [r1, r2]
    if single.exists():
        return "single", [single]
    if r1.exists():
        return "single", [r1]
    raise SraFormatError(f"fasterq-dump wrote no FASTQ for {stem} in {out_dir}")
