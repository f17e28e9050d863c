"""Content is verified before a file is kept, cache hits are re-checked and healed, and the HTTP client behaves
(timeouts, Retry-After, redacted URLs) - against the real local HTTP server, without Prefect."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pysam
import pytest

from genoflows import fetch as fetch_mod
from genoflows import verify
from genoflows.fetch import (
    BadSourceFile,
    ContentMismatch,
    NotFound,
    TransientFetchError,
    check_cached,
    fetch,
    redact_url,
)
from genoflows.files import atomic_output, safe_name
from genoflows.settings import get_settings
from genoflows.testing.http_server import FileServer

VCF_HEADER = (
    "##fileformat=VCFv4.2\n##contig=<ID=chr1,length=100000>\n##FORMAT=<ID=GT,Number=1,Type=String,Description=\"GT\">\n"
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tHG002\n"
)


def write_vcf_gz(path: Path, n: int = 3000) -> bytes:
    """A bgzipped, valid truth-like VCF of `n` SNPs (several BGZF blocks)."""
    text = VCF_HEADER + "".join(f"chr1\t{10 + 30 * i}\t.\tA\tG\t50\tPASS\t.\tGT\t0/1\n" for i in range(n))
    plain = path.with_name(path.name.removesuffix(".gz"))
    plain.write_text(text)
    pysam.tabix_compress(str(plain), str(path), force=True)
    plain.unlink()
    return path.read_bytes()


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    body = write_vcf_gz(root / "truth.vcf.gz")
    (root / "conf.bed").write_text("chr1\t0\t5000\nchr1\t6000\t9000\n")
    with FileServer(root) as server:
        yield server, body


def _leftovers(folder: Path) -> list[str]:
    """Files other than verified outputs, their records and locks: temp files, partials, 0-byte files."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.endswith((".part", ".tmp", ".validator", ".etag-mismatch")) or ".tmp-" in p.name
                  or p.stat().st_size == 0 and not p.name.endswith(".lock"))


def test_an_html_page_answered_with_200_is_never_kept(mirror, tmp_path):
    server, body = mirror
    server.add_fault("truth.vcf.gz", "html")
    dest = tmp_path / "refs" / "truth.vcf.gz"
    with pytest.raises(ContentMismatch, match=r"truth\.vcf\.gz.*the server answered an HTML page titled"):
        fetch(server.url("truth.vcf.gz"), dest)
    assert not dest.exists() and _leftovers(dest.parent) == []
    assert fetch(server.url("truth.vcf.gz"), dest).path.read_bytes() == body  # the next attempt fetches again


def test_a_body_corrupted_after_a_range_resume_is_caught_without_any_checksum(mirror, tmp_path):
    """No md5 published: the gzip CRC/inflate check is what catches a splice of good and bad bytes."""
    server, body = mirror
    server.add_fault("truth.vcf.gz", "drop")
    server.add_fault("truth.vcf.gz", "corrupt-resume")
    dest = tmp_path / "truth.vcf.gz"
    with pytest.raises(TransientFetchError, match="will resume"):
        fetch(server.url("truth.vcf.gz"), dest)
    with pytest.raises(ContentMismatch, match="corrupt gzip data|CRC"):
        fetch(server.url("truth.vcf.gz"), dest)
    assert [r.status for r in server.downloads("truth")] == [200, 206]
    assert not dest.exists() and _leftovers(tmp_path) == []
    got = fetch(server.url("truth.vcf.gz"), dest)
    assert got.path.read_bytes() == body and got.sha256 == hashlib.sha256(body).hexdigest()
    assert server.downloads("truth")[-1].range is None  # fetched whole again, not resumed onto bad bytes


