"""Resolving runs against a local ENA-like server, AWS ODP and NCBI SDL stand-ins; downloading one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genoflows.fetch import file_digest
from genoflows.rnaseq.metadata import Run
from genoflows.rnaseq.sources import Endpoints, resolve_all
from genoflows.rnaseq.stages import TruncatedFastq, count_fastq_records, download_run, verify_fastqs
from genoflows.testing import rnaseq_world as sim
from genoflows.testing.http_server import FileServer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    (root / "srv").mkdir()
    tx = sim.make_transcriptome(root / "tx.fa", n_genes=8, seed=3)
    with FileServer(root / "srv") as server:
        host = server.base_url.split("://")[1]
        cat = sim.EnaCatalog(root / "srv")
        paired = sim.simulate_run(tx, root / "gen", "SRR3000001", n_fragments=300, seed=1)
        unpaired = sim.simulate_run(tx, root / "gen", "SRR3000001", layout="single", n_fragments=20, seed=2)
        cat.add(paired, host=host, extra_unpaired=unpaired.files[0])
        cat.add(sim.simulate_run(tx, root / "gen", "SRR3000002", layout="single", n_fragments=200, seed=3), host=host)
        cat.add_empty("SRR3000003")
        sra_run = sim.simulate_run(tx, root / "gen", "SRR3000003", n_fragments=200, seed=4)
        sim.make_sra(sra_run, root / "srv" / "sra" / "SRR3000003" / "SRR3000003")
        cat.rows["SRR3000004"] = {**cat.rows["SRR3000002"], "run_accession": "SRR3000004",
                                  "fastq_ftp": f"{host}/vol1/../../etc/passwd"}  # fmt: skip
        sdl = {"version": "2", "result": [{"files": [
            {"type": "sra", "name": "SRR3000005.noqual", "size": 5, "locations": [{"service": "s3", "link": "x"}]},
            {"type": "sra", "name": "SRR3000005", "size": 1234, "md5": "0" * 32, "locations": [
                {"service": "s3", "link": "https://paid/x", "payRequired": True},
                {"service": "sra-ncbi", "link": "https://ncbi/SRR3000005"}]}]}]}  # fmt: skip
        server.add_route("/filereport", cat.filereport_handler())
        server.add_route("/sdl", lambda q: (200, "application/json", json.dumps(sdl).encode()))
        endpoints = Endpoints(server.base_url, server.base_url + "/sra", server.base_url + "/sdl")
        yield root, server, endpoints, paired


def test_ena_paired_picks_mates_and_ignores_unpaired_file(world):
    root, server, ep, paired = world
    (res,), failed, _ = resolve_all([Run("SRR3000001", "X", "paired")], ["ena"], ep)
    assert not failed and res.source == "ena" and res.layout == "paired"
    assert [f.name for f in res.files] == ["SRR3000001_1.fastq.gz", "SRR3000001_2.fastq.gz"]
    assert res.files[0].md5 == file_digest(paired.files[0], "md5") and res.files[0].size == paired.files[0].stat().st_size
    assert res.reserve_bytes == sum(f.stat().st_size for f in paired.files)
    assert res.files[0].uri.startswith("http://") and res.expected_fragments is None  # 3 files: counts unknown


def test_ena_single_with_layout_mismatch_is_a_note(world):
    _, _, ep, _ = world
    (res,), _, _ = resolve_all([Run("SRR3000002", "X", "paired")], ["ena"], ep)
    assert res.layout == "single" and res.expected_fragments == 200
    assert "layout mismatch" in res.notes[0]


def test_fallback_to_aws_sra_reserves_ten_times(world):
    root, _, ep, _ = world
    (res,), failed, _ = resolve_all([Run("SRR3000003", "X", None)], ["ena", "aws"], ep)
    size = (root / "srv/sra/SRR3000003/SRR3000003").stat().st_size
    assert not failed and res.source == "aws" and res.needs_conversion and res.reserve_bytes == 10 * size


def test_ncbi_sdl_picks_free_full_quality_file(world):
    _, _, ep, _ = world
    (res,), _, _ = resolve_all([Run("SRR3000005", "X", None)], ["ncbi"], ep)
    assert res.files[0].uri == "https://ncbi/SRR3000005" and res.files[0].size == 1234 and res.reserve_bytes == 12340


def test_unresolvable_and_unsafe_runs_fail_alone(world):
    _, _, ep, _ = world
    runs = [Run("SRR3000009", "X", None), Run("SRR3000004", "X", None), Run("SRR3000002", "X", None)]
    resolved, failed, _ = resolve_all(runs, ["ena", "aws"], ep)
    assert [r.run.run for r in resolved] == ["SRR3000002"]
    reasons = dict(failed)
    assert "ena:" in reasons["SRR3000009"] and "aws:" in reasons["SRR3000009"]
    assert "refusing file name" in reasons["SRR3000004"]


def test_explicit_local_uris(world, tmp_path):
    root, _, ep, paired = world
    run = Run("lab1", "X", "paired", uris=tuple(str(p) for p in paired.files))
    (res,), _, _ = resolve_all([run], ["ena"], ep)
    assert res.source == "explicit" and [f.name for f in res.files] == ["lab1_1.fastq.gz", "lab1_2.fastq.gz"]
    local = download_run(res, tmp_path)
    assert local.layout == "paired" and local.expected_fragments == 300  # counted: nothing published


def test_download_sra_converts_with_fasterq_dump(world, tmp_path):
    _, _, ep, _ = world
    (res,), _, _ = resolve_all([Run("SRR3000003", "X", "paired")], ["aws"], ep)
    local = download_run(res, tmp_path, threads=1)
    assert local.layout == "paired" and [p.name for p in local.files] == ["SRR3000003_1.fastq", "SRR3000003_2.fastq"]
    assert not (tmp_path / "SRR3000003" / "SRR3000003.sra").exists() and local.expected_fragments == 200


def test_truncated_fastq_detected(world, tmp_path):
    _, _, _, paired = world
    data = paired.files[0].read_bytes()
    cut = tmp_path / "cut_1.fastq.gz"
    cut.write_bytes(data[: len(data) // 2])
    assert count_fastq_records(paired.files[0]) == 300
    with pytest.raises(TruncatedFastq, match="gzip stream ends early"):
        count_fastq_records(cut)
    plain = tmp_path / "p.fastq"
    plain.write_text("@r\nACGT\n+\nFFFF\n@r2\nAC\n")
    with pytest.raises(TruncatedFastq, match="whole number"):
        count_fastq_records(plain)
    with pytest.raises(TruncatedFastq, match="mates differ"):
        other = tmp_path / "o.fastq"
        other.write_text("@r\nACGT\n+\nFFFF\n")
        verify_fastqs("paired", (paired.files[0], Path(other)))


def test_multi_member_gzip_is_counted_whole_and_a_cut_last_member_is_caught(tmp_path):
    """bgzip and `cat a.gz b.gz` make several gzip members: every member counts; a cut in the last one is caught."""
    import gzip

    members = [gzip.compress(b"".join(b"@r%d\nACGT\n+\nFFFF\n" % (i * 10 + j) for j in range(n)))
               for i, n in enumerate((3, 5, 2))]  # fmt: skip
    whole = tmp_path / "multi.fastq.gz"
    whole.write_bytes(b"".join(members))
    assert count_fastq_records(whole) == 10
    cut = tmp_path / "cut.fastq.gz"
    cut.write_bytes(b"".join(members)[:-12])  # inside the last member's deflate data / trailer
    with pytest.raises(TruncatedFastq, match="gzip stream ends early"):
        count_fastq_records(cut)
    bad_crc = bytearray(b"".join(members))
    bad_crc[-5] ^= 0xFF  # the last member's CRC32 no longer matches its data
    corrupt = tmp_path / "corrupt.fastq.gz"
    corrupt.write_bytes(bytes(bad_crc))
    with pytest.raises(TruncatedFastq, match="corrupt gzip data"):
        count_fastq_records(corrupt)


def test_resumed_download_counts_only_new_bytes(world, tmp_path):
    """A dropped connection, then the task's retry resumes the partial file: bytes are counted once."""
    from genoflows.fetch import TransientFetchError

    _, server, ep, _ = world
    (res,), _, _ = resolve_all([Run("SRR3000002", "X", "single")], ["ena"], ep)
    size = res.files[0].size
    counted: list[int] = []
    server.add_fault("SRR3000002.fastq.gz", "drop", times=1)
    with pytest.raises(TransientFetchError):
        download_run(res, tmp_path, on_bytes=counted.append)
    assert 0 < sum(counted) < size
    local = download_run(res, tmp_path, on_bytes=counted.append)  # what the task retry does
    assert local.expected_fragments == 200 and sum(counted) == size
    assert [r.range for r in server.downloads("SRR3000002.fastq.gz")][-1] == f"bytes={size // 2}-"


