"""The tool runner: argv only, full output in a log file with a one-line summary in the run log, errors with
the tool's last words, provenance with versions, containers with the least they need."""

from __future__ import annotations

import json
import os
import sys

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


def test_a_tool_in_a_container_really_runs_there(engine, monkeypatch, tmp_path):
    """Through a stand-in engine on PATH that records what it was asked to run, then runs the tool."""
    import stat

    from genoflows.settings import get_settings

    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bindir / "podman"
    fake.write_text(f"#!{sys.executable}\nimport os, sys\nopen({str(calls)!r}, 'a').write(' '.join(sys.argv) + '\\n')\n"
                    "args = sys.argv[1:]\nos.execvp(args[args.index('busybox-image:1') + 1], "
                    "args[args.index('busybox-image:1') + 1:])\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
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
