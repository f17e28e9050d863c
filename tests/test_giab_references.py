"""Reference cache policy without Prefect: published md5, sha256 pins, cache hits, local indexing, locks."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from genoflows.fetch import ChecksumMismatch, fetch
from genoflows.giab import catalogue, demo_data, references
from genoflows.giab.checksums import Manifest
from genoflows.testing.http_server import FileServer

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
        assert first.downloaded and first.checksum == "no published checksum; sha256 pinned now"
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


def test_a_cached_file_that_changed_size_is_reported(world, tmp_path):
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        got = references.bring(spec.bed, root, fetch)
        got.path.write_text("chr1\t0\t10\n")
        with pytest.raises(references.CacheMismatch, match="delete it and run again"):
            references.bring(spec.bed, root, fetch)


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
    assert got.downloaded and got.checksum == "no published checksum; sha256 pinned now"
    assert got.path.read_bytes() == (folder / spec.bed.name).read_bytes()
