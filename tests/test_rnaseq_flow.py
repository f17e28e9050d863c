"""End to end: the Prefect flows with real kallisto against a local ENA-like server with faults.

Covers paired/single runs, the ENA third file, an excluded run, a 404, a corrupt download (md5 after
retries), a truncated FASTQ, a transient 503, a layout mismatch, a run bigger than the disk budget, an ENA
gap filled by the AWS .sra + fasterq-dump, the disk budget sampled while running, merged tables, resume,
kill-and-rerun in a subprocess, and the multi-species flow.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from genoflows.rnaseq.stream import dir_bytes
from genoflows.settings import get_settings
from genoflows.testing import rnaseq_world as sim
from genoflows.testing.artifacts import read_artifacts
from genoflows.testing.http_server import FileServer
from genoflows.testing.rnaseq_world import ena_server
from genoflows.tools.kallisto import read_abundance

pytestmark = pytest.mark.slow
SPECIES = "Apis mellifera"
BUDGET = 2_000_000
REPO = Path(__file__).resolve().parents[1]
#: The one retry policy, made quick: 3 retries, 50 ms doubling to at most 200 ms.
RETRY_ENV = {"GENOFLOWS_RETRY_ATTEMPTS": "3", "GENOFLOWS_RETRY_BASE_DELAY_SECONDS": "0.05",
             "GENOFLOWS_RETRY_MAX_DELAY_SECONDS": "0.2"}  # fmt: skip


def run_flow(flow_fn, **params):
    """(final state, returned results): a flow run with failed runs ends Failed and still returns its results."""
    from flows.rnaseq_quant import RunsFailed

    state = flow_fn(**params, return_state=True)
    result = state.result(raise_on_failure=False)
    return state, result.results if isinstance(result, RunsFailed) else result


def build_world(root: Path, server: FileServer, tx: dict[str, str], runs: dict[str, dict]) -> sim.EnaCatalog:
    """Simulate `runs` (run -> options), publish them on `server` as ENA would, write metadata.tsv."""
    host = server.base_url.split("://")[1]
    cat = sim.EnaCatalog(server.root)
    rows = []
    for i, (run, o) in enumerate(runs.items()):
        layout = o.get("files_layout", o.get("layout", "paired"))
        s = sim.simulate_run(tx, root / "gen", run, layout=layout, n_fragments=o.get("n", 1500), seed=i)
        if o.get("truncate"):  # the archive itself holds a cut file: md5 matches, reads are missing
            data = s.files[0].read_bytes()
            s.files[0].write_bytes(data[: len(data) // 2])
        if o.get("sra"):
            sim.make_sra(s, server.root / "sra" / run / run)
            cat.add_empty(run)
        else:
            extra = sim.simulate_run(tx, root / "gen3", run, layout="single", n_fragments=50, seed=99)
            cat.add(s, host=host, extra_unpaired=extra.files[0] if o.get("third") else None, unpaired_first=True)
        rows.append({"scientific_name": o.get("species", SPECIES), "run": run, "lib_layout": o.get("layout", "paired"),
                     "exclusion": o.get("exclusion", "no"), "is_sampled": "yes", "nominal_length": "250",
                     "total_spots": s.n_fragments})  # fmt: skip
    server.add_route("/filereport", cat.filereport_handler())
    sim.write_metadata(root / "metadata.tsv", rows)
    return cat


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rnaseq_e2e")
    (root / "srv").mkdir()
    tx = sim.make_transcriptome(root / "transcripts.fa", n_genes=25, seed=5)
    runs = {
        "SRR5000001": {"third": True},
        "SRR5000002": {"layout": "single"},
        "SRR5000003": {"exclusion": "low_quality"},
        "SRR5000004": {},  # 404
        "SRR5000005": {},  # corrupt every time
        "SRR5000006": {"truncate": True},
        "SRR5000007": {"n": 3000},  # one 503, then fine
        "SRR5000008": {"layout": "paired", "files_layout": "single"},
        "SRR5000009": {"n": 40000},  # larger than the whole budget
        "SRR5000010": {"sra": True, "n": 600},  # not on ENA: AWS .sra + fasterq-dump
    }
    with ena_server(root / "srv", max_connections=3) as server, pytest.MonkeyPatch.context() as env:
        build_world(root, server, tx, runs)
        # only these are put back afterwards: what other fixtures set meanwhile (moto's test credentials) stays
        for k, v in {"GENOFLOWS_ENA_BASE_URL": server.base_url, "GENOFLOWS_SRA_ODP_BASE_URL": f"{server.base_url}/sra",
                     "GENOFLOWS_CACHE_DIR": str(root / "cache"), **RETRY_ENV}.items():  # fmt: skip
            env.setenv(k, v)
        get_settings.cache_clear()
        yield root, server, tx
    get_settings.cache_clear()


FAILED_EVENT = "genoflows.rnaseq.run.failed"


def failed_runs_automation():
    """The README's automation: any `genoflows.rnaseq.run.failed` event -> an action (a notification in real
    life; DoNothing here, as no notification block can reach anyone from a test)."""
    from prefect.automations import Automation, DoNothing, EventTrigger

    return Automation(name=f"rnaseq-failed-runs-{time.monotonic_ns()}", trigger=EventTrigger(
        expect={FAILED_EVENT}, posture="Reactive", threshold=1, within=0), actions=[DoNothing()]).create()  # fmt: skip


def failed_run_events(flow_run_id, expect: int, timeout: float = 30.0) -> list:
    """The failed-run events the API holds for a flow run (the server stores events a moment after they are sent)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    flt = EventFilter(event=EventNameFilter(name=[FAILED_EVENT]),
                      related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]))  # fmt: skip
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=flt, limit=50).events
            if len(events) >= expect or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