def test_a_truncated_bgzf_body_is_named_as_truncated(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    body = write_vcf_gz(src / "calls.vcf.gz")
    (src / "cut.vcf.gz").write_bytes(body[: len(body) - 28])  # without the BGZF EOF block
    with pytest.raises(BadSourceFile, match=r"cut\.vcf\.gz.*truncated.*end-of-file block"):
        fetch(str(src / "cut.vcf.gz"), tmp_path / "out" / "cut.vcf.gz")  # a local file: fetching again won't help
    (src / "empty.vcf.gz").write_bytes(b"")
    with pytest.raises(BadSourceFile, match="0-byte"):
        fetch(str(src / "empty.vcf.gz"), tmp_path / "out" / "empty.vcf.gz")
    assert _leftovers(tmp_path / "out") == [] and not (tmp_path / "out" / "cut.vcf.gz").exists()


def test_a_bed_with_start_after_end_is_rejected_with_its_line_number(mirror, tmp_path):
    server, _ = mirror
    (server.root / "conf.bed").write_text("track name=conf\nchr1\t0\t5000\nchr1\t9000\t6000\n")
    with pytest.raises(ContentMismatch, match=r"BED line 3: start 9000 is not before end 6000"):
        fetch(server.url("conf.bed"), tmp_path / "conf.bed")
    md5 = hashlib.md5((server.root / "conf.bed").read_bytes()).hexdigest()
    with pytest.raises(BadSourceFile, match="BED line 3"):  # the published file itself is bad: no retries
        fetch(server.url("conf.bed"), tmp_path / "conf.bed", md5=md5)


def test_kind_overrides_the_name(mirror, tmp_path):
    server, _ = mirror
    (server.root / "download").write_bytes((server.root / "conf.bed").read_bytes())
    assert fetch(server.url("download"), tmp_path / "regions", kind="bed").downloaded
    (server.root / "download2").write_text("not\ta bed\n")
    with pytest.raises(ContentMismatch, match="BED line 1"):
        fetch(server.url("download2"), tmp_path / "regions2", kind="bed")


def test_a_cache_entry_that_fails_its_check_is_fetched_again(mirror, tmp_path):
    server, body = mirror
    dest = tmp_path / "truth.vcf.gz"
    fetch(server.url("truth.vcf.gz"), dest)
    # a cache poisoned before content was checked: an HTML page under the final name, no verification record
    dest.write_bytes(b"<html><head><title>Maintenance</title></head></html>")
    fetch_mod._record_path(dest).unlink()
    assert "HTML page" in check_cached(dest)
    logged: list[str] = []
    healed = fetch(server.url("truth.vcf.gz"), dest, log=logged.append)
    assert healed.downloaded and healed.healed and dest.read_bytes() == body
    assert "fails its check" in logged[0]
    # truncated in place (size no longer what was verified)
    dest.write_bytes(body[:-28])
    assert fetch(server.url("truth.vcf.gz"), dest).healed and dest.read_bytes() == body
    # a cache hit that passes touches no network
    n = len(server.requests)
    assert not fetch(server.url("truth.vcf.gz"), dest).downloaded and len(server.requests) == n


def test_429_waits_what_retry_after_asks_bounded(mirror, tmp_path, monkeypatch):
    server, _ = mirror
    waits: list[float] = []
    monkeypatch.setattr(fetch_mod, "_wait", waits.append)
    monkeypatch.setenv("GENOFLOWS_RETRY_MAX_DELAY_SECONDS", "30")
    get_settings.cache_clear()
    try:
        server.retry_after = "7"
        server.add_fault("truth.vcf.gz", "429")
        with pytest.raises(TransientFetchError, match="HTTP 429.*Retry-After '7' honoured"):
            fetch(server.url("truth.vcf.gz"), tmp_path / "t.vcf.gz")
        server.retry_after = "86400"  # a day: bounded by the retry policy's longest delay
        server.add_fault("truth.vcf.gz", "429")
        with pytest.raises(TransientFetchError, match="429"):
            fetch(server.url("truth.vcf.gz"), tmp_path / "t.vcf.gz")
        assert waits == [7.0, 30.0]
    finally:
        get_settings.cache_clear()
    assert fetch_mod.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", cap=10) == 0.0  # a date in the past
    assert fetch(server.url("truth.vcf.gz"), tmp_path / "t.vcf.gz").downloaded


def test_every_request_has_a_timeout(mirror, tmp_path, monkeypatch):
    server, _ = mirror
    monkeypatch.setenv("GENOFLOWS_HTTP_TIMEOUT_SECONDS", "0.5")
    get_settings.cache_clear()
    try:
        server.add_fault("truth.vcf.gz", "stall")
        with pytest.raises(TransientFetchError, match="Timeout"):
            fetch(server.url("truth.vcf.gz"), tmp_path / "t.vcf.gz")
    finally:
        server.release_stalled.set()
        get_settings.cache_clear()


def test_urls_are_redacted_in_errors(mirror, tmp_path):
    server, _ = mirror
    assert redact_url("https://user:pw@bucket.s3.amazonaws.com/a/b.vcf.gz?X-Amz-Signature=abc#x") == (
        "https://bucket.s3.amazonaws.com/a/b.vcf.gz"
    )
    assert redact_url("s3://bucket/key.vcf.gz") == "s3://bucket/key.vcf.gz"
    secret = "X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef"
    with pytest.raises(NotFound) as err:
        fetch(f"{server.url('absent.vcf.gz')}?{secret}", tmp_path / "absent.vcf.gz")
    assert "absent.vcf.gz" in str(err.value) and "deadbeef" not in str(err.value) and "AKIA" not in str(err.value)
    server.add_fault("truth.vcf.gz", "html")
    with pytest.raises(ContentMismatch) as err:
        fetch(f"{server.url('truth.vcf.gz')}?{secret}", tmp_path / "t.vcf.gz")
    assert "deadbeef" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("x.vcf.gz", gzip.compress(b"##fileformat=VCFv4.2\nchr1\t1\n"), "record before the #CHROM"),
        ("x.vcf", b"hello\n", "does not start with ##fileformat=VCF"),
        ("x.fa", b">chr1\nACGT\n<b>oops</b>\n", "not a sequence letter"),
        ("x.fa.gz", gzip.compress(b"ACGT\n"), "does not start with '>'"),
        ("x.vcf.gz.tbi", b"<!DOCTYPE html><html></html>", "HTML page"),
        ("x.vcf.gz.tbi", gzip.compress(b"XXXX" * 10), "not a tabix index"),
        ("x.fa.fai", b"chr1\t100\tsix\t60\t61\n", "FASTA index line 1"),
        ("md5sum", b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "XML error document"),
        ("SRR1.sra", b"<html><body>blocked</body></html>", "HTML page"),
        ("example.bed", b"<html><body>maintenance</body></html>", "HTML page"),
        ("example.pgen", b"PK\x03\x04 not a pgen", "not a PLINK"),
        ("example.bgen", b"\x14\x00\x00\x00" * 8, "not a BGEN"),
    ],
)
def test_content_checks_say_what_arrived(tmp_path, name, body, message):
    (tmp_path / name).write_bytes(body)
    with pytest.raises(verify.ContentError, match=message):
        verify.check(tmp_path / name)


