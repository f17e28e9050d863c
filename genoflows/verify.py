"""Content checks of fetched files: is this body what its name says it is?

A size and a published checksum prove that the bytes are the bytes the server meant to send; they say nothing
when no checksum is published, or when the server sent an HTML maintenance page with 200. These checks read the
body itself: a gzip/BGZF body end to end (every member's CRC and length, the BGZF end-of-file block), a VCF's
header (pysam) and first record, a FASTA's records, a BED's intervals (start < end, line numbers in the error),
an index's magic. `check` raises `ContentError` saying what arrived instead ("the server answered an HTML page").

The kind comes from the file name (`infer_kind`); callers override it when the name does not say.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
KINDS = ("vcf", "bcf", "bed", "plink", "bgen", "fasta", "fastq", "tbi", "csi", "fai", "bai", "gzip", "checksum", "text",
         "data")
PLINK_MAGIC = b"\x6c\x1b"  # PLINK 1 .bed and PLINK 2 .pgen both start with these two bytes
# FASTA sequence lines: IUPAC letters (any case), gaps, stop, and line ends.
_SEQ_BYTES = b"".join(bytes([c]) for c in range(256) if chr(c).isalpha() and c < 128) + b"*-.\r\n"


class ContentError(ValueError):
    """The body is not what its name says; the message says what arrived instead."""


def infer_kind(name: str) -> str:
    """The content kind of a file from its name (`.part` and query strings ignored); `data` when unknown."""
    n = name.lower().split("?")[0].removesuffix(".part")
    table = [
        ((".vcf.gz", ".vcf.bgz", ".vcf", ".gvcf.gz", ".gvcf"), "vcf"),
        ((".bcf",), "bcf"),
        ((".bed.gz", ".bed"), "bed"),  # or a PLINK 1 .bed: check() tells them apart by the PLINK magic
        ((".pgen",), "plink"),
        ((".bgen",), "bgen"),
        ((".fa.gz", ".fasta.gz", ".fna.gz", ".fa", ".fasta", ".fna"), "fasta"),
        ((".fastq.gz", ".fq.gz", ".fastq", ".fq"), "fastq"),
        ((".tbi",), "tbi"),
        ((".csi",), "csi"),
        ((".fai",), "fai"),
        ((".bai",), "bai"),
        ((".md5", ".sha256", "md5sum", "md5sums", "md5sums.txt", "md5checksums.txt"), "checksum"),
        ((".txt", ".tsv", ".csv", ".json"), "text"),
        ((".gz", ".bgz"), "gzip"),
    ]
    for suffixes, kind in table:
        if n.endswith(suffixes):
            return kind
    return "data"


def describe_body(head: bytes) -> str | None:
    """What a body that is clearly not data is ("the server answered an HTML page ..."), else None."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not head:
        return "a 0-byte (empty) file"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:1024]:
        title = re.search(rb"<title[^>]*>(.*?)</title>", head, re.I | re.S)
        shown = f" titled {title.group(1).decode(errors='replace').strip()[:80]!r}" if title else ""
        return f"the server answered an HTML page{shown} instead of the file"
    if text.startswith(b"<?xml") and b"<error" in text[:2048]:
        code = re.search(rb"<Code>(.*?)</Code>", head)
        shown = f" ({code.group(1).decode(errors='replace')})" if code else ""
        return f"the server answered an XML error document{shown} instead of the file"
    return None


