"""Cloudgene job states (CG2/CG3 `AbstractJob`) and GA4GH WES run states, mapped to what a client must do."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """What a remote job's state means for the pipeline."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"
    RETIRED = "retired"


# code -> (name used in events, phase). 8 = success + notification sent, 9 = failed/canceled + notification.
CLOUDGENE_STATES: dict[int, tuple[str, Phase]] = {
    -1: ("dead", Phase.FAILED),
    1: ("waiting", Phase.QUEUED),
    2: ("running", Phase.RUNNING),
    3: ("exporting", Phase.RUNNING),
    4: ("success", Phase.SUCCESS),
    5: ("failed", Phase.FAILED),
    6: ("canceled", Phase.CANCELED),
    7: ("retired", Phase.RETIRED),
    8: ("success", Phase.SUCCESS),
    9: ("failed", Phase.FAILED),
    10: ("deleted", Phase.RETIRED),
}

WES_STATES: dict[str, Phase] = {
    "UNKNOWN": Phase.QUEUED,
    "QUEUED": Phase.QUEUED,
    "INITIALIZING": Phase.QUEUED,
    "PAUSED": Phase.QUEUED,
    "RUNNING": Phase.RUNNING,
    "CANCELING": Phase.RUNNING,
    "COMPLETE": Phase.SUCCESS,
    "EXECUTOR_ERROR": Phase.FAILED,
    "SYSTEM_ERROR": Phase.FAILED,
    "PREEMPTED": Phase.FAILED,
    "CANCELED": Phase.CANCELED,
}

TERMINAL = {Phase.SUCCESS, Phase.FAILED, Phase.CANCELED, Phase.RETIRED}


def cloudgene_state(code: int) -> tuple[str, Phase]:
    """Name and phase of a Cloudgene state code; an unknown code is treated as still running."""
    return CLOUDGENE_STATES.get(int(code), (f"state-{code}", Phase.RUNNING))


def wes_state(name: str) -> tuple[str, Phase]:
    return name.lower(), WES_STATES.get(name, Phase.RUNNING)