def test_a_gzip_crc_error_is_found_end_to_end(tmp_path):
    data = bytearray(gzip.compress(b"@r\nACGT\n+\nIIII\n" * 5000, compresslevel=0))
    data[-12] ^= 0x01  # a byte of the last stored block: inflate succeeds, the CRC does not
    (tmp_path / "r.fastq.gz").write_bytes(bytes(data))
    with pytest.raises(verify.ContentError, match="CRC"):
        verify.check(tmp_path / "r.fastq.gz")
    verify.check(tmp_path / "r.fastq.gz", deep=False)  # the cheap check does not read it all (documented)


def test_atomic_output_leaves_nothing_behind_and_indexes(tmp_path):
    dest = tmp_path / "ref.fa"
    with pytest.raises(RuntimeError), atomic_output(dest, index="fai") as tmp:
        tmp.write_text(">chr1\nACGT\n")
        raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(dest, index="fai") as tmp:
        tmp.write_text(">chr1\nACGTACGT\nACG\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.fa", "ref.fa.fai"]
    assert Path(f"{dest}.fai").read_text().startswith("chr1\t11\t")
    vcf = tmp_path / "v.vcf.gz"
    with atomic_output(vcf, index="tbi") as tmp:
        write_vcf_gz(tmp, n=10)
    assert pysam.VariantFile(str(vcf)).fetch("chr1", 0, 100) is not None and Path(f"{vcf}.tbi").exists()


def test_safe_name_is_one_rule():
    assert safe_name("NA24143_Lib3_Rep1", "sample id") == "NA24143_Lib3_Rep1"
    for bad in ("../etc", "a/b", "-rf", ".hidden", "a..b", "", "x" * 201, "a b"):
        with pytest.raises(ValueError, match="not a safe name"):
            safe_name(bad, "sample id")


def test_kinds_from_names():
    assert [verify.infer_kind(n) for n in (
        "HG002.g.vcf.gz", "NA24143.gvcf.gz", "conf.bed.gz", "GRCh38.fasta.gz", "x.vcf.gz.tbi", "x.bcf.csi",
        "md5sum", "x.vcf.gz.md5", "SRR1_1.fastq.gz", "SRR1.sra", "x.vcf.gz.part", "x.pgen", "x.bgen",
    )] == ["vcf", "vcf", "bed", "fasta", "tbi", "csi", "checksum", "checksum", "fastq", "data", "vcf", "plink", "bgen"]



def test_genotype_files_are_kept_by_their_magic_not_taken_for_text(tmp_path):
    """A PLINK 1 .bed shares its suffix with BED intervals: its magic says it holds genotypes, not intervals."""
    from tests.regenie_golden import EXAMPLE as examples  # regenie's example data (shared/ beside the clone)

    for name in ("example.bed", "example.pgen", "example.bgen"):
        verify.check(examples / name)  # regenie's own example files pass
    (tmp_path / "cohort.bed").write_bytes(b"\x6c\x1b\x01" + bytes(100))
    verify.check(tmp_path / "cohort.bed")
    (tmp_path / "regions.bed").write_bytes(b"chr1\t10\t5\n")
    with pytest.raises(verify.ContentError, match="line 1"):
        verify.check(tmp_path / "regions.bed")
