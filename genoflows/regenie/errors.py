"""The one error type of the engine: printed by the CLI as regenie's ``ERROR: <msg>`` line, exit 1."""

from __future__ import annotations


class RegenieError(Exception):
    """A user-facing problem with an input file or option; the message names the file or option."""