def params(root: Path, out: str, **kw) -> dict:
    return {"metadata": str(root / "metadata.tsv"), "species": SPECIES, "transcriptome": str(root / "transcripts.fa"),
            "out_dir": str(root / out), "disk_budget": BUDGET, "max_downloads": 3,
            "sources": ["ena", "aws"], **kw}  # fmt: skip


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def finished(quant: Path) -> list[Path]:
    """Completed run dirs (temp dirs of runs in progress start with a dot)."""
    return [p.parent for p in quant.glob("*/run_info.json") if not p.parent.name.startswith(".")]


class Sampler(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.max, self.n, self.stop = path, 0, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.max = max(self.max, dir_bytes(self.path))
            self.n += 1
            time.sleep(0.01)


def test_flow_end_to_end_faults_budget_merge_and_resume(prefect_harness, world):
    from flows.rnaseq_quant import rnaseq_quant

    root, server, _ = world
    server.add_fault("SRR5000004_1", "404", times=2)
    server.add_fault("SRR5000005_1", "corrupt", times=4)  # corrupt at the source: 2 identical bodies per flow run, two flow runs
    server.add_fault("SRR5000007_2", "503", times=1)
    sp = root / "out" / "Apis_mellifera"
    (sp / "fastq").mkdir(parents=True)
    sampler = Sampler(sp / "fastq")
    sampler.start()
    automation = failed_runs_automation()  # what the README shows: a real automation, accepted by the API
    state, summary = run_flow(rnaseq_quant, **params(root, "out"))
    sampler.stop.set()
    sampler.join()
    assert state.is_failed() and state.message.endswith(f"5 of 9 runs quantified, 4 failed (see {sp}/failed.tsv)")
    events = failed_run_events(state.state_details.flow_run_id, expect=4)
    assert {e.payload["run"] for e in events} == {"SRR5000004", "SRR5000005", "SRR5000006", "SRR5000009"}
    assert all(e.resource["genoflows.species"] == "Apis_mellifera" and e.payload["reason"] for e in events)
    assert automation.trigger.expect == {FAILED_EVENT}
    assert server.max_active <= 3 and not server.refused  # never above max_downloads (the server's cap)

    done = {"SRR5000001", "SRR5000002", "SRR5000007", "SRR5000008", "SRR5000010"}
    assert {p.name for p in (sp / "quant").iterdir()} == done
    for run in done:
        assert {p.name for p in (sp / "quant" / run).iterdir()} >= {"abundance.tsv", "run_info.json", "tools.log"}
    assert (sp / "quant" / "SRR5000010" / "fasterq-dump.log").is_file()  # the .sra run's conversion log, kept
    failed = {r["run"]: r["reason"] for r in read_tsv(sp / "failed.tsv")}
    assert set(failed) == {"SRR5000004", "SRR5000005", "SRR5000006", "SRR5000009"}
    assert "HTTP 404" in failed["SRR5000004"]
    assert "md5" in failed["SRR5000005"]
    assert "truncated" in failed["SRR5000006"]
    assert "raise disk_budget" in failed["SRR5000009"]
    assert not server.downloads("SRR5000003") and not server.downloads("SRR5000009")  # excluded / too big
    assert len([r for r in server.downloads("SRR5000005_1")]) == 2  # the same wrong bytes twice: a bad source, given up
    assert list((sp / "fastq").iterdir()) == []
    assert sampler.n > 10 and 0 < sampler.max <= BUDGET
    assert summary["disk_high_water_bytes"] <= BUDGET and summary["quantified"] == 5
    table = read_artifacts("rnaseq-runs-apis-mellifera")[0].data
    rows = {r["run"]: r for r in (json.loads(table) if isinstance(table, str) else table)}
    assert set(rows) >= done and float(rows["SRR5000001"]["pct_pseudoaligned"]) > 50
    progress = read_artifacts("rnaseq-progress-apis-mellifera")[0]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "disk" in read_artifacts("rnaseq-summary-apis-mellifera")[0].data

    # merged tables hold exactly the per-run numbers, joined on target_id
    runs_in_order = ["SRR5000001", "SRR5000002", "SRR5000007", "SRR5000008", "SRR5000010"]
    for col, name in ((0, "est_counts"), (1, "tpm")):
        merged = read_tsv(sp / "merged" / f"Apis_mellifera_{name}.tsv")
        assert list(merged[0])[1:] == runs_in_order
        for run in runs_in_order:
            per_run = read_abundance(sp / "quant" / run / "abundance.tsv")
            assert {r["target_id"]: float(r[run]) for r in merged} == {t: v[col] for t, v in per_run.items()}
    meta = {r["run"]: r for r in read_tsv(sp / "metadata.tsv")}
    info = json.loads((sp / "quant" / "SRR5000001" / "run_info.json").read_text())
    assert float(meta["SRR5000001"]["mapping_rate"]) == info["p_pseudoaligned"] and meta["SRR5000004"]["mapping_rate"] == ""
    assert info["n_processed"] == 1500  # the third (unpaired) ENA file was not used

    # rerun: completed runs are not touched, not even resolved; only failed ones are tried again
    before = len(server.requests)
    stamp = (sp / "quant" / "SRR5000001" / "abundance.tsv").stat()
    state2, summary2 = run_flow(rnaseq_quant, **params(root, "out"))
    assert state2.is_failed() and state2.message.endswith(f"5 of 9 runs quantified, 4 failed (see {sp}/failed.tsv)")
    new = server.requests[before:]
    assert summary2["newly_quantified"] == 0 and summary2["failed"] == 4
    assert not [r for r in new if any(run in r.path for run in done)]
    assert (sp / "quant" / "SRR5000001" / "abundance.tsv").stat().st_mtime_ns == stamp.st_mtime_ns

    # faults used up: the 404 and corrupt runs now succeed; the truncated and oversized stay failed
    _, summary3 = run_flow(rnaseq_quant, **params(root, "out"))
    assert summary3["newly_quantified"] == 2 and summary3["quantified"] == 7
    assert set(summary3["failures"]) == {"SRR5000006", "SRR5000009"}
    assert {r["run"] for r in read_tsv(sp / "failed.tsv")} == {"SRR5000006", "SRR5000009"}
    assert len(read_tsv(sp / "merged" / "Apis_mellifera_tpm.tsv")[0]) == 8  # target_id + 7 runs


def test_kill_and_rerun_loses_nothing(prefect_harness, world, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.rnaseq_quant import rnaseq_quant

    root, _, tx = world
    (tmp_path / "srv").mkdir()
    with FileServer(tmp_path / "srv", bandwidth_bytes_per_s=150_000) as slow:
        build_world(tmp_path, slow, tx, {f"SRR600000{i}": {"n": 2500} for i in range(1, 5)})
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "GENOFLOWS_ENA_BASE_URL": slow.base_url,
               "PYTHONPATH": str(REPO)}  # fmt: skip
        p = params(tmp_path, "out", max_downloads=1, disk_budget=10**8, transcriptome=str(root / "transcripts.fa"))
        code = f"from flows.rnaseq_quant import rnaseq_quant; rnaseq_quant(**{p!r})"
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "flow.log", "wb"))  # noqa: SIM115  # fmt: skip
        quant = tmp_path / "out" / "Apis_mellifera" / "quant"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not finished(quant):
                assert proc.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        first = finished(quant)
        assert len(first) < 4, "the flow finished before it was killed"
        assert any((tmp_path / "out" / "Apis_mellifera" / "fastq").iterdir())  # killed mid-download
        stamps = {d.name: (d / "abundance.tsv").stat().st_mtime_ns for d in first}
        before = len(slow.requests)
        slow.bandwidth = None
        get_settings.cache_clear()
        os.environ["GENOFLOWS_ENA_BASE_URL"] = slow.base_url
        try:
            get_settings.cache_clear()
            summary = rnaseq_quant(**p)
        finally:
            os.environ["GENOFLOWS_ENA_BASE_URL"] = world[1].base_url
            get_settings.cache_clear()
        assert summary["quantified"] == 4 and not summary["failures"]
        assert {d.name: (d / "abundance.tsv").stat().st_mtime_ns for d in first} == stamps
        assert not [r for r in slow.requests[before:] if any(run in r.path for run in stamps)]
        assert list((tmp_path / "out" / "Apis_mellifera" / "fastq").iterdir()) == []


