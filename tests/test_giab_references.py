"""Reference cache policy without Prefect: published md5, sha256 pins, cache hits, local indexing, locks."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import textwrap
import threading
from pathlib import Path

import pysam
import pytest

from genoflows.fetch import ChecksumMismatch, fetch
from genoflows.giab import catalogue, demo_data, references
from genoflows.giab.checksums import Manifest
from genoflows.giab.query import InputError, ensure_indexed
from genoflows.testing.http_server import FileServer
from genoflows.toolrun import ToolError

HG = "HG004"


@pytest.fixture
def world(tmp_path) -> demo_data.DemoWorld:
    return demo_data.build_world(tmp_path / "world", builds=("GRCh38",), samples={HG: "NA24143_Lib3_Rep1"})


def test_truth_is_verified_by_published_md5_pinned_and_then_cached(world, tmp_path):
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        local, got = references.bring_truth(spec, root, fetch)
        assert [g.downloaded for g in got] == [True, True, True]
        assert all(g.checksum.startswith("md5 from") and g.checksum.endswith("sha256 pinned now") for g in got)
        assert local.vcf.read_bytes() == (world.mirror / spec.vcf.relpath.removeprefix("giab/")).read_bytes()
        pin = Manifest(root).get(spec.bed.relpath)
        assert pin.sha256 == hashlib.sha256(local.bed.read_bytes()).hexdigest() and pin.md5_source.endswith("md5sum")
        server.requests.clear()
        _, again = references.bring_truth(spec, root, fetch)
        assert [g.downloaded for g in again] == [False, False, False] and server.requests == []


def test_without_published_md5_the_pinned_sha256_guards_later_downloads(world, tmp_path):
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        remote = catalogue.reference_fasta("GRCh38", world.reference_urls(server.base_url))
        first = references.bring(remote, root, fetch)
        assert first.downloaded and first.checksum == "no published checksum, content checked (fasta); sha256 pinned now"
        fasta = references.indexed_fasta(first.path)
        assert fasta.name == "GCA_000001405.15_GRCh38_no_alt_analysis_set.fasta"
        assert Path(f"{fasta}.fai").read_text().startswith("chr1\t120000\t")
        assert references.fasta_ready(remote.relpath, root) == fasta
        # The mirror's file changes; the cache is lost: the re-download no longer matches the pin.
        first.path.unlink()
        served = world.mirror / world.reference_relpaths["GRCh38"]
        served.write_bytes(served.read_bytes() + b"\n")
        with pytest.raises(ChecksumMismatch, match="sha256"):
            references.bring(remote, root, fetch)
        assert not first.path.exists() and not Path(f"{first.path}.part").exists()


def test_a_cached_file_that_changed_is_fetched_again(world, tmp_path):
    """A cache entry that no longer matches its pin (edited, truncated) is a miss: downloaded again and checked,
    never trusted and never a dead end."""
    root = tmp_path / "refs"
    lines: list[str] = []
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        got = references.bring(spec.bed, root, fetch)
        good = got.path.read_bytes()
        got.path.write_text("chr1\t0\t10\n")
        healed = references.bring(spec.bed, root, fetch, log=lines.append)
        assert healed.downloaded and healed.path.read_bytes() == good
        assert any("fails its check" in ln for ln in lines)
        same_size = bytearray(good)  # same size, edited in place: the mtime tells, the pinned sha256 decides
        same_size[-2:-1] = b"9" if same_size[-2:-1] != b"9" else b"8"
        got.path.write_bytes(bytes(same_size))
        assert references.bring(spec.bed, root, fetch).downloaded and got.path.read_bytes() == good


def test_a_mirror_without_the_index_gets_one_built_locally(world, tmp_path):
    spec = catalogue.small_truth(HG, "GRCh38", "BASE")
    (world.mirror / spec.tbi.relpath.removeprefix("giab/")).unlink()
    lines: list[str] = []
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        local, got = references.bring_truth(spec, tmp_path / "refs", fetch, log=lines.append)
    assert len(got) == 2 and Path(f"{local.vcf}.tbi").exists()
    assert any("indexing it locally" in ln for ln in lines)


def test_concurrent_runs_download_each_file_once(world, tmp_path):
    root = tmp_path / "refs"
    with FileServer(world.mirror, bandwidth_bytes_per_s=200_000) as server:
        remote = catalogue.reference_fasta("GRCh38", world.reference_urls(server.base_url))
        results: list[references.Brought] = []
        threads = [threading.Thread(target=lambda: results.append(references.bring(remote, root, fetch))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        gets = server.downloads(demo_data.REFERENCE_NAMES["GRCh38"])
    assert sorted(r.downloaded for r in results) == [False, True]
    assert len([r for r in gets if not r.path.endswith(".md5")]) == 1


def test_a_lone_hash_in_a_shared_md5_listing_is_not_taken_for_every_file(world, tmp_path):
    """A directory `md5sum` holding only the VCF's bare hash says nothing about the BED: the BED is fetched and
    pinned by sha256 instead of failing its download against the VCF's md5."""
    spec = catalogue.small_truth(HG, "GRCh38", "BASE")
    folder = world.mirror / Path(spec.vcf.relpath).relative_to("giab").parent
    vcf_md5 = hashlib.md5((folder / spec.vcf.name).read_bytes()).hexdigest()
    (folder / "md5sum").write_text(f"{vcf_md5}\n")
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        got = references.bring(spec.bed, tmp_path / "refs", fetch)
    assert got.downloaded and got.checksum == "no published checksum, content checked (bed); sha256 pinned now"
    assert got.path.read_bytes() == (folder / spec.bed.name).read_bytes()