def test_an_html_maintenance_page_is_named_and_retryable(world):
    """ENA answering 200 with an HTML page is not 'no row for the run': it is reported as an HTML answer."""
    from genoflows.rnaseq.sources import SourceTransient

    _, server, ep, _ = world
    original = server._routes["/filereport"]
    page = b"<!DOCTYPE html><html><head><title>ENA is down for maintenance</title></head><body>back soon</body></html>"
    server.add_route("/filereport", lambda q: (200, "text/html; charset=utf-8", page))
    try:
        resolved, failed, transient = resolve_all([Run("SRR3000002", "X", None)], ["ena", "aws"], ep)
    finally:
        server.add_route("/filereport", original)
    assert not resolved and not failed
    assert "HTML page" in transient[0][1] and "ENA is down for maintenance" in transient[0][1]
    with pytest.raises(SourceTransient):
        raise SourceTransient(transient[0][1])


def test_429_waits_for_retry_after_before_the_retry():
    """A 429 with Retry-After is a transient answer, and the retry does not come sooner than the server asked."""
    import time

    import httpx

    from genoflows.rnaseq.sources import SourceTransient, _get

    transport = httpx.MockTransport(lambda req: httpx.Response(429, headers={"Retry-After": "1"}))
    t0 = time.monotonic()
    with httpx.Client(transport=transport) as client, pytest.raises(SourceTransient, match="429"):
        _get(client, "http://ena.invalid/filereport")
    assert time.monotonic() - t0 >= 1.0