def check(path: Path, kind: str | None = None, *, deep: bool = True) -> None:
    """Raise ContentError unless `path` holds a well-formed file of `kind` (inferred from the name if None).

    `deep=False` is the cheap re-check of a cache hit: the start of the body, the BGZF end-of-file block and a
    VCF's header, without decompressing everything."""
    path = Path(path)
    kind = kind or infer_kind(path.name)
    if kind not in KINDS:
        raise ValueError(f"unknown content kind {kind!r}; choose one of {', '.join(KINDS)}")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if (what := describe_body(head)) is not None:
        raise ContentError(what)
    if kind == "bed" and head[:2] == PLINK_MAGIC:
        kind = "plink"  # genotypes (PLINK 1 binary), not intervals: same suffix, told apart by the magic
    if kind == "plink":
        if head[:2] != PLINK_MAGIC:
            raise ContentError(f"not a PLINK .bed/.pgen (no 0x6c1b magic); got {_looks_like(head)}")
        return  # the readers check the size against .bim/.fam or .pvar/.psam
    if kind == "bgen":
        if len(head) < 20 or head[16:20] not in (b"bgen", b"\0\0\0\0"):
            raise ContentError(f"not a BGEN file (no 'bgen' magic in its header); got {_looks_like(head)}")
        return
    gz = head[:2] == b"\x1f\x8b"
    if kind in ("tbi", "csi", "bcf", "gzip") or (path.name.lower().removesuffix(".part").endswith((".gz", ".bgz"))
                                                  and kind not in ("checksum", "text", "data")):
        if not gz:
            raise ContentError(f"expected gzip-compressed data but got {_looks_like(head)}")
    if gz:
        if _is_bgzf(head) and not _ends_with_bgzf_eof(path):
            raise ContentError("truncated: the BGZF end-of-file block is missing (the download or the file was cut)")
        if not deep:
            _check_start(kind, _first_decompressed(head))
            if kind == "vcf":
                _check_vcf_header(path)
            return
        consumer = _consumer(kind)
        _gunzip_all(path, consumer)
    else:
        if kind == "bai" and head[:4] != b"BAI\x01":
            raise ContentError(f"not a BAM index (no BAI magic); got {_looks_like(head)}")
        if not deep:
            _check_start(kind, head)
            if kind == "vcf":
                _check_vcf_header(path)
            return
        consumer = _consumer(kind)
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                consumer(chunk)
        consumer(b"")
    if kind == "vcf":
        _check_vcf_header(path)


def _looks_like(head: bytes) -> str:
    if (what := describe_body(head)) is not None:
        return what
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:512]):
        first = head.split(b"\n", 1)[0][:60].decode(errors="replace")
        return f"plain text starting {first!r}"
    return f"unrecognised bytes starting {head[:8].hex()}"


def _is_bgzf(head: bytes) -> bool:
    return len(head) >= 16 and head[3] & 4 == 4 and head[12:14] == b"BC"


