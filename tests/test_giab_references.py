"""Reference cache policy without Prefect: published md5, sha256 pins, cache hits, local indexing, locks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import textwrap
import threading
from pathlib import Path

import pysam
import pytest

from genoflows.fetch import BadSourceFile, ChecksumMismatch, ContentMismatch, TransientFetchError, fetch
from genoflows.giab import catalogue, references
from genoflows.giab.checksums import Manifest
from genoflows.giab.query import InputError, ensure_indexed
from genoflows.testing import giab_world as demo_data
from genoflows.testing.http_server import MAINTENANCE_PAGE, FileServer
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


# --- a misbehaving mirror, through the retrying fetch task (the one retry policy, GENOFLOWS_RETRY_*: 4 retries) ---


def _retrying_fetcher(uri, dest, **kwargs):
    """What tasks.giab passes to references.bring: the fetch task under the project's retry policy."""
    from tasks.fetch import fetch_file, fetch_retry_options

    return fetch_file.with_options(**fetch_retry_options())(uri, dest, **kwargs)


def _only_verified(root: Path) -> None:
    """The cache holds verified files and their bookkeeping only: no partial, temp or 0-byte file, and every
    pinned file matches its pin."""
    pins = json.loads((root / "giab-manifest.json").read_text()) if (root / "giab-manifest.json").exists() else {}
    for p in root.rglob("*"):
        if p.is_dir() or p.name.endswith(".lock"):
            continue
        assert not p.name.endswith((".part", ".tmp", ".validator", ".etag-mismatch")) and ".tmp-" not in p.name, p
        assert p.stat().st_size > 0, p
        rel = str(p.relative_to(root))
        if rel in pins:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == pins[rel]["sha256"], p


def _served(world, spec_path: str) -> bytes:
    return (world.mirror / spec_path.removeprefix("giab/")).read_bytes()


def test_sidecar_503s_and_a_body_corrupt_after_resume_end_verified_and_heal(prefect_harness, world, tmp_path):
    """The issue's mirror: the md5 listing answers 503 three times (retried like the file itself, so the md5 is
    read and used), the VCF drops twice and its resumed body arrives corrupt; the run ends with the published
    bytes, and a cache damaged afterwards is downloaded again on the next run, not failed on."""
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        server.add_fault("/md5sum", "503", times=3)
        server.add_fault(spec.vcf.name, "drop", times=2)
        server.add_fault(spec.vcf.name, "corrupt-resume")
        local, got = references.bring_truth(spec, root, _retrying_fetcher)
        assert local.vcf.read_bytes() == _served(world, spec.vcf.relpath)
        assert got[0].checksum.startswith("md5 from") and got[0].checksum.endswith("md5sum, content checked (vcf)"
                                                                                   "; sha256 pinned now")
        assert [r.status for r in server.downloads(spec.vcf.name) if not r.path.endswith((".md5", ".tbi"))] == [
            200, 206, 206, 200]
        _only_verified(root)
        local.vcf.write_bytes(local.vcf.read_bytes()[:-100])  # damaged later (disk, a killed copy)
        _, again = references.bring_truth(spec, root, _retrying_fetcher)
        assert [g.downloaded for g in again] == [True, False, False]
        assert local.vcf.read_bytes() == _served(world, spec.vcf.relpath)
        _only_verified(root)


def test_no_sidecars_at_all_and_a_corrupt_resume_is_caught_by_content(prefect_harness, world, tmp_path):
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        server.hide("md5")
        server.hide("MD5")
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        server.add_fault(spec.vcf.name, "drop")
        server.add_fault(spec.vcf.name, "corrupt-resume")
        local, got = references.bring_truth(spec, root, _retrying_fetcher)
    assert got[0].checksum == "no published checksum, content checked (vcf); sha256 pinned now"
    assert local.vcf.read_bytes() == _served(world, spec.vcf.relpath)
    _only_verified(root)


def test_an_html_page_with_200_fails_naming_the_file_then_heals(prefect_harness, world, tmp_path):
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        server.add_fault(spec.vcf.name, "html", times=5)  # every attempt (1 + 4 retries) gets the page
        with pytest.raises(ChecksumMismatch, match=rf"{spec.vcf.name}: md5 .*; the server answered an HTML page"):
            references.bring_truth(spec, root, _retrying_fetcher)
        assert not (root / spec.vcf.relpath).exists() and Manifest(root).get(spec.vcf.relpath) is None
        _only_verified(root)
        local, got = references.bring_truth(spec, root, _retrying_fetcher)  # the mirror is back
        assert got[0].downloaded and local.vcf.read_bytes() == _served(world, spec.vcf.relpath)
        _only_verified(root)


def test_a_cache_poisoned_before_content_checks_heals(world, tmp_path):
    """What the old code left: the HTML page under the final name, pinned. The pin was taken from a bad body, so
    it is dropped with the file, and the truth is downloaded and pinned again."""
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        poisoned = root / spec.vcf.relpath
        poisoned.parent.mkdir(parents=True)
        poisoned.write_bytes(MAINTENANCE_PAGE)
        Manifest(root).pin(spec.vcf.relpath, url=spec.vcf.url, sha256=hashlib.sha256(MAINTENANCE_PAGE).hexdigest(),
                           size=len(MAINTENANCE_PAGE), md5_source=None)
        got = references.bring(spec.vcf, root, fetch)
    assert got.downloaded and poisoned.read_bytes() == _served(world, spec.vcf.relpath)
    assert Manifest(root).get(spec.vcf.relpath).sha256 == hashlib.sha256(poisoned.read_bytes()).hexdigest()


