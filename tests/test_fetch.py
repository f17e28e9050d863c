"""The fetcher against a real local HTTP server and moto in server mode, faults included."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import subprocess
from pathlib import Path

import boto3
import pytest

from genoflows.fetch import (
    BadSourceFile,
    ChecksumMismatch,
    NotFound,
    PermanentFetchError,
    TransientFetchError,
    fetch,
)
from genoflows.testing.http_server import FileServer
from genoflows.testing.s3 import auth_enforced


def fastq_gz(n_reads: int, seed: int = 1) -> bytes:
    """A gzipped FASTQ of random reads (what an ENA mirror serves), so content checks see a real body. Stored
    (level 0) blocks: the size depends on the number of reads only, so same-size replacements are easy."""
    rng = random.Random(seed)
    reads = "".join(
        f"@r{i}\n{''.join(rng.choices('ACGT', k=100))}\n+\n{''.join(rng.choices('ABCDEFGHI', k=100))}\n"
        for i in range(n_reads)
    )
    return gzip.compress(reads.encode(), compresslevel=0)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    body = fastq_gz(2500)
    (root / "reads.fastq.gz").write_bytes(body)
    with FileServer(root) as server:
        yield server, body, hashlib.md5(body).hexdigest()


def test_http_fetch_verifies_and_caches(served, tmp_path):
    server, body, md5 = served
    dest = tmp_path / "out" / "reads.fastq.gz"
    result = fetch(server.url("reads.fastq.gz"), dest, md5=md5, size=len(body))
    assert result.downloaded and dest.read_bytes() == body
    again = fetch(server.url("reads.fastq.gz"), dest, md5=md5)
    assert not again.downloaded
    assert len(server.downloads("reads")) == 1  # the second call touched no network
    assert not list(dest.parent.glob("*.part"))


def test_dropped_connection_resumes_with_range(served, tmp_path):
    server, body, md5 = served
    server.add_fault("reads", "drop")
    dest = tmp_path / "reads.fastq.gz"
    with pytest.raises(TransientFetchError, match="truncated|RemoteProtocolError|will resume"):
        fetch(server.url("reads.fastq.gz"), dest, md5=md5)
    assert not dest.exists()  # a partial is never under the final name
    part = dest.with_name(dest.name + ".part")
    kept = part.stat().st_size
    assert 0 < kept < len(body)
    fetch(server.url("reads.fastq.gz"), dest, md5=md5)
    assert dest.read_bytes() == body
    assert (server.requests[-1].range, server.requests[-1].status) == (f"bytes={kept}-", 206)
    assert not part.exists() and not Path(f"{part}.validator").exists()


def _drop_then_replace(server: FileServer, dest: Path, new_body: bytes) -> None:
    """A download cut half-way (a partial is kept for resuming), then the file replaced on the server."""
    server.add_fault("reads", "drop")
    with pytest.raises(TransientFetchError):
        fetch(server.url("reads.fastq.gz"), dest)
    (server.root / "reads.fastq.gz").write_bytes(new_body)


def test_file_changed_between_attempts_is_fetched_whole_again(served, tmp_path):
    """If-Range: a resume against a file that changed on the server gets the new file whole, never a splice."""
    server, body, _ = served
    dest = tmp_path / "reads.fastq.gz"
    new_body = fastq_gz(2500, seed=2)  # same size (stored gzip blocks): only the validator can tell
    assert len(new_body) == len(body) and new_body != body
    _drop_then_replace(server, dest, new_body)
    fetch(server.url("reads.fastq.gz"), dest)
    assert dest.read_bytes() == new_body
    assert server.requests[-1].range is not None and server.requests[-1].status == 200


def test_wrong_size_after_a_resume_leaves_nothing_to_splice(served, tmp_path):
    server, body, _ = served
    dest = tmp_path / "reads.fastq.gz"
    _drop_then_replace(server, dest, fastq_gz(2501))
    with pytest.raises(ChecksumMismatch, match="expected"):
        fetch(server.url("reads.fastq.gz"), dest, size=len(body))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("reads")) == []
    new = fetch(server.url("reads.fastq.gz"), dest)
    assert new.path.read_bytes() == (server.root / "reads.fastq.gz").read_bytes()


def test_gzip_content_encoding_is_stored_as_published(tmp_path):
    import gzip

    root = tmp_path / "www"
    root.mkdir()
    published = gzip.compress(b"chr1\t0\t1000\n" * 500)
    (root / "conf.bed.gz").write_bytes(published)
    with FileServer(root, gzip_content_encoding=True) as server:
        got = fetch(server.url("conf.bed.gz"), tmp_path / "conf.bed.gz", md5=hashlib.md5(published).hexdigest())
    assert got.path.read_bytes() == published


def test_corrupt_body_is_removed_and_503_is_transient(served, tmp_path):
    server, body, md5 = served
    dest = tmp_path / "reads.fastq.gz"
    server.add_fault("reads", "corrupt")
    with pytest.raises(ChecksumMismatch, match="md5"):
        fetch(server.url("reads.fastq.gz"), dest, md5=md5)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    server.add_fault("reads", "503")
    with pytest.raises(TransientFetchError, match="503"):
        fetch(server.url("reads.fastq.gz"), dest, md5=md5)
    assert fetch(server.url("reads.fastq.gz"), dest, md5=md5).downloaded


def test_404_is_permanent(served, tmp_path):
    server, _, _ = served
    with pytest.raises(PermanentFetchError, match="404"):
        fetch(server.url("missing.vcf.gz"), tmp_path / "missing.vcf.gz")


def test_local_path_and_bad_scheme(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("hello\n")
    out = fetch(str(src), tmp_path / "copy" / "a.txt", sha256=hashlib.sha256(b"hello\n").hexdigest())
    assert out.path.read_text() == "hello\n"
    assert not fetch(str(src), tmp_path / "copy" / "a.txt").downloaded
    src.write_text("hullo\n")  # edited in place after the copy
    assert fetch(str(src), tmp_path / "copy" / "a.txt").downloaded and out.path.read_text() == "hullo\n"
    corrected = tmp_path / "corrected.txt"  # prepared earlier, then moved into place: its mtime is older
    corrected.write_text("hello again\n")
    os.utime(corrected, ns=(0, 10**9))
    corrected.replace(src)
    assert fetch(str(src), tmp_path / "copy" / "a.txt").downloaded and out.path.read_text() == "hello again\n"
    assert not fetch(str(src), tmp_path / "copy" / "a.txt").downloaded
    with pytest.raises(PermanentFetchError, match="no such file"):
        fetch(str(tmp_path / "nope"), tmp_path / "x")
    with pytest.raises(PermanentFetchError, match="unsupported URI scheme"):
        fetch("ftp://example.org/x", tmp_path / "y")


def test_disk_full_fails_cleanly(served, tmp_path):
    server, _, md5 = served
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(PermanentFetchError, match="not enough disk|disk full"):
            fetch(server.url("reads.fastq.gz"), small / "reads.fastq.gz", md5=md5)
        assert [p.name for p in small.iterdir() if not p.name.endswith(".lock")] == []
        # no Content-Length: the free-space check cannot run, the write itself hits ENOSPC
        server.add_fault("reads", "nolength")
        with pytest.raises(PermanentFetchError, match="disk full while writing"):
            fetch(server.url("reads.fastq.gz"), small / "reads.fastq.gz", md5=md5)
        assert [p.name for p in small.iterdir() if not p.name.endswith(".lock")] == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def _s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def test_s3_single_and_multipart_etag(moto_endpoint, tmp_path):
    s3 = _s3(moto_endpoint)
    s3.create_bucket(Bucket="lab-fetch")
    small, big = os.urandom(1000), os.urandom(17 << 20)
    s3.put_object(Bucket="lab-fetch", Key="calls/small.bin", Body=small)
    big_path = tmp_path / "big.bin"
    big_path.write_bytes(big)
    from boto3.s3.transfer import TransferConfig

    s3.upload_file(str(big_path), "lab-fetch", "calls/big.bin", Config=TransferConfig(multipart_chunksize=5 << 20))
    assert "-" in s3.head_object(Bucket="lab-fetch", Key="calls/big.bin")["ETag"]
    got = fetch("s3://lab-fetch/calls/small.bin", tmp_path / "s.bin", s3_client=s3)
    assert got.path.read_bytes() == small
    got = fetch("s3://lab-fetch/calls/big.bin", tmp_path / "b.bin", s3_client=s3)
    assert hashlib.sha256(got.path.read_bytes()).digest() == hashlib.sha256(big).digest()
    with pytest.raises(NotFound, match="no such object"):
        fetch("s3://lab-fetch/calls/absent.vcf.gz", tmp_path / "absent", s3_client=s3)


def _upload_uneven(s3, bucket: str, key: str, sizes: list[int]) -> bytes:
    """A multipart upload whose parts differ in size (what a client that streams does: parts as they come)."""
    rng = random.Random(sum(sizes))
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts, body = [], b""
    for number, n in enumerate(sizes, 1):
        chunk = rng.randbytes(n)
        body += chunk
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=number, Body=chunk)["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
    return body


def test_s3_uneven_multipart_parts_verify(moto_endpoint, tmp_path):
    """Parts of 6 MiB, 5 MiB and 12345 bytes: the ETag is recomputed from the object's own part sizes, not from
    part 1's size (which gave 2 parts and a false mismatch)."""
    s3 = _s3(moto_endpoint)
    s3.create_bucket(Bucket="lab-uneven")
    body = _upload_uneven(s3, "lab-uneven", "calls/uneven.bin", [6 << 20, 5 << 20, 12345])
    assert s3.head_object(Bucket="lab-uneven", Key="calls/uneven.bin")["ETag"].endswith('-3"')
    got = fetch("s3://lab-uneven/calls/uneven.bin", tmp_path / "uneven.bin", s3_client=s3)
    assert got.downloaded and got.sha256 == hashlib.sha256(body).hexdigest()