def _ends_with_bgzf_eof(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() < len(BGZF_EOF):
            return False
        fh.seek(-len(BGZF_EOF), 2)
        return fh.read() == BGZF_EOF


def _first_decompressed(head: bytes) -> bytes:
    try:
        return zlib.decompressobj(31).decompress(head, 512)
    except zlib.error as exc:
        raise ContentError(f"corrupt gzip data at the start of the file ({exc})") from exc


def _gunzip_all(path: Path, consumer: Callable[[bytes], None]) -> None:
    """Decompress every gzip member, which checks each member's CRC32 and length; feed the output on."""
    d, fed, offset = zlib.decompressobj(31), False, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            data = chunk
            while data:
                fed = True
                try:
                    out = d.decompress(data, CHUNK)
                except zlib.error as exc:
                    msg = "CRC check failed" if "check" in str(exc) else str(exc)
                    raise ContentError(f"corrupt gzip data near byte {offset:,} ({msg})") from exc
                if out:
                    consumer(out)
                if d.unconsumed_tail:
                    data = d.unconsumed_tail
                elif d.eof:  # a member ended: the next one (BGZF is many members) starts in unused_data
                    data, d, fed = d.unused_data, zlib.decompressobj(31), False
                    if data and data.strip(b"\x00") == b"" and not fh.peek(1):
                        data = b""  # zero padding at the very end is tolerated, like gzip(1)
                else:
                    data = b""
            offset += len(chunk)
    while fed and not d.eof and (out := d.decompress(b"", CHUNK)):  # output zlib still held back
        consumer(out)
    if fed and not d.eof:
        raise ContentError(f"truncated: the gzip data ends in the middle of a member after {offset:,} bytes")
    consumer(b"")


def _check_start(kind: str, start: bytes) -> None:
    s = start.lstrip(b"\r\n")
    if kind == "vcf" and not start.startswith(b"##fileformat=VCF"):
        raise ContentError(f"not a VCF: it does not start with ##fileformat=VCF but {_looks_like(start)}")
    if kind == "bcf" and not start.startswith(b"BCF\x02"):
        raise ContentError("not a BCF file (no BCF magic)")
    if kind == "fasta" and s and not s.startswith(b">"):
        raise ContentError(f"not a FASTA file: it does not start with '>' but {_looks_like(s)}")
    if kind == "fastq" and s and not s.startswith(b"@"):
        raise ContentError(f"not a FASTQ file: it does not start with '@' but {_looks_like(s)}")
    if kind == "tbi" and not start.startswith(b"TBI\x01"):
        raise ContentError("not a tabix index (no TBI magic after decompression)")
    if kind == "csi" and not start.startswith(b"CSI\x01"):
        raise ContentError("not a CSI index (no CSI magic after decompression)")
    if kind in ("checksum", "text", "fai", "bed") and b"\x00" in start:
        raise ContentError(f"expected text but got binary data ({_looks_like(start)})")


def _consumer(kind: str) -> Callable[[bytes], None]:
    """A push parser for the decompressed body: called with chunks, then with b'' at the end."""
    if kind == "fasta":
        return _FastaChecker()
    if kind == "bed":
        return _BedChecker()
    if kind == "fai":
        return _FaiChecker()
    if kind == "vcf":
        return _VcfChecker()
    started = [False]

    def start_only(chunk: bytes) -> None:
        if not started[0] and chunk:
            started[0] = True
            _check_start(kind, chunk[:4096])

    return start_only


class _Lines:
    """Complete lines from pushed chunks (the last partial line is held back)."""

    def __init__(self, kind: str):
        self.kind, self.carry, self.lineno, self.started = kind, b"", 0, False
        self.seen_enough = False  # a checker that needs no more lines sets this (the rest is not split)

    def __call__(self, chunk: bytes) -> None:
        if self.seen_enough:
            if not chunk:
                self.end()
            return
        if not self.started and chunk:
            self.started = True
            _check_start(self.kind, chunk[:4096])
        if not chunk:
            if self.carry:
                self.lineno += 1
                self.line(self.carry)
            self.end()
            return
        buf = self.carry + chunk
        lines = buf.split(b"\n")
        self.carry = lines.pop()
        if len(self.carry) > 1 << 20:
            raise ContentError(f"line {self.lineno + 1} is longer than 1 MiB: not a {self.kind.upper()} file")
        for line in lines:
            self.lineno += 1
            self.line(line)

    def line(self, line: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def end(self) -> None:
        pass


class _BedChecker(_Lines):
    def __init__(self):
        super().__init__("bed")
        self.intervals = 0

    def line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.strip() or line.startswith((b"#", b"track", b"browser")):
            return
        fields = line.split(b"\t")
        if len(fields) < 3:
            fields = line.split()
        where = f"BED line {self.lineno}"
        if len(fields) < 3:
            raise ContentError(f"{where}: expected chrom, start, end separated by tabs, got {line[:80]!r}")
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise ContentError(f"{where}: start and end must be integers, got {fields[1][:20]!r}, {fields[2][:20]!r}") from None
        if start < 0 or start >= end:
            raise ContentError(f"{where}: start {start} is not before end {end} ({fields[0].decode(errors='replace')})")
        self.intervals += 1

    def end(self) -> None:
        if self.intervals == 0:
            raise ContentError("a BED file with no intervals")


class _VcfChecker(_Lines):
    """Meta lines, then one #CHROM line, then records of at least 8 tab-separated columns (the first is read)."""

    def __init__(self):
        super().__init__("vcf")
        self.header_done = False
        self.records = 0

    def line(self, line: bytes) -> None:
        if self.records:
            return  # the body is for pysam and the tools; the CRC pass covers it
        if line.startswith(b"##"):
            if self.header_done:
                raise ContentError(f"VCF line {self.lineno}: a meta line after the #CHROM line")
            return
        if line.startswith(b"#CHROM"):
            self.header_done = True
            return
        if not line.strip():
            return
        if not self.header_done:
            raise ContentError(f"VCF line {self.lineno}: a record before the #CHROM header line")
        if len(line.split(b"\t")) < 8:
            raise ContentError(f"VCF line {self.lineno}: fewer than 8 tab-separated columns: {line[:80]!r}")
        self.records += 1
        self.seen_enough = True

    def end(self) -> None:
        if not self.header_done:
            raise ContentError("a VCF without its #CHROM header line")


class _FaiChecker(_Lines):
    def __init__(self):
        super().__init__("fai")

    def line(self, line: bytes) -> None:
        if not line.strip():
            return
        fields = line.rstrip(b"\r").split(b"\t")
        if len(fields) not in (5, 6) or not all(f.isdigit() for f in fields[1:]):
            raise ContentError(f"FASTA index line {self.lineno}: expected name and 4 numbers, got {line[:80]!r}")

    def end(self) -> None:
        if self.lineno == 0:
            raise ContentError("an empty FASTA index")


class _FastaChecker:
    """Headers start lines with '>'; everything else is sequence letters. Streams: unwrapped chromosomes of
    hundreds of Mbp on one line are fine, and the scan is bytes.translate/find (C speed)."""

    def __init__(self):
        self.state, self.records, self.at_line_start, self.offset = "start", 0, True, 0

    def __call__(self, chunk: bytes) -> None:
        if not chunk:
            if self.records == 0:
                raise ContentError("a FASTA file with no '>' record")
            return
        pos, n = 0, len(chunk)
        while pos < n:
            if self.state == "header":
                j = chunk.find(b"\n", pos)
                if j < 0:
                    pos = n
                    break
                pos, self.state, self.at_line_start = j + 1, "seq", True
                continue
            if self.at_line_start and chunk[pos] == 0x3E:  # '>'
                self.records += 1
                self.state, pos = "header", pos + 1
                continue
            if self.state == "start":
                if chunk[pos] in b"\r\n":
                    pos += 1
                    continue
                raise ContentError(f"not a FASTA file: it does not start with '>' but {_looks_like(chunk[pos:pos + 64])}")
            j = chunk.find(b"\n>", pos)
            end = j + 1 if j >= 0 else n
            bad = chunk[pos:end].translate(None, _SEQ_BYTES)
            if bad:
                at = self.offset + pos + chunk[pos:end].find(bad[:1])
                raise ContentError(
                    f"FASTA record {self.records}: byte {bad[:1]!r} at offset {at:,} is not a sequence letter"
                )
            self.at_line_start = chunk[end - 1] == 0x0A
            pos = end
        self.offset += n
        if self.state != "header":
            self.at_line_start = chunk[-1] == 0x0A


def _check_vcf_header(path: Path) -> None:
    """pysam opens it, finds a header with a #CHROM line, and reads the first record (if any)."""
    import pysam

    try:
        with pysam.VariantFile(str(path)) as vf:
            if not vf.header.contigs and not list(vf.header.samples) and len(vf.header.records) == 0:
                raise ContentError("a VCF without a header")
            next(iter(vf), None)
    except ContentError:
        raise
    except NotImplementedError:
        return  # plain gzip (not BGZF): htslib cannot open it here; _VcfChecker has read its header already
    except (OSError, ValueError) as exc:
        raise ContentError(f"not a VCF pysam can read ({exc})") from exc
