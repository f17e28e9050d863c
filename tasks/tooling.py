"""Run a tool inside a Prefect task: its output lines stream into the run log."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from os import PathLike
from typing import TYPE_CHECKING

from blocks.aws_batch import batch_for
from genoflows.toolrun import ToolRun, run_tool
from tasks.runtime import log_lines

if TYPE_CHECKING:
    from blocks.aws_batch import AwsBatch
    from blocks.tool_images import ToolImages


def run_logged(argv: Sequence[str | PathLike[str]], **kwargs) -> ToolRun:
    """`run_tool` with the current Prefect run logger as the line sink."""
    return run_tool(argv, log=log_lines(), **kwargs)


@contextmanager
def where_tools_run(batch: AwsBatch | None, tool_images: ToolImages | None) -> Iterator[None]:
    """The flow's AWS Batch block and tool images, applied inside a task. On threads the task already sees the
    flow's context; a Dask or Ray worker process does not (context variables and the flow's environment stay in
    the flow's process), so fanned-out tasks take both blocks as parameters and apply them here."""
    with tool_images.applied() if tool_images is not None else nullcontext(), batch_for(batch):
        yield
