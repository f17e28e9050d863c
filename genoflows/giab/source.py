"""Find a lab's variant file for a sample in a source: an `s3://bucket/prefix` or a local directory.

Small-variant candidates are `{sample_id}*.g.vcf.gz`, `{sample_id}*.gvcf.gz` and `{sample_id}*.vcf.gz`, where
the character after the sample id must be a separator (`.`, `_`, `-`) so `..._Rep1` does not also pick up
`..._Rep10`. Files tagged as structural-variant calls (`.sv.`, `_sv.`, `manta`, `sniffles`, ...) are SV candidates
and are kept apart. Several candidates are an error listing them, unless `file` names one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from genoflows.fetch import classify_s3_error, split_s3_uri

Kind = Literal["small", "sv"]
VCF_SUFFIXES = (".g.vcf.gz", ".gvcf.gz", ".vcf.gz")
INDEX_SUFFIXES = (".tbi", ".csi")
_SV_TAG = re.compile(r"(^|[._-])(sv|svs|structural|manta|sniffles|pbsv|cutesv|delly)([._-]|$)", re.IGNORECASE)


class SourceError(ValueError):
    """No usable, or no unambiguous, input for the sample in the source."""


@dataclass(frozen=True)
class SourceEntry:
    """A file in the source; `version` changes whenever its content may have (S3 ETag + LastModified, or the
    local file's size + mtime), so a run keyed by it is redone for a re-uploaded file."""

    name: str
    uri: str
    size: int
    version: str = ""
    modified: float = 0.0  # seconds since the epoch


@dataclass(frozen=True)
class LabInput:
    """The chosen variant file, its index (None: index it after download) and its size."""

    name: str
    uri: str
    size: int
    index_name: str | None
    index_uri: str | None
    is_gvcf: bool
    version: str = ""
    index_version: str = ""
    modified: float = 0.0
    index_modified: float = 0.0

    @property
    def index_is_stale(self) -> bool:
        """An index last written before its data belongs to an earlier upload of it (data is re-uploaded, the
        index forgotten): using it would read the new bytes at the old offsets."""
        return self.index_uri is not None and self.index_modified < self.modified


def list_source(source: str, *, s3_client=None) -> list[SourceEntry]:
    """Files directly inside `source` (no recursion), sorted by name."""
    if source.startswith("s3://"):
        return _list_s3(source, s3_client)
    root = Path(source.removeprefix("file://")).expanduser()
    if not root.is_dir():
        raise SourceError(f"source {source!r} is neither an s3://bucket/prefix nor an existing local directory")
    entries = []
    for p in root.iterdir():
        if p.is_file():
            st = p.stat()
            entries.append(SourceEntry(p.name, str(p), st.st_size, f"size {st.st_size} mtime_ns {st.st_mtime_ns}",
                                       st.st_mtime))
    return sorted(entries, key=lambda e: e.name)


def _list_s3(source: str, client) -> list[SourceEntry]:
    from botocore.exceptions import BotoCoreError, ClientError

    if client is None:
        from genoflows.fetch import s3_client

        client = s3_client()
    bucket, prefix = split_s3_uri(source)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    entries = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if name:
                    modified = obj.get("LastModified")
                    version = f"etag {str(obj.get('ETag', '')).strip(chr(34))} modified {modified}"
                    entries.append(SourceEntry(name, f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), version,
                                               modified.timestamp() if modified else 0.0))
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3_error(source, exc) from exc
    return sorted(entries, key=lambda e: e.name)


def is_sv_name(name: str) -> bool:
    return bool(_SV_TAG.search(name))


def _starts_with_sample(name: str, sample_id: str) -> bool:
    return name.startswith(sample_id) and (len(name) == len(sample_id) or name[len(sample_id)] in "._-")


def candidates(entries: list[SourceEntry], sample_id: str, kind: Kind) -> list[SourceEntry]:
    """The variant files for `sample_id` of the wanted kind (no index files)."""
    out = []
    for e in entries:
        if not e.name.endswith(VCF_SUFFIXES) or not _starts_with_sample(e.name, sample_id):
            continue
        if (kind == "sv") == is_sv_name(e.name[len(sample_id) :]):
            out.append(e)
    return out


def _describe(entries: list[SourceEntry], limit: int = 12) -> str:
    if not entries:
        return "nothing"
    names = [e.name for e in entries[:limit]]
    more = f" (+{len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(names) + more


def find_input(source: str, sample_id: str, *, kind: Kind = "small", file: str | None = None, s3_client=None) -> LabInput:
    """Pick the sample's input in `source`, with its index if one sits next to it."""
    entries = list_source(source, s3_client=s3_client)
    by_name = {e.name: e for e in entries}
    patterns = ", ".join(f"{sample_id}*{s}" for s in VCF_SUFFIXES)
    if file:
        wanted = file.rstrip("/").rsplit("/", 1)[-1]
        chosen = by_name.get(wanted)
        if chosen is None:
            raise SourceError(f"file {file!r} is not in {source}; found there: {_describe(entries)}")
        if not chosen.name.endswith(VCF_SUFFIXES):
            raise SourceError(f"file {file!r} in {source} is not a bgzipped VCF (*.vcf.gz / *.g.vcf.gz / *.gvcf.gz)")
    else:
        found = candidates(entries, sample_id, kind)
        if not found:
            what = "structural-variant VCF (a name tagged sv/manta/sniffles...)" if kind == "sv" else "variant file"
            raise SourceError(
                f"no {what} for sample {sample_id!r} in {source}: looked for {patterns}; found there: "
                f"{_describe(entries)}. Check the sample id and the source, or pass `file`."
            )
        if len(found) > 1:
            raise SourceError(
                f"{len(found)} candidate inputs for sample {sample_id!r} in {source}: {_describe(found)}. "
                f"Pass `file` with the one to benchmark (for example file={found[0].name!r})."
            )
        chosen = found[0]
    index = next((by_name[chosen.name + s] for s in INDEX_SUFFIXES if chosen.name + s in by_name), None)
    return LabInput(
        name=chosen.name,
        uri=chosen.uri,
        size=chosen.size,
        index_name=index.name if index else None,
        index_uri=index.uri if index else None,
        is_gvcf=chosen.name.endswith((".g.vcf.gz", ".gvcf.gz")),
        version=chosen.version,
        index_version=index.version if index else "",
        modified=chosen.modified,
        index_modified=index.modified if index else 0.0,
    )