class _NoPartNumberClient:
    """A real boto3 client in front of an S3 clone that does not support HEAD ?partNumber= (InvalidArgument)."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def head_object(self, **kwargs):
        if "PartNumber" in kwargs:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "InvalidArgument", "Message": "partNumber"}}, "HeadObject")
        return self._client.head_object(**kwargs)


def test_without_part_sizes_a_full_object_checksum_verifies(moto_endpoint, tmp_path):
    """When the parts cannot be asked for, the object's full-object CRC32 checks the body; with no such checksum
    either, size and content stand and the log says so."""
    s3 = _s3(moto_endpoint)
    s3.create_bucket(Bucket="lab-clone")
    up = s3.create_multipart_upload(Bucket="lab-clone", Key="crc.bin", ChecksumAlgorithm="CRC32",
                                    ChecksumType="FULL_OBJECT")
    rng, parts = random.Random(5), []
    for number, n in enumerate([5 << 20, 3333], 1):
        r = s3.upload_part(Bucket="lab-clone", Key="crc.bin", UploadId=up["UploadId"], PartNumber=number,
                           Body=rng.randbytes(n), ChecksumAlgorithm="CRC32")
        parts.append({"ETag": r["ETag"], "PartNumber": number, "ChecksumCRC32": r["ChecksumCRC32"]})
    s3.complete_multipart_upload(Bucket="lab-clone", Key="crc.bin", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": parts})
    clone = _NoPartNumberClient(s3)
    assert fetch("s3://lab-clone/crc.bin", tmp_path / "crc.bin", s3_client=clone).downloaded
    corrupting = _CorruptingClient(clone)
    with pytest.raises(ChecksumMismatch, match="full-object checksum"):
        fetch("s3://lab-clone/crc.bin", tmp_path / "crc2.bin", s3_client=corrupting)
    _upload_uneven(s3, "lab-clone", "plain.bin", [5 << 20, 10])
    logged: list[str] = []
    assert fetch("s3://lab-clone/plain.bin", tmp_path / "plain.bin", s3_client=clone, log=logged.append).downloaded
    assert "cannot be recomputed" in logged[0]


class _CorruptingClient:
    """A real boto3 client whose downloads arrive with one byte flipped (a faulty proxy or NIC)."""

    def __init__(self, client):
        self._client, self.downloads = client, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def download_file(self, bucket, key, filename, **kwargs):
        self._client.download_file(bucket, key, filename, **kwargs)
        self.downloads += 1
        data = bytearray(Path(filename).read_bytes())
        data[len(data) // 2] ^= 0x01
        Path(filename).write_bytes(bytes(data))


def test_s3_etag_mismatch_is_permanent_after_one_redownload(moto_endpoint, tmp_path):
    s3 = _s3(moto_endpoint)
    s3.create_bucket(Bucket="lab-mismatch")
    _upload_uneven(s3, "lab-mismatch", "multi.bin", [5 << 20, 6 << 20, 1000])
    s3.put_object(Bucket="lab-mismatch", Key="single.bin", Body=b"single part body" * 100)
    for key in ("multi.bin", "single.bin"):
        client = _CorruptingClient(s3)
        dest = tmp_path / key
        with pytest.raises(ChecksumMismatch, match="ETag"):
            fetch(f"s3://lab-mismatch/{key}", dest, s3_client=client)
        with pytest.raises(BadSourceFile, match="downloaded twice"):
            fetch(f"s3://lab-mismatch/{key}", dest, s3_client=client)
        assert client.downloads == 2
        assert sorted(p.name for p in tmp_path.iterdir() if key in p.name and not p.name.endswith(".lock")) == []
        assert fetch(f"s3://lab-mismatch/{key}", dest, s3_client=s3).downloaded  # a sound transfer is kept


def test_missing_credentials_are_permanent(moto_endpoint, tmp_path, monkeypatch):
    import botocore.session

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    session = botocore.session.get_session()
    client = session.create_client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    with pytest.raises(PermanentFetchError, match="no usable AWS credentials"):
        fetch("s3://lab-fetch/calls/small.bin", tmp_path / "s.bin", s3_client=client)


def test_s3_access_denied_is_permanent(moto_endpoint, tmp_path):
    s3 = _s3(moto_endpoint)
    s3.create_bucket(Bucket="lab-private")
    s3.put_object(Bucket="lab-private", Key="x.vcf.gz", Body=b"data")
    with auth_enforced(moto_endpoint) as (key, secret):
        denied = boto3.client(
            "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
            aws_access_key_id=key, aws_secret_access_key=secret,
        )
        with pytest.raises(PermanentFetchError, match="access denied"):
            fetch("s3://lab-private/x.vcf.gz", tmp_path / "x.vcf.gz", s3_client=denied)
    assert not (tmp_path / "x.vcf.gz").exists() and not Path(str(tmp_path / "x.vcf.gz") + ".part").exists()


def test_s3_reupload_under_same_key_is_fetched_again(moto_endpoint, tmp_path):
    s3 = _s3(moto_endpoint)
    s3.create_bucket(Bucket="lab-reupload")
    s3.put_object(Bucket="lab-reupload", Key="s1.calls.txt", Body=b"first calls")
    dest = tmp_path / "s1.calls.txt"
    assert fetch("s3://lab-reupload/s1.calls.txt", dest, s3_client=s3).downloaded
    assert not fetch("s3://lab-reupload/s1.calls.txt", dest, s3_client=s3).downloaded  # same object: cache hit
    s3.put_object(Bucket="lab-reupload", Key="s1.calls.txt", Body=b"corrected calls")
    again = fetch("s3://lab-reupload/s1.calls.txt", dest, s3_client=s3)
    assert again.downloaded and dest.read_bytes() == b"corrected calls"