def test_multi_species_from_one_yaml(prefect_harness, world, tmp_path):
    from flows.rnaseq_quant import rnaseq_multi_species

    root, server, _ = world
    (root / "srv" / "inputs").mkdir(exist_ok=True)
    for name in ("transcripts.fa", "metadata.tsv"):  # inputs by URL this time
        (root / "srv" / "inputs" / name).write_bytes((root / name).read_bytes())
    cfg = root / "srv" / "inputs" / "project.yaml"  # the config itself is remote (as the nightly deployment's)
    cfg.write_text(  # relative inputs sit beside the config on the server; out_dir is a local absolute path
        f"transcriptome: transcripts.fa\nout_dir: {tmp_path / 'multi'}\ndisk_budget: 5MB\nsources: [ena]\n"
        "species:\n"
        f"  - {{species: {SPECIES}, metadata: metadata.tsv}}\n"
        "  - {species: Vespa crabro, metadata: [SRR5000007, SRR5000002]}\n"
    )
    state, results = run_flow(rnaseq_multi_species, configs=server.url("inputs/project.yaml"))
    assert set(results) == {"Apis_mellifera", "Vespa_crabro"}
    assert results["Vespa_crabro"]["quantified"] == 2 and not results["Vespa_crabro"]["failures"]
    # one stream: both species' fastq/ sampled together stay within the one budget (5 MB)
    assert 0 < results["Vespa_crabro"]["disk_high_water_bytes"] <= 5_000_000
    assert state.is_failed() and "Vespa_crabro: 2 of 2 runs quantified" in state.message
    assert "Apis_mellifera: " in state.message and "failed (see" in state.message  # per species
    vc = tmp_path / "multi" / "Vespa_crabro"
    assert read_tsv(vc / "merged" / "Vespa_crabro_est_counts.tsv")[0].keys() == {"target_id", "SRR5000007", "SRR5000002"}