def test_a_file_corrupt_at_the_source_gives_up_at_its_second_identical_body(world, tmp_path):
    """ENA serves a file whose bytes do not match the filereport's md5 (corrupt at the source: the same wrong bytes
    every time). The first mismatch is retryable (bytes can be damaged in transit); the second, identical, one is
    permanent (BadSourceFile), so the run fails after two transfers instead of riding the whole retry policy (with
    the defaults, 9 transfers over ~6 minutes at the end of a stream). A body damaged once in transit still heals."""
    from genoflows.fetch import BadSourceFile, ChecksumMismatch
    from genoflows.rnaseq.stages import download_file
    from tasks.rnaseq import NOT_RETRYABLE

    root, server, ep, _ = world
    (res,), _, _ = resolve_all([Run("SRR3000002", "X", "single")], ["ena"], ep)
    name = res.files[0].name
    before = len(server.downloads(name))
    server.add_fault(name, "corrupt", times=3)
    with pytest.raises(ChecksumMismatch, match="md5") as first:
        download_file(res, 0, tmp_path / "a")
    assert not isinstance(first.value, NOT_RETRYABLE)
    with pytest.raises(BadSourceFile, match="twice in a row with the same bytes") as second:
        download_file(res, 0, tmp_path / "a")
    assert isinstance(second.value, NOT_RETRYABLE)  # the task's retry policy stops here
    assert len(server.downloads(name)) - before == 2
    # once in transit (the fault's third and last use), then a good body: the retry heals it
    with pytest.raises(ChecksumMismatch):
        download_file(res, 0, tmp_path / "b")
    assert download_file(res, 0, tmp_path / "b").stat().st_size == res.files[0].size
    assert [p.name for p in (tmp_path / "b" / "SRR3000002").iterdir() if not p.name.startswith(".")] == [name]
    # a maintenance page answered with 200, twice (identical bytes): the service's answer, not the file, so it stays
    # retryable however often it comes
    from genoflows.fetch import fetch

    server.add_fault(name, "html", times=2)
    for _ in range(2):
        with pytest.raises(ChecksumMismatch, match="HTML") as html:
            fetch(res.files[0].uri, tmp_path / "c" / name, md5=res.files[0].md5, repeat_is_bad_source=True)
        assert not isinstance(html.value, NOT_RETRYABLE)
    assert fetch(res.files[0].uri, tmp_path / "c" / name, md5=res.files[0].md5).downloaded
