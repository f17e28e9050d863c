"""The tool runner: argv only, streamed lines, errors with the tool's last words, provenance with versions."""

from __future__ import annotations

import json
import sys

import pytest

from genoflows.toolrun import ToolError, ToolNotFound, read_provenance, run_tool, tool_version


def test_streams_lines_and_records_provenance(tmp_path):
    seen: list[str] = []
    run = run_tool(["bcftools", "--version"], log=seen.append, provenance_dir=tmp_path)
    assert any(line.startswith("[bcftools] bcftools 1.") for line in seen)
    records = read_provenance(tmp_path)
    assert records[0]["tool"] == "bcftools" and records[0]["version"].startswith("1.")
    assert records[0]["returncode"] == 0 and run.version == tool_version("bcftools")


def test_failure_carries_last_lines(tmp_path):
    script = "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)"
    with pytest.raises(ToolError) as err:
        run_tool([sys.executable, "-c", script], provenance_dir=tmp_path, tail_lines=5)
    assert err.value.returncode == 3
    assert "line 99" in str(err.value) and "line 94" not in str(err.value)
    assert json.loads((tmp_path / "provenance.jsonl").read_text())["returncode"] == 3


def test_stdout_to_file_and_no_shell(tmp_path):
    out = tmp_path / "out.txt"
    run_tool(["echo", "a; rm -rf /"], stdout_path=out)
    assert out.read_text() == "a; rm -rf /\n"  # the argument went through verbatim, no shell


def test_missing_tool_says_what_to_do():
    with pytest.raises(ToolNotFound, match="GENOFLOWS_TOOL_IMAGES"):
        run_tool(["no-such-tool-genoflows", "--help"])


def test_container_wrapping(monkeypatch, tmp_path):
    from genoflows.settings import get_settings
    from genoflows.toolrun import container_argv

    monkeypatch.setenv("GENOFLOWS_CONTAINER_ENGINE", "podman")
    get_settings.cache_clear()
    try:
        argv = container_argv("pkrusche/hap.py:v0.3.12", ["hap.py", "t.vcf"], [tmp_path], tmp_path)
    finally:
        get_settings.cache_clear()
    assert argv[:2] == ["podman", "run"] and f"{tmp_path}:{tmp_path}" in argv
    assert argv[-3:] == ["pkrusche/hap.py:v0.3.12", "hap.py", "t.vcf"]


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