def test_bad_inputs_fail_the_flow_with_a_clear_message(prefect_harness, world, tmp_path):
    from flows.rnaseq_quant import rnaseq_quant

    root, _, _ = world
    meta = tmp_path / "bad.tsv"
    meta.write_text("run\tlib_layout\nSRR5000001\tpaired\n")
    state = rnaseq_quant(**params(root, str(tmp_path / "o1"), metadata=str(meta)), return_state=True)
    assert state.is_failed() and "required column(s) missing: scientific_name" in state.message
    fasta = tmp_path / "bad.fa"
    fasta.write_text("this is not a fasta\n")
    state = rnaseq_quant(**params(root, str(tmp_path / "o2"), transcriptome=str(fasta)), return_state=True)
    assert state.is_failed() and "not a FASTA file" in state.message
    assert not list((tmp_path / "o2" / "Apis_mellifera" / "quant").iterdir())


def test_disk_full_fails_the_flow_run_and_keeps_finished_results(prefect_harness, world, tmp_path):
    """A run finished earlier; then the disk fills up (16 kB left, though the budget says 2 MB). The flow run ends
    Failed, naming the disk, without trying run after run; the finished run's results stay as they were and stay
    merged, no partial file is left. Once space is freed, a rerun quantifies the rest."""
    from flows.rnaseq_quant import rnaseq_quant

    root, _, _ = world
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    runs = ["SRR5000001", "SRR5000002", "SRR5000007"]
    try:
        sp = disk / "out" / "Apis_mellifera"
        state, _ = run_flow(rnaseq_quant, **params(root, str(disk / "out"), metadata=["SRR5000002"], sources=["ena"]))
        assert state.is_completed()
        stamp = (sp / "quant" / "SRR5000002" / "abundance.tsv").stat().st_mtime_ns
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 16_384))
        state, summary = run_flow(rnaseq_quant, **params(root, str(disk / "out"), metadata=runs, sources=["ena"]))
        assert state.is_failed() and "machine-wide failure" in state.message and "disk" in state.message
        assert "1 of 3 runs quantified" in state.message
        failed = {r["run"]: r["reason"] for r in read_tsv(sp / "failed.tsv")}
        assert set(failed) == {"SRR5000001", "SRR5000007"}, failed
        assert all("disk" in reason for reason in failed.values()), failed
        assert (sp / "quant" / "SRR5000002" / "abundance.tsv").stat().st_mtime_ns == stamp
        assert summary["quantified"] == 1 and list(read_tsv(sp / "merged" / "Apis_mellifera_tpm.tsv")[0])[1:] == ["SRR5000002"]
        assert [p for p in (sp / "fastq").rglob("*") if p.is_file()] == []
        assert [d.name for d in finished(sp / "quant")] == ["SRR5000002"]

        ballast.unlink()
        state, summary = run_flow(rnaseq_quant, **params(root, str(disk / "out"), metadata=runs, sources=["ena"]))
        assert state.is_completed() and summary["quantified"] == 3 and not summary["failures"]
        assert not (sp / "failed.tsv").exists()
        assert list((sp / "fastq").iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_missing_s3_object_fails_only_its_run(prefect_harness, world, moto_endpoint, tmp_path):
    """Explicit s3:// URIs and an s3:// metadata table, reached through an AwsCredentials block parameter (its
    endpoint is the only way to the bucket: no S3 endpoint in the settings). One run's object is missing: that run
    is failed (failed.tsv), the other quantified."""
    import boto3
    from prefect_aws import AwsClientParameters, AwsCredentials

    from flows.rnaseq_quant import rnaseq_quant

    root, _, tx = world
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="lab-rnaseq")
    good = sim.simulate_run(tx, tmp_path / "gen", "lab1", n_fragments=800, seed=11)
    for i, f in enumerate(good.files, start=1):
        s3.upload_file(str(f), "lab-rnaseq", f"lab1_{i}.fastq.gz")
    uris = {run: ";".join(f"s3://lab-rnaseq/{run}_{i}.fastq.gz" for i in (1, 2)) for run in ("lab1", "lab2")}
    sim.write_metadata(tmp_path / "lab.tsv", [{"scientific_name": "Lasius niger", "run": run, "lib_layout": "paired",
                                               "fastq_uris": u} for run, u in uris.items()])  # fmt: skip
    s3.upload_file(str(tmp_path / "lab.tsv"), "lab-rnaseq", "lab.tsv")
    creds = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                           aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint))  # fmt: skip
    creds.save(f"rnaseq-lab-{time.monotonic_ns()}")
    assert get_settings().s3_endpoint_url is None
    _, summary = run_flow(rnaseq_quant, **params(root, str(tmp_path / "out"), metadata="s3://lab-rnaseq/lab.tsv",
                                                 species="Lasius niger", aws_credentials=creds))  # fmt: skip
    sp = tmp_path / "out" / "Lasius_niger"
    assert summary["quantified"] == 1 and [d.name for d in finished(sp / "quant")] == ["lab1"]
    failed = {r["run"]: r["reason"] for r in read_tsv(sp / "failed.tsv")}
    assert list(failed) == ["lab2"]
    assert "PermanentFetchError" in failed["lab2"] and "s3://lab-rnaseq/lab2_1.fastq.gz: no such object" in failed["lab2"]