@pytest.fixture
def killed_indexer(tmp_path, monkeypatch):
    """A `bcftools` first on PATH whose `index` writes half an index where it was told to and is then SIGKILLed
    (what a killed worker leaves behind); every other subcommand is the real bcftools."""
    real = shutil.which("bcftools")
    fake = tmp_path / "fake-bin" / "bcftools"
    fake.parent.mkdir()
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, signal, subprocess, sys
        args = sys.argv[1:]
        if args[:1] != ["index"]:
            os.execv({real!r}, [{real!r}, *args])
        subprocess.run([{real!r}, *args], check=True)
        out = args[args.index("-o") + 1] if "-o" in args else args[-1] + (".csi" if "-c" in args else ".tbi")
        data = open(out, "rb").read()
        open(out, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
        """))
    fake.chmod(0o755)
    original = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{original}")
    return lambda: monkeypatch.setenv("PATH", original)  # call to get the real bcftools back


def _index_is_whole(vcf: Path) -> bool:
    """Every record is found through the index exactly as by reading the file."""
    with pysam.VariantFile(str(vcf)) as vf:
        streamed = [(r.chrom, r.pos) for r in vf]
        fetched = [(r.chrom, r.pos) for c in vf.header.contigs for r in vf.fetch(c)]
    return bool(streamed) and fetched == streamed


def test_a_killed_local_truth_indexing_leaves_no_index_that_looks_complete(world, tmp_path, killed_indexer):
    spec = catalogue.small_truth(HG, "GRCh38", "BASE")
    (world.mirror / spec.tbi.relpath.removeprefix("giab/")).unlink()
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        with pytest.raises(ToolError, match="-9"):
            references.bring_truth(spec, root, fetch)
        vcf = root / spec.vcf.relpath
        assert not Path(f"{vcf}.tbi").exists()
        killed_indexer()
        local, _ = references.bring_truth(spec, root, fetch)
    assert local.vcf == vcf and _index_is_whole(vcf)


def test_a_killed_query_indexing_leaves_no_index_that_looks_complete(world, tmp_path, killed_indexer):
    copy = tmp_path / "lab.g.vcf.gz"
    shutil.copy(world.lab / "NA24143_Lib3_Rep1.g.vcf.gz", copy)
    with pytest.raises(InputError, match="cannot index"):
        ensure_indexed(copy)
    assert not Path(f"{copy}.tbi").exists()
    killed_indexer()
    assert ensure_indexed(copy) == Path(f"{copy}.tbi") and _index_is_whole(copy)
