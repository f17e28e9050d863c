"""How long to wait between status requests: short at first, growing to a cap, longer while queued.

A job on a public server waits in the queue for hours and runs for hours more; a fixed 10-s poll (what
imputationbot does) makes thousands of requests. The schedule restarts short whenever the state changes,
so a finished job is noticed within a bounded fraction of the time it has been in its current state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from genoflows.imputation.states import TERMINAL, Phase


@dataclass
class PollSchedule:
    """Delays grow by `factor` from `initial` up to `cap` (or `queued_cap` while the job is queued)."""

    initial: float = 5.0
    factor: float = 1.5
    cap: float = 300.0
    queued_cap: float = 900.0
    _delay: float = field(default=0.0, init=False)
    _last: object = field(default=None, init=False)

    def next_delay(self, state: object, phase: Phase) -> float:
        """The wait before the next request, given the state just observed."""
        if state != self._last:
            self._last, self._delay = state, self.initial
        else:
            limit = self.queued_cap if phase is Phase.QUEUED else self.cap
            self._delay = min(limit, self._delay * self.factor)
        return self._delay


@dataclass
class Clock:
    """Injectable time: tests and the benchmark pass a fake one to wait hours in milliseconds."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def wait_until_terminal(
    status: Callable[[], tuple[object, Phase]],
    *,
    schedule: PollSchedule | None = None,
    clock: Clock | None = None,
    on_change: Callable[[object, Phase], None] | None = None,
    timeout: float | None = None,
) -> tuple[object, Phase]:
    """Call `status()` until it reports a terminal phase; `on_change` sees every new state once."""
    schedule = schedule or PollSchedule()
    clock = clock or Clock()
    start = clock.now()
    last = object()
    while True:
        state, phase = status()
        if state != last:
            last = state
            if on_change is not None:
                on_change(state, phase)
        if phase in TERMINAL:
            return state, phase
        if timeout is not None and clock.now() - start > timeout:
            raise TimeoutError(f"job still {phase.value} after {timeout:.0f} s")
        clock.sleep(schedule.next_delay(state, phase))