def test_runs_without_a_source_count_towards_progress(prefect_harness, world, tmp_path):
    """A run no source has fails at resolution: progress still reaches 100% and the run table lists it."""
    from flows.rnaseq_quant import rnaseq_quant

    root, _, _ = world
    _, summary = run_flow(rnaseq_quant, **params(root, str(tmp_path / "out"), metadata=["SRR5000002", "SRR5999999"],
                                            species="Formica rufa", sources=["ena"]))  # fmt: skip
    assert summary["quantified"] == 1 and set(summary["failures"]) == {"SRR5999999"}
    progress = read_artifacts("rnaseq-progress-formica-rufa")[0]
    assert float(progress.data) == 100.0 and "1/2 runs quantified, 1 failed" in progress.description
    table = read_artifacts("rnaseq-runs-formica-rufa")[0].data
    rows = {r["run"]: r for r in (json.loads(table) if isinstance(table, str) else table)}
    assert rows["SRR5999999"]["status"].startswith("failed: resolve: no source has SRR5999999")


def test_two_flow_runs_share_one_budget_and_connections_through_global_concurrency_limits(prefect_harness, world,
                                                                                          tmp_path):  # fmt: skip
    """Two species' flow runs on one disk, each told it may use 10 MB and 3 connections, share the global concurrency
    limits rnaseq-disk-<name> (600 kB) and rnaseq-downloads-<name> (2): sampled together, their FASTQs never exceed
    600 kB and the throttled server never sees more than 2 downloads at once, yet it does see 2 (paired files in
    parallel). A run bigger than the shared budget fails alone. All slots are free afterwards."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.rnaseq_quant import rnaseq_quant

    root, server, _ = world
    name = f"lab-disk-{time.monotonic_ns()}"
    shared = 600_000
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=f"rnaseq-disk-{name}", limit=shared))
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=f"rnaseq-downloads-{name}", limit=2))
    # SRR5000009 (4.4 MB) fits this flow run's own budget but not the shared one: it fails alone, up front
    species = {"Formica fusca": ["SRR5000001", "SRR5000007"], "Lasius flavus": ["SRR5000002", "SRR5000008", "SRR5000009"]}
    sampler = Sampler(tmp_path / "out")
    results: dict[str, object] = {}
    server.bandwidth = 400_000  # per connection, so downloads overlap
    server.max_active = 0
    try:
        sampler.start()
        threads = [threading.Thread(target=lambda sp=sp, runs=runs: results.update({sp: run_flow(
            rnaseq_quant, **params(root, str(tmp_path / "out"), metadata=runs, species=sp, sources=["ena"],
                                   shared_limit=name, disk_budget="10MB"))})) for sp, runs in species.items()]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        sampler.stop.set()
        sampler.join()
        server.bandwidth = None
    for sp in species:
        state, summary = results[sp]
        assert summary["quantified"] == 2, (sp, state.message)
    assert results["Formica fusca"][0].is_completed() and results["Lasius flavus"][0].is_failed()
    assert "raise disk_budget" in results["Lasius flavus"][1]["failures"]["SRR5000009"]
    assert sampler.n > 10 and 0 < sampler.max <= shared
    assert server.max_active == 2 and not server.refused
    with get_client(sync_client=True) as client:
        for lim in (f"rnaseq-disk-{name}", f"rnaseq-downloads-{name}"):
            assert client.read_global_concurrency_limit_by_name(lim).active_slots == 0


def test_filereport_outage_then_recovery_html_page_named_and_bom_metadata(prefect_harness, world, tmp_path,
                                                                           monkeypatch):  # fmt: skip
    """ENA's filereport answers 500 for 2 s (an outage; the old code gave up after ~1.5 s) and then recovers: the
    runs are quantified. For one run it answers an HTML maintenance page every time: that run fails, and the
    reason says HTML, not "ENA has no row for the run". The metadata was saved by Excel (BOM, CRLF)."""
    from flows.rnaseq_quant import rnaseq_quant

    root, server, _ = world
    for k, v in {"GENOFLOWS_RETRY_ATTEMPTS": "5", "GENOFLOWS_RETRY_BASE_DELAY_SECONDS": "0.3",
                 "GENOFLOWS_RETRY_MAX_DELAY_SECONDS": "1.0"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    original = server._routes["/filereport"]
    first: list[float] = []
    page = b"<!DOCTYPE html><html><head><title>ENA portal maintenance</title></head></html>"

    def flaky(query):
        first.append(time.monotonic())
        if (query.get("accession") or [""])[0] == "SRR5000008":
            return 200, "text/html", page
        if time.monotonic() - first[0] < 2.0:
            return 500, "text/plain", b"internal error\n"
        return original(query)

    meta = tmp_path / "excel.tsv"
    rows = "".join(f"Formica rufa\t{r}\tpaired\r\n" for r in ("SRR5000002", "SRR5000007", "SRR5000008"))
    meta.write_bytes(b"\xef\xbb\xbf" + ("scientific_name\trun\tlib_layout\r\n" + rows).encode())
    server.add_route("/filereport", flaky)
    try:
        state, summary = run_flow(rnaseq_quant, **params(root, str(tmp_path / "out"), metadata=str(meta),
                                                         species="Formica rufa", sources=["ena"]))  # fmt: skip
    finally:
        server.add_route("/filereport", original)
        get_settings.cache_clear()
    assert summary["quantified"] == 2 and set(summary["failures"]) == {"SRR5000008"}
    assert "HTML page" in summary["failures"]["SRR5000008"] and "ENA portal maintenance" in summary["failures"]["SRR5000008"]
    assert state.is_failed() and "1 failed" in state.message
    assert first[-1] - first[0] >= 2.0  # the outage was ridden out, not given up on
