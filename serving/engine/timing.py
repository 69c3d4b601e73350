"""Per-stage wall-clock accounting for the pipeline (read by the benchmarks; costs two clock reads per stage)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class StageTimer:
    """Accumulates seconds per named stage: ``with timer.stage("det_forward"): ...``."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.values[name] = self.values.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self.values[name] = self.values.get(name, 0.0) + seconds


class _NullTimer(StageTimer):
    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def add(self, name: str, seconds: float) -> None:
        pass


NULL_TIMER: StageTimer = _NullTimer()


_CURRENT: ContextVar[StageTimer] = ContextVar("shitu_stage_timer", default=NULL_TIMER)


def current_timer() -> StageTimer:
    """The timer of the request being handled in this context (:data:`NULL_TIMER` outside one)."""
    return _CURRENT.get()


@contextmanager
def timing_scope(timer: StageTimer) -> Iterator[StageTimer]:
    """Make ``timer`` the :func:`current_timer` inside the block (the server does it per request)."""
    token = _CURRENT.set(timer)
    try:
        yield timer
    finally:
        _CURRENT.reset(token)
