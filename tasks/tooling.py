"""Run a tool inside a Prefect task: its output lines stream into the run log."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

from genoflows.toolrun import ToolRun, run_tool
from tasks.runtime import log_lines


def run_logged(argv: Sequence[str | PathLike[str]], **kwargs) -> ToolRun:
    """`run_tool` with the current Prefect run logger as the line sink."""
    return run_tool(argv, log=log_lines(), **kwargs)
