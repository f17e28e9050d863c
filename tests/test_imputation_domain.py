"""Imputation domain units without Prefect: input validation (every bad input), the submission key, the
polling schedule against a fake clock, safe unzip, and the Cloudgene client's error mapping on a real server."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import zipfile
from pathlib import Path

import pysam
import pytest

from genoflows.imputation.cloudgene import CloudgeneClient, display_size
from genoflows.imputation.errors import (
    AuthError,
    BadZipPassword,
    InputValidationError,
    TransientServerError,
    UnsafeArchive,
)
from genoflows.imputation.polling import Clock, PollSchedule, wait_until_terminal
from genoflows.imputation.record import submission_key
from genoflows.imputation.simulate import make_cohort
from genoflows.imputation.states import Phase, cloudgene_state
from genoflows.imputation.unzip import safe_extract
from genoflows.imputation.validate import split_by_chromosome, validate_vcf
from genoflows.testing.cloudgene_server import CloudgeneServer
from genoflows.testing.zipcrypto import write_aes, write_zipcrypto
from tests.imputation_fixtures import made_up_token


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_cohort(
        tmp_path_factory.mktemp("small"), chroms=("20", "21"), panel_size=30, study_size=25, length=100_000
    )


def _bcftools(*args: str) -> None:
    subprocess.run(["bcftools", *args], check=True, capture_output=True)


def _rewrite(src: Path, dest: Path, *, samples=None, contig_map=None, shuffle=False, index=True) -> Path:
    """A variant of `src`: renamed samples, renamed contigs, swapped records, with or without an index."""
    with pysam.VariantFile(str(src)) as vf:
        header = pysam.VariantHeader()
        for rec in vf.header.records:
            if rec.type == "CONTIG":
                name = (contig_map or {}).get(rec["ID"], rec["ID"])
                header.add_line(f"##contig=<ID={name},length={rec['length']}>")
            elif rec.type != "GENERIC":
                header.add_record(rec)
        names = samples or list(vf.header.samples)
        for s in names:
            header.add_sample(s)
        rows = list(vf)
    if shuffle:
        rows[0], rows[5] = rows[5], rows[0]
    with pysam.VariantFile(str(dest), "wz", header=header) as out:
        for r in rows:
            new = out.new_record(
                contig=(contig_map or {}).get(r.chrom, r.chrom), start=r.start, alleles=r.alleles
            )
            for s_old, s_new in zip(r.samples, names, strict=True):
                new.samples[s_new]["GT"] = r.samples[s_old]["GT"]
                new.samples[s_new].phased = r.samples[s_old].phased
            out.write(new)
    if index:
        pysam.tabix_index(str(dest), preset="vcf", force=True)
    return dest


def test_a_good_input_passes(small):
    s = validate_vcf(small.study["20"], build="hg19", for_server=True, reference_fasta=small.fasta)
    assert (s.chrom, s.samples, s.phased) == ("20", 25, True) and s.records > 5


@pytest.mark.parametrize(
    "case, expected",
    [
        ("plain_gzip", "not bgzip-compressed"),
        ("unindexed", "no index"),
        ("unsorted", "not sorted"),
        ("hg38_without_chr", "no 'chr' prefix, but build hg38"),
        ("hg19_with_chr", "has a 'chr' prefix, but build hg19"),
        ("too_few_samples", "at least 20"),
        ("duplicate_ids", "duplicate sample ids"),
        ("wrong_ref", "REF alleles differ from the reference"),
    ],
)
def test_bad_inputs_name_the_file_and_the_fix(small, tmp_path, case, expected):
    src, build, fasta = small.study["20"], "hg19", None
    bad = tmp_path / f"{case}.vcf.gz"
    if case == "plain_gzip":
        bad.write_bytes(gzip.compress(gzip.decompress(src.read_bytes())))
    elif case == "unindexed":
        _rewrite(src, bad, index=False)
    elif case == "unsorted":
        _rewrite(src, bad, shuffle=True, index=False)
    elif case == "hg38_without_chr":
        _rewrite(src, bad)
        build = "hg38"
    elif case == "hg19_with_chr":
        _rewrite(src, bad, contig_map={"20": "chr20"})
    elif case == "too_few_samples":
        cut = tmp_path / "cut.vcf.gz"
        _bcftools("view", "-s", "S0000,S0001,S0002", "-Oz", "-o", str(cut), str(src))
        shutil.move(cut, bad)
        pysam.tabix_index(str(bad), preset="vcf", force=True)
    elif case == "duplicate_ids":
        text = gzip.decompress(src.read_bytes()).decode().replace("\tS0001\t", "\tS0000\t", 1)
        plain = tmp_path / "dup.vcf"
        plain.write_text(text)
        pysam.tabix_compress(str(plain), str(bad), force=True)
        pysam.tabix_index(str(bad), preset="vcf", force=True)
    elif case == "wrong_ref":
        fasta = tmp_path / "other.fa"
        fasta.write_text(">20\n" + "N" * 100_000 + "\n")
        pysam.faidx(str(fasta))
        _rewrite(src, bad)
    with pytest.raises(InputValidationError) as err:
        validate_vcf(bad, build=build, for_server=True, reference_fasta=fasta)
    assert bad.name in str(err.value) and expected in str(err.value)


def test_local_engine_accepts_fewer_samples(small, tmp_path):
    cut = tmp_path / "few.vcf.gz"
    _bcftools("view", "-s", "S0000,S0001", "-Oz", "-o", str(cut), str(small.study["20"]))
    pysam.tabix_index(str(cut), preset="vcf", force=True)
    assert validate_vcf(cut, build="hg19", for_server=False).samples == 2


def test_multi_chromosome_file_is_split_and_each_part_validates(small, tmp_path):
    both = tmp_path / "both.vcf.gz"
    _bcftools("concat", "-Oz", "-o", str(both), str(small.study["20"]), str(small.study["21"]))
    pysam.tabix_index(str(both), preset="vcf", force=True)
    with pytest.raises(InputValidationError, match="more than one chromosome"):
        validate_vcf(both, build="hg19", for_server=True)
    parts = split_by_chromosome(both, tmp_path / "split")
    assert [validate_vcf(p, build="hg19", for_server=True).chrom for p in parts] == ["20", "21"]


def test_submission_key_changes_with_inputs_params_and_server():
    base = submission_key({"a.vcf.gz": "11"}, {"refpanel": "x"}, "s1")
    assert base == submission_key({"a.vcf.gz": "11"}, {"refpanel": "x"}, "s1")
    assert (
        len(
            {
                base,
                submission_key({"a.vcf.gz": "12"}, {"refpanel": "x"}, "s1"),
                submission_key({"a.vcf.gz": "11"}, {"refpanel": "y"}, "s1"),
                submission_key({"a.vcf.gz": "11"}, {"refpanel": "x"}, "s2"),
            }
        )
        == 4
    )


def test_state_table_including_notified_and_retired():
    assert cloudgene_state(8)[1] is Phase.SUCCESS and cloudgene_state(9)[1] is Phase.FAILED
    assert cloudgene_state(7)[1] is Phase.RETIRED and cloudgene_state(-1)[1] is Phase.FAILED
    assert cloudgene_state(1)[1] is Phase.QUEUED and cloudgene_state(3)[1] is Phase.RUNNING


def test_poll_schedule_backs_off_longer_in_queue_and_notices_completion_promptly():
    """A job queued 3 h then running 5 h, against a fake clock: few requests, completion seen within the cap."""
    now = [0.0]
    clock = Clock(now=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    calls = []

    def status():
        calls.append(now[0])
        t = now[0]
        return (
            (1, Phase.QUEUED) if t < 3 * 3600 else (2, Phase.RUNNING) if t < 8 * 3600 else (4, Phase.SUCCESS)
        )

    schedule = PollSchedule(initial=10, factor=1.5, cap=300, queued_cap=900)
    wait_until_terminal(status, schedule=schedule, clock=clock)
    assert now[0] - 8 * 3600 <= 300  # noticed within one capped interval
    assert len(calls) < (8 * 3600 / 10) / 10  # over ten times fewer than a fixed 10-s poll
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert max(gaps[: len(gaps) // 4]) > 300  # queued: waits beyond the running cap


def _zip_with(tmp_path, name, entries, password="Pw!23abc", aes=False) -> Path:
    path = tmp_path / name
    (write_aes if aes else write_zipcrypto)(path, entries, password)
    return path


def test_unzip_zipcrypto_and_aes(tmp_path):
    for aes in (False, True):
        z = _zip_with(tmp_path, f"chr_1{aes}.zip", {"chr1.dose.vcf.gz": b"x" * 5000}, aes=aes)
        (f,) = safe_extract(z, tmp_path / f"out{aes}", "Pw!23abc", aes=aes)
        assert f.read_bytes() == b"x" * 5000


def test_unzip_wrong_password(tmp_path):
    z = _zip_with(tmp_path, "chr_1.zip", {"chr1.dose.vcf.gz": b"y" * 1000})
    with pytest.raises(BadZipPassword, match="password"):
        safe_extract(z, tmp_path / "out", "not-it")
    assert not list((tmp_path / "out").rglob("*.part"))


@pytest.mark.parametrize("evil", ["../escaped.txt", "/etc/evil", "a/../../b.txt"])
def test_unzip_refuses_path_escapes_before_writing_anything(tmp_path, evil):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("chr1.info.gz", b"ok")
        zf.writestr(evil, b"gotcha")
    with pytest.raises(UnsafeArchive, match="outside"):
        safe_extract(z, tmp_path / "out", None)
    assert not (tmp_path / "out" / "chr1.info.gz").exists() and not (tmp_path / "escaped.txt").exists()


def test_display_size_matches_commons_io():
    assert [display_size(n) for n in (0, 1023, 1024, 17 * 1024 + 999, 5 << 20, 3 << 30)] == [
        "0 bytes",
        "1023 bytes",
        "1 KB",
        "17 KB",
        "5 MB",
        "3 GB",
    ]


def test_client_error_mapping_on_the_test_server(small):
    token = made_up_token()
    with CloudgeneServer(tokens={"lab": token}, revoked={"old-" + token}) as server:
        for bad in ("nope", "old-" + token):
            with (
                CloudgeneClient(server.base_url, bad, "imputationserver2") as c,
                pytest.raises(AuthError) as err,
            ):
                c.list_jobs()
            assert "Not retried" in str(err.value) and bad not in str(err.value)
        with CloudgeneClient(server.base_url, token, "imputationserver2") as c:
            server.maintenance = True
            with pytest.raises(TransientServerError, match="maintenance"):
                c.submit([small.study["20"]], {"refpanel": "hapmap-2"}, "a")
            server.maintenance = False
            server.max_active_jobs = 0
            with pytest.raises(TransientServerError, match="simultaneously"):
                c.submit([small.study["20"]], {"refpanel": "hapmap-2"}, "a")
            assert server.submissions == 0


def test_resubmit_submits_once_per_flow_run(small, tmp_path):
    """resubmit=true makes one new job per flow run: a retry of that run (same run id) resumes it."""
    from genoflows.imputation.record import JobRecord, job_name_for, load_record
    from genoflows.imputation.remote import ensure_submitted

    token = made_up_token()
    with (
        CloudgeneServer(tokens={"lab": token}, max_active_jobs=9) as server,
        CloudgeneClient(server.base_url, token, "imputationserver2") as c,
    ):
        record = JobRecord(
            key="k" * 64, job_name=job_name_for("k" * 64), service="s", server="x", params={}, inputs={}
        )
        args = (c, record, tmp_path, [small.study["20"]], {"refpanel": "hapmap-2"})
        ensure_submitted(*args, run_id="run-1")
        for _ in range(2):  # the resubmitting run, then its retry
            ensure_submitted(*args[:1], load_record(tmp_path), *args[2:], resubmit=True, run_id="run-2")
        assert server.submissions == 2
        ensure_submitted(*args[:1], load_record(tmp_path), *args[2:], resubmit=True, run_id="run-3")
        assert server.submissions == 3 and load_record(tmp_path).job_name.endswith("-r2")


def test_panel_digest_is_remembered_until_the_panel_changes(tmp_path, monkeypatch):
    """A multi-gigabyte panel is hashed once, not on every run; a changed panel is hashed again."""
    import hashlib
    import os

    from genoflows.imputation import local

    panel = tmp_path / "panel.vcf.gz"
    panel.write_bytes(b"panel v1" * 1000)
    reads = []
    real = local.sha256_of
    monkeypatch.setattr(local, "sha256_of", lambda p: reads.append(p) or real(p))
    first = local.panel_digest(panel, tmp_path / "cache")
    assert first == hashlib.sha256(panel.read_bytes()).hexdigest()
    assert local.panel_digest(panel, tmp_path / "cache") == first and len(reads) == 1
    panel.write_bytes(b"panel v2" * 1000)  # same size, new content and mtime
    os.utime(panel, ns=(panel.stat().st_atime_ns, panel.stat().st_mtime_ns + 10**9))
    assert (
        local.panel_digest(panel, tmp_path / "cache")
        == hashlib.sha256(panel.read_bytes()).hexdigest()
        != first
    )
    assert len(reads) == 2


def test_wes_inputs_local_files_are_attached_urls_pass_through(tmp_path):
    """A remote WES service cannot read this machine's paths: local files become attachments named relatively
    (with their index); s3:// and https:// inputs are handed over as URLs, nothing uploaded."""
    from tasks.imputation import _wes_input

    vcf = tmp_path / "lab" / "study.vcf.gz"
    vcf.parent.mkdir()
    vcf.write_bytes(b"x")
    Path(f"{vcf}.tbi").write_bytes(b"i")
    attachments: dict = {}
    assert _wes_input(str(vcf), attachments, secondary=(".tbi",)) == {
        "class": "File",
        "location": "inputs/study.vcf.gz",
    }
    assert attachments == {"inputs/study.vcf.gz": vcf, "inputs/study.vcf.gz.tbi": Path(f"{vcf}.tbi")}
    for url in ("s3://lab/chip/study.vcf.gz", "https://data.example.org/study.vcf.gz"):
        more: dict = {}
        assert _wes_input(url, more, secondary=(".tbi",)) == {"class": "File", "location": url} and not more
