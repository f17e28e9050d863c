"""Map a lab's sample id (NA24143_Lib3_Rep1, HG004_foo, hg002) to its GIAB genome (HG001-HG007).

Labs name files after the Coriell id they ordered, with library/replicate suffixes; the truth sets are filed
under the GIAB id. The release directory of each genome: docs/giab-benchmarking.md ("Truth sets").
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GiabGenome:
    """One GIAB reference sample and where its releases live under `release/`."""

    hg: str
    na: str
    release_dir: str
    role: str


GENOMES: dict[str, GiabGenome] = {
    g.hg: g
    for g in (
        GiabGenome("HG001", "NA12878", "NA12878_HG001", "pilot genome (CEPH/Utah)"),
        GiabGenome("HG002", "NA24385", "AshkenazimTrio/HG002_NA24385_son", "Ashkenazi trio son"),
        GiabGenome("HG003", "NA24149", "AshkenazimTrio/HG003_NA24149_father", "Ashkenazi trio father"),
        GiabGenome("HG004", "NA24143", "AshkenazimTrio/HG004_NA24143_mother", "Ashkenazi trio mother"),
        GiabGenome("HG005", "NA24631", "ChineseTrio/HG005_NA24631_son", "Han Chinese trio son"),
        GiabGenome("HG006", "NA24694", "ChineseTrio/HG006_NA24694_father", "Han Chinese trio father"),
        GiabGenome("HG007", "NA24695", "ChineseTrio/HG007_NA24695_mother", "Han Chinese trio mother"),
    )
}

_ALIASES: dict[str, str] = {**{g.hg: g.hg for g in GENOMES.values()}, **{g.na: g.hg for g in GENOMES.values()}}
# The id, then either the end or a non-alphanumeric separator: NA24143_Lib3 matches, NA241430 does not.
_ID = re.compile(r"^(HG00[1-7]|NA\d{5})(?=$|[^A-Za-z0-9])", re.IGNORECASE)


# A name that can become one path component: no '/', no leading '.' (so neither '..' nor a hidden file).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class UnknownSample(ValueError):
    """The sample id does not name a GIAB genome."""


class UnsafeName(ValueError):
    """A sample id or file name that cannot safely become a file or directory name."""


def check_safe_name(value: str, what: str) -> str:
    """`value` unchanged when it is a plain name; the flow writes to `<out_dir>/<sample_id>/`, so a `/` or `..`
    in it would write outside out_dir."""
    if not _SAFE_NAME.fullmatch(value or ""):
        raise UnsafeName(
            f"{what} {value!r} is not allowed: use letters, digits, '.', '_' and '-' only, not starting with '.' "
            f"and without '/' (it becomes a file or directory name under out_dir): pass the plain name"
        )
    return value


def known_samples() -> str:
    """'HG001 (NA12878), HG002 (NA24385), ...' for error messages."""
    return ", ".join(f"{g.hg} ({g.na})" for g in GENOMES.values())


def find_genome(sample_id: str) -> str | None:
    """The GIAB id for `sample_id`, or None when it is not a GIAB sample."""
    m = _ID.match(sample_id.strip())
    return _ALIASES.get(m.group(1).upper()) if m else None


def resolve_genome(sample_id: str) -> str:
    """The GIAB id for `sample_id` (case-insensitive, lab suffixes allowed); raise UnknownSample otherwise, and
    UnsafeName for an id that is no plain name (`HG004/../x` starts like HG004 but is a path)."""
    hg = find_genome(sample_id)
    if hg is not None:
        check_safe_name(sample_id, "sample_id")
    else:
        raise UnknownSample(
            f"sample {sample_id!r} is not a Genome in a Bottle sample: its id must start with one of "
            f"{known_samples()}, optionally followed by a suffix such as _Lib3_Rep1. For any other sample pass "
            f"the `truth` parameter (truth VCF and confident-region BED URIs)."
        )
    return hg


def genome(hg: str) -> GiabGenome:
    """The GiabGenome record for an HG id."""
    return GENOMES[hg.upper()]