def test_a_sidecar_failing_for_good_fails_the_download_naming_it(prefect_harness, world, tmp_path):
    """Only a definite 404 means "no published checksum": a listing that keeps answering 503 is an error."""
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        server.add_fault("/md5sum", "503", times=5)
        with pytest.raises(TransientFetchError, match=r"/md5sum: server answered HTTP 503"):
            references.bring(spec.bed, root, _retrying_fetcher)
        assert not (root / spec.bed.relpath).exists()
        assert references.bring(spec.bed, root, _retrying_fetcher).checksum.startswith("md5 from")


def test_a_user_supplied_truth_gets_the_same_verification(world, tmp_path):
    """A custom truth VCF over HTTP with no sidecar: the HTML page is refused; a local truth VCF that is
    truncated is refused for good (fetching a local file again cannot help)."""
    spec_g = catalogue.small_truth(HG, "GRCh38", "BASE")
    vcf_rel = spec_g.vcf.relpath.removeprefix("giab/")
    with FileServer(world.mirror) as server:
        custom = catalogue.custom_truth(server.url(vcf_rel), None)
        server.add_fault(spec_g.vcf.name, "html")
        with pytest.raises(ContentMismatch, match="HTML page"):
            references.bring(custom.vcf, tmp_path / "refs", fetch)
    cut = tmp_path / "lab_truth.vcf.gz"
    cut.write_bytes(_served(world, spec_g.vcf.relpath)[:-28])
    with pytest.raises(BadSourceFile, match=r"lab_truth\.vcf\.gz.*truncated"):
        references.bring(catalogue.custom_truth(str(cut), None).vcf, tmp_path / "refs", fetch)
    _only_verified(tmp_path / "refs")


def test_a_prepared_fasta_that_does_not_fit_its_index_is_prepared_again(world, tmp_path):
    root = tmp_path / "refs"
    with FileServer(world.mirror) as server:
        remote = catalogue.reference_fasta("GRCh38", world.reference_urls(server.base_url))
        fasta = references.indexed_fasta(references.bring(remote, root, fetch).path)
    good = fasta.read_bytes()
    fasta.write_bytes(good[: len(good) // 2])  # a killed decompression of an older version left half a file
    assert references.fasta_ready(remote.relpath, root) is None
    assert references.indexed_fasta(root / remote.relpath) == fasta and fasta.read_bytes() == good
    assert not [p for p in fasta.parent.iterdir() if ".tmp" in p.name]


def test_without_sidecars_the_release_current_tree_is_the_published_checksum(world, tmp_path):
    """No `.md5` and no `md5sum` anywhere, but the release's current.tree lists every file with its md5. A body
    that differs from what it lists (a stale or tampered mirror; the bytes are still a valid BED, so no content
    check can tell) is refused and nothing is cached or pinned; the listed body is verified by the tree's md5."""
    root = tmp_path / "refs"
    demo_data.write_current_tree(world.mirror)
    with FileServer(world.mirror) as server:
        server.hide("md5")
        server.hide("MD5")
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        served = world.mirror / spec.bed.url.removeprefix(server.base_url + "/")
        good = served.read_bytes()
        served.write_bytes(b"".join(good.splitlines(keepends=True)[:-1]))  # one confident region fewer
        with pytest.raises(ChecksumMismatch, match=spec.bed.name):
            references.bring(spec.bed, root, fetch)
        assert not (root / spec.bed.relpath).exists() and Manifest(root).get(spec.bed.relpath) is None
        served.write_bytes(good)
        got = references.bring(spec.bed, root, fetch)
    assert got.checksum.startswith("md5 from") and "current.tree" in got.checksum
    assert (root / spec.bed.relpath).read_bytes() == good


def test_a_current_tree_that_answers_503_fails_the_download_naming_it(world, tmp_path):
    """Only a definite 404 means "no checksum published"; a failing tree is not skipped."""
    demo_data.write_current_tree(world.mirror)
    with FileServer(world.mirror) as server:
        server.hide("md5")
        server.hide("MD5")
        server.add_fault("current.tree", "503", times=1)
        spec = catalogue.small_truth(HG, "GRCh38", server.base_url)
        with pytest.raises(TransientFetchError, match=r"current\.tree: server answered HTTP 503"):
            references.bring(spec.bed, tmp_path / "refs", fetch)


def test_a_tree_entry_must_match_the_whole_path_below_the_tree():
    from genoflows.giab.checksums import md5_from_tree

    tree = ["ftp/release\tdirectory\t4096\t2024-01-01\t",
            "ftp/release/A/GRCh37/x.bed\tfile\t10\t2024-01-01\t" + "a" * 32,
            "ftp/release/A/GRCh38/x.bed\tfile\t10\t2024-01-01\t" + "B" * 32]
    assert md5_from_tree(tree, "A/GRCh38/x.bed") == "b" * 32
    assert md5_from_tree(tree, "release/A/GRCh37/x.bed") == "a" * 32
    assert md5_from_tree(tree, "x.bed") is None and md5_from_tree(tree, "GRCh38/y.bed") is None
