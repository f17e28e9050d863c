"""The tool runner: argv only, full output in a log file with a one-line summary in the run log, errors with
the tool's last words, provenance with versions, containers with the least they need."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from genoflows.toolrun import ToolError, ToolNotFound, read_provenance, run_tool, tool_version


def test_full_output_in_a_log_file_and_one_summary_line(tmp_path):
    seen: list[str] = []
    run = run_tool(["bcftools", "--version"], log=seen.append, provenance_dir=tmp_path)
    assert len(seen) == 1 and seen[0].startswith("[bcftools] bcftools 1.") and " ok in " in seen[0]
    records = read_provenance(tmp_path)
    assert records[0]["tool"] == "bcftools" and records[0]["version"].startswith("1.")
    assert records[0]["returncode"] == 0 and run.version == tool_version("bcftools")
    log_file = tmp_path / records[0]["log"]
    assert log_file.name == "tools.log" and str(log_file) in seen[0]  # the summary names the full log
    assert "Copyright" in log_file.read_text() and records[0]["lines"] > 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provenance.jsonl", "tools.log"]  # no partial left


def test_a_chatty_tool_leaves_a_short_run_log_and_every_line_on_disk(tmp_path):
    """Like kallisto per run: hundreds of lines, blank ones, repeated banners -> one line in the run log."""
    script = "for i in range(400): print('[quant] banner' if i % 7 else '', 'line', i)"
    seen: list[str] = []
    for _ in range(3):
        run_tool([sys.executable, "-c", script], log=seen.append, provenance_dir=tmp_path)
    assert len(seen) == 3
    text = (tmp_path / "tools.log").read_text()
    assert text.count("### ") == 3 and text.count("\n") == 3 * 401  # a header + every line, per call
    offsets = [r["log_offset"] for r in read_provenance(tmp_path)]
    blocks = (tmp_path / "tools.log").read_bytes()
    assert offsets[0] == 0 and all(blocks[o:o + 4] == b"### " for o in offsets)


def test_concurrent_tools_in_one_directory_do_not_interleave(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    script = "import sys, time\nfor i in range(50): print(sys.argv[1], i, flush=True); time.sleep(0.002)"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda tag: run_tool([sys.executable, "-c", script, tag], provenance_dir=tmp_path),
                      ["a", "b", "c", "d"]))
    blocks = (tmp_path / "tools.log").read_text().split("### ")[1:]
    assert len(blocks) == 4
    for block in blocks:
        body = block.splitlines()[1:]
        tag = body[0].split()[0]
        assert body == [f"{tag} {i}" for i in range(50)]


def test_failure_carries_last_lines(tmp_path):
    script = "import sys\nfor i in range(100): print('line', i); print()\nsys.exit(3)"
    seen: list[str] = []
    with pytest.raises(ToolError) as err:
        run_tool([sys.executable, "-c", script], provenance_dir=tmp_path, tail_lines=5, log=seen.append)
    assert err.value.returncode == 3
    assert "line 99" in str(err.value) and "line 94" not in str(err.value)  # blank lines do not crowd it out
    record = json.loads((tmp_path / "provenance.jsonl").read_text())
    assert record["returncode"] == 3
    assert "FAILED (exit 3)" in seen[0] and seen[-1].endswith("line 99") and len(seen) == 6
    assert "line 0\n" in (tmp_path / record["log"]).read_text() and record["log_offset"] == 0


def test_stdout_to_file_and_no_shell(tmp_path):
    out = tmp_path / "out.txt"
    run_tool(["echo", "a; rm -rf /"], stdout_path=out)
    assert out.read_text() == "a; rm -rf /\n"  # the argument went through verbatim, no shell


def test_missing_tool_says_what_to_do():
    with pytest.raises(ToolNotFound, match="GENOFLOWS_TOOL_IMAGES"):
        run_tool(["no-such-tool-genoflows", "--help"])


@pytest.fixture
def engine(monkeypatch):
    from genoflows.settings import get_settings

    def use(name: str) -> None:
        monkeypatch.setenv("GENOFLOWS_CONTAINER_ENGINE", name)
        get_settings.cache_clear()

    yield use
    monkeypatch.delenv("GENOFLOWS_CONTAINER_ENGINE", raising=False)
    get_settings.cache_clear()


def test_containers_get_read_only_inputs_one_writable_dir_and_no_network(engine, tmp_path):
    from genoflows.toolrun import container_argv

    engine("podman")
    inputs, out = tmp_path / "in", tmp_path / "out"
    argv = container_argv("pkrusche/hap.py:v0.3.12", ["hap.py", "t.vcf"], [inputs, out / "sub"], out)
    assert argv[:2] == ["podman", "run"]
    assert argv[argv.index("--network") + 1] == "none"
    assert ["--cap-drop", "ALL"] == argv[argv.index("--cap-drop"):argv.index("--cap-drop") + 2]
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert volumes == [f"{inputs}:{inputs}:ro", f"{out}:{out}:rw"]  # out/sub is inside the writable dir
    assert argv[argv.index("-w") + 1] == str(out)
    assert argv[-3:] == ["pkrusche/hap.py:v0.3.12", "hap.py", "t.vcf"]
    downloading = container_argv("localhost/fetcher:1", ["fetch"], [], out, network=True)
    assert downloading[downloading.index("--network") + 1] == "bridge"


def test_container_engine_and_image_are_checked(engine, tmp_path):
    from genoflows.toolrun import container_argv

    engine("sh")
    with pytest.raises(ValueError, match="not allowed"):
        container_argv("pkrusche/hap.py:v0.3.12", ["hap.py"], [], tmp_path)
    engine("docker")
    for image in ("--privileged", "/etc/passwd", "ubuntu;reboot", ""):
        with pytest.raises(ValueError, match="not an image reference"):
            container_argv(image, ["hap.py"], [], tmp_path)


def _stand_in_podman(tmp_path: Path, monkeypatch, record: str) -> Path:
    """A stand-in `podman` on PATH that appends `record` (a Python expression over sys.argv) to calls.txt and then
    runs the tool named after the image busybox-image:1; returns calls.txt."""
    import stat

    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bindir / "podman"
    fake.write_text(f"#!{sys.executable}\nimport os, sys\nopen({str(calls)!r}, 'a').write({record} + '\\n')\n"
                    "args = sys.argv[1:]\nos.execvp(args[args.index('busybox-image:1') + 1], "
                    "args[args.index('busybox-image:1') + 1:])\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return calls


def test_a_tool_in_a_container_really_runs_there(engine, monkeypatch, tmp_path):
    """Through a stand-in engine on PATH that records what it was asked to run, then runs the tool."""
    from genoflows.settings import get_settings

    calls = _stand_in_podman(tmp_path, monkeypatch, "' '.join(sys.argv)")
    monkeypatch.setenv("GENOFLOWS_TOOL_IMAGES", '{"echo": "busybox-image:1"}')
    engine("podman")
    try:
        seen: list[str] = []
        run = run_tool(["echo", "hello"], cwd=tmp_path, log=seen.append, provenance_dir=tmp_path)
    finally:
        get_settings.cache_clear()
    assert run.image == "busybox-image:1" and " in busybox-image:1: ok" in seen[0]
    assert f"-v {tmp_path}:{tmp_path}:rw" in calls.read_text() and "--network none" in calls.read_text()
    assert "hello" in (tmp_path / run.log).read_text()


def test_tools_pip_installed_in_the_venv_run_without_an_activated_venv(monkeypatch, tmp_path):
    from pathlib import Path

    from genoflows.toolrun import which

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as under a worker started without the venv on PATH
    assert which("truvari") == str(Path(sys.executable).parent / "truvari")
    run = run_tool(["truvari", "version"], provenance_dir=tmp_path)
    assert run.version[0].isdigit() and read_provenance(tmp_path)[0]["tool"] == "truvari"


def test_stop_terminates_a_running_tool(tmp_path):
    import threading
    import time

    from genoflows.toolrun import ToolStopped

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(ToolStopped):
        run_tool(["sleep", "60"], stop=stop, provenance_dir=tmp_path)
    assert time.monotonic() - t0 < 5
    assert read_provenance(tmp_path)[0]["returncode"] < 0  # ended by a signal, and recorded


# --- run_pipeline: argv lists connected by OS pipes --------------------------------------------------------------


def _small_vcf(path, n=400):
    """A VCF whose normalisation has work to do: multi-allelic records and MNPs, on a random reference."""
    import random

    import pysam

    rng = random.Random(5)
    seq = "".join(rng.choice("ACGT") for _ in range(20_000))
    fasta = path.parent / "ref.fa"
    fasta.write_text(">chr1\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    pysam.faidx(str(fasta))
    header = pysam.VariantHeader()
    header.contigs.add("chr1", length=len(seq))
    header.add_sample("S")
    header.formats.add("GT", 1, "String", "Genotype")
    with pysam.VariantFile(str(path), "wz", header=header) as out:
        for i in range(n):
            pos = 100 + 40 * i
            ref = seq[pos - 1:pos + 1] if i % 3 == 0 else seq[pos - 1]
            alts = ["".join(rng.choice([b for b in "ACGT" if b != r]) for r in ref)]
            if i % 4 == 0:
                alts.append(ref + "T")  # an insertion beside the SNP/MNP
            rec = out.new_record(contig="chr1", start=pos - 1, alleles=(ref, *alts))
            rec.samples["S"]["GT"] = (1, 2) if len(alts) > 1 else (0, 1)
            out.write(rec)
    return path, fasta


def test_a_pipeline_writes_what_its_steps_write_one_after_another(tmp_path):
    """norm | norm -a | sort through pipes == the same three steps with files between them; every stage's
    output in tools.log as its own block; nothing but the output and the logs left behind."""
    import pysam

    from genoflows.toolrun import PIPE_IN, PIPE_OUT, run_pipeline
    from genoflows.tools import bcftools

    vcf, ref = _small_vcf(tmp_path / "in.vcf.gz")
    a, b, seq_out = tmp_path / "a.bcf", tmp_path / "b.bcf", tmp_path / "seq.bcf"
    run_tool(bcftools.norm_argv(vcf, a, ref))
    run_tool(bcftools.atomize_argv(a, b, ref))
    run_tool(bcftools.sort_argv(b, seq_out, tmp_path))
    out_dir = tmp_path / "piped"
    out_dir.mkdir()
    seen: list[str] = []
    records = run_pipeline([
        bcftools.norm_argv(vcf, PIPE_OUT, ref, output_type="u"),
        bcftools.atomize_argv(PIPE_IN, PIPE_OUT, ref, output_type="u"),
        bcftools.sort_argv(PIPE_IN, out_dir / "piped.bcf", out_dir, output_type="b"),
    ], provenance_dir=out_dir, log=seen.append)
    piped = [str(r) for r in pysam.VariantFile(str(out_dir / "piped.bcf"))]
    assert piped == [str(r) for r in pysam.VariantFile(str(seq_out))] and len(piped) > 500  # split + atomized
    assert [r.pipeline["stage"] for r in records] == [1, 2, 3] and all(r.returncode == 0 for r in records)
    assert len(seen) == 3 and all(" ok in " in line for line in seen)
    log = (out_dir / "tools.log").read_text()
    assert log.count("### ") == 3 and "(pipeline stage 3 of 3)" in log and "Lines   total/split/" in log
    assert sorted(p.name for p in out_dir.iterdir()) == ["piped.bcf", "provenance.jsonl", "tools.log"]
    assert [r["pipeline"]["stage"] for r in read_provenance(out_dir)] == [1, 2, 3]


def test_a_failing_stage_is_named_even_when_the_stages_after_it_exit_0(tmp_path):
    """The first stage dies half-way; the reader downstream sees an early EOF and exits 0 with a cut-off output.
    The pipeline must fail, naming stage 1 and its exit status, not pass the truncated output on."""
    from genoflows.toolrun import PIPE_IN, PIPE_OUT, PipelineError, run_pipeline

    writer = "import sys\nfor i in range(1000): print(i)\nsys.stdout.flush()\nprint('disk full', file=sys.stderr)\nsys.exit(7)"
    out = tmp_path / "out.txt"
    with pytest.raises(PipelineError) as err:
        run_pipeline([[sys.executable, "-c", writer, PIPE_OUT], [sys.executable, "-c", REVERSE, PIPE_IN, str(out)]],
                     provenance_dir=tmp_path)
    assert err.value.stage == 1 and err.value.returncode == 7
    assert str(err.value).startswith("pipeline stage 1 of 2 (python") and "exited with code 7" in str(err.value)
    assert "disk full" in str(err.value)
    codes = [r["returncode"] for r in read_provenance(tmp_path)]
    assert codes[0] == 7 and codes[1] in (0, -15)  # the reader finished on the cut-off input, or was terminated


def test_a_failing_middle_stage_is_blamed_not_the_stage_that_lost_its_pipe(tmp_path):
    from genoflows.toolrun import PIPE_IN, PIPE_OUT, PipelineError, run_pipeline

    endless = "import sys\nwhile True: sys.stdout.write('x' * 65536)"
    picky = "import sys\nsys.stdin.read(10)\nprint('bad record at line 1', file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(PipelineError) as err:
        run_pipeline([[sys.executable, "-c", endless, PIPE_OUT], [sys.executable, "-c", picky, PIPE_IN, PIPE_OUT],
                      ["cat", PIPE_IN]], provenance_dir=tmp_path)
    assert err.value.stage == 2 and err.value.returncode == 3 and "bad record at line 1" in str(err.value)
    codes = [r["returncode"] for r in read_provenance(tmp_path)]
    assert codes[1] == 3 and codes[0] != 0  # the writer lost its reader: recorded, not blamed


def test_pipeline_stages_must_say_where_the_pipe_is(tmp_path):
    from genoflows.toolrun import PIPE_OUT, run_pipeline

    with pytest.raises(ValueError, match="PIPE_IN"):
        run_pipeline([["echo", "a", PIPE_OUT], ["cat"]])


# A stage as scripts: "-" means the pipe (stdin/stdout), anything else a file, as tools such as bcftools read it.
WRITE_LINES = ("import sys\nout = sys.stdout if sys.argv[1] == '-' else open(sys.argv[1], 'w')\n"
               "out.write(''.join(f'{i}\\n' for i in range(5000)))\n")
REVERSE = ("import sys\nsrc = sys.stdin if sys.argv[1] == '-' else open(sys.argv[1])\n"
           "lines = src.readlines()\nopen(sys.argv[2], 'w').write(''.join(reversed(lines)))\n"
           "print('reversed', len(lines), file=sys.stderr)\n")


def test_each_stage_runs_in_its_own_container_connected_by_pipes(engine, monkeypatch, tmp_path):
    """A stand-in engine on PATH records its argv and runs the tool: the reading stage gets `-i`, data flows."""
    from genoflows.settings import get_settings
    from genoflows.toolrun import PIPE_IN, PIPE_OUT, run_pipeline

    calls = _stand_in_podman(tmp_path, monkeypatch, "repr(sys.argv[1:])")
    monkeypatch.setenv("GENOFLOWS_TOOL_IMAGES", json.dumps({os.path.basename(sys.executable): "busybox-image:1"}))
    engine("podman")
    out = tmp_path / "work" / "reversed.txt"
    out.parent.mkdir()
    try:
        records = run_pipeline([[sys.executable, "-c", WRITE_LINES, PIPE_OUT],
                                [sys.executable, "-c", REVERSE, PIPE_IN, str(out)]],
                               cwd=out.parent, provenance_dir=tmp_path)
    finally:
        get_settings.cache_clear()
    assert out.read_text().splitlines()[:2] == ["4999", "4998"] and len(out.read_text().splitlines()) == 5000
    import ast

    argvs = [ast.literal_eval(line) for line in calls.read_text().splitlines()]  # in the order they started
    writer, reader = sorted(argvs, key=lambda a: REVERSE in a)
    assert len(argvs) == 2 and all(a[:2] == ["run", "--rm"] for a in argvs) and WRITE_LINES in writer
    assert "-i" not in writer and "-i" in reader  # only the reading stage keeps its stdin
    assert all(["--network", "none"] == a[a.index("--network"):a.index("--network") + 2] for a in argvs)
    assert all(r.image == "busybox-image:1" for r in records)
    assert "reversed 5000" in (tmp_path / "tools.log").read_text()


def test_with_a_batch_stage_the_pipeline_runs_step_by_step_through_files(batch_env, tmp_path):
    """A Batch job has no pipe to its neighbours: the stages run one after another (bcftools as Batch jobs),
    a unique temp file between them, removed afterwards; the result is the piped one."""
    import pysam

    from genoflows.batch import use_batch
    from genoflows.toolrun import PIPE_IN, PIPE_OUT, run_pipeline
    from genoflows.tools import bcftools
    from tests.test_batch import make_runner

    endpoint, bucket, agent = batch_env
    (tmp_path / "in").mkdir()
    vcf, ref = _small_vcf(tmp_path / "in" / "in.vcf.gz", n=60)
    piped = tmp_path / "piped.bcf"
    stages = lambda out, work: [bcftools.norm_argv(vcf, PIPE_OUT, ref, output_type="u"),  # noqa: E731
                                bcftools.sort_argv(PIPE_IN, out, work, output_type="b")]
    run_pipeline(stages(piped, tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    lines: list[str] = []
    with use_batch(make_runner(endpoint, bucket)):
        records = run_pipeline(stages(work / "batch.bcf", work), work_dir=work, log=lines.append,
                               provenance_dir=tmp_path / "prov")
    assert len(agent.submitted) == 2 and all(r.executor and r.executor["batch_job_id"] for r in records)
    assert [r.pipeline for r in records] == [{"stage": 1, "of": 2, "mode": "files"}, {"stage": 2, "of": 2, "mode": "files"}]
    assert [str(r) for r in pysam.VariantFile(str(work / "batch.bcf"))] == [str(r) for r in pysam.VariantFile(str(piped))]
    assert sorted(p.name for p in work.iterdir()) == ["batch.bcf"]  # the file between the stages is gone
    assert any("one after another" in line for line in lines)


@pytest.fixture
def batch_env(moto_endpoint, monkeypatch):
    from tests.test_batch import batch_env as make_env

    yield from make_env.__wrapped__(moto_endpoint, monkeypatch)


def test_stop_terminates_every_stage_of_a_pipeline(tmp_path):
    import threading
    import time

    from genoflows.toolrun import PIPE_IN, PIPE_OUT, PipelineStopped, run_pipeline

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    slow = "import sys, time\ntime.sleep(60)"
    t0 = time.monotonic()
    with pytest.raises(PipelineStopped):
        run_pipeline([[sys.executable, "-c", slow, PIPE_OUT], [sys.executable, "-c", slow, PIPE_IN]], stop=stop,
                     provenance_dir=tmp_path)
    assert time.monotonic() - t0 < 15
    assert all(r["returncode"] < 0 for r in read_provenance(tmp_path))  # both ended by a signal, and recorded
