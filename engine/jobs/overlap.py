"""Recording and scoring at once: a store job's saliency chunks are scored while the later rollout chunks are still
being played and recorded, so the slower stage sets the pace (``store.overlap``, on by default).

Two workers share the rollout store: the recorder (:meth:`engine.jobs.record.Recording.run`, in a thread of its
own) writes rollout chunks exactly as a recording alone does, and the scorer (:meth:`engine.jobs.score.Scoring.run`,
in the calling thread) scores each saliency chunk once the rollout steps it reads are written: its own frames, and
the steps before them where its states are replayed (:func:`engine.jobs.score.scored_states` reads chunks in order)
or shifted (``state_alignment=paper``). Both write their stores chunk by chunk, marker last, so the stores are the
stores of a sequential job, bit for bit, and a job killed at any point resumes like one.

The hand-off (:class:`HandOff`) is a bounded lead, not a queue of data: the scorer reads what it needs from the
store, and the recorder starts a chunk only while it is at most ``lead`` rollout chunks ahead of the steps the
scorer needs next, so the steps recorded but not yet scored stay within one saliency chunk plus ``lead`` rollout
chunks. An exception in either worker stops the other (the recorder between two steps, the scorer before its next
chunk) and is raised again by :func:`run_overlapped`, as it is; what was written before stays valid for a resume.

Threads, not processes: nothing is pickled or copied between the stages, and the agent, the environment and
both stores stay as a sequential job has them. ALE's ``act`` holds the GIL (ale_py 0.12; measured in
``benchmarks/overlap.py``), but for some 30 microseconds per frame; torch releases it inside its operators, where
scoring spends its time.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from ..core.errors import EngineError
from ..storage.store import RolloutStore, SaliencyStore
from .record import Recording
from .score import Scoring

log = logging.getLogger(__name__)

T = TypeVar("T")

LEAD = 2  # rollout chunks the recorder may be ahead of the steps the scorer needs next


class Stopped(Exception):
    """Raised in a worker whose partner failed: it stops there (never seen outside this module)."""


@dataclass
class Overlapped:
    """What :func:`run_overlapped` did: the stores, the seconds each worker ran (``waited_s``: the scorer's time
    waiting for steps to be recorded), the whole, and the largest lead the recorder took, in rollout chunks."""

    rstore: RolloutStore
    sstore: SaliencyStore
    rollout_s: float
    saliency_s: float
    waited_s: float
    wall_s: float
    max_lead: int


class HandOff:
    """The bounded hand-off between the recorder and the scorer of one rollout store (module docstring).

    ``recorded`` is the number of leading rollout steps written (marker included); ``needed`` the step up to which
    the scorer reads next (it only grows; ``inf`` once the scorer is done). The recorder may start chunk ``j``
    while ``j`` is below the count of chunks the scorer needs plus ``lead``."""

    def __init__(self, bounds: list[tuple[int, int]], first: int, lead: int | None = None) -> None:
        lead = LEAD if lead is None else lead  # read when made: tests set a module-wide lead
        if lead < 1:
            raise ValueError(f"the recorder's lead must be >= 1 rollout chunk, got {lead}")
        self.bounds, self.lead = bounds, lead
        self._starts = [a for a, _ in bounds]
        self.recorded = bounds[first][0] if first < len(bounds) else (bounds[-1][1] if bounds else 0)
        self.needed: float = 0
        self.recorder_done = False
        self.failed: BaseException | None = None  # the first worker's exception
        self.waited_s = 0.0
        self.max_lead = 0
        self._condition = threading.Condition()

    def _needed_chunks(self) -> int:
        """How many leading rollout chunks the scorer's next read needs."""
        return bisect.bisect_left(self._starts, self.needed)

    # the recorder's side -----------------------------------------------------------------------------------------
    def may_record(self, k: int) -> None:
        """Return once rollout chunk ``k`` may be played (within the lead); :class:`Stopped` if the scorer failed."""
        with self._condition:
            while self.failed is None and k >= self._needed_chunks() + self.lead:
                self._condition.wait()
            if self.failed is not None:
                raise Stopped
        # the lead once chunk k is written: chunks recorded beyond those the scorer needs
        self.max_lead = max(self.max_lead, k + 1 - self._needed_chunks())

    def written(self, k: int) -> None:
        with self._condition:
            self.recorded = self.bounds[k][1]
            self._condition.notify_all()

    def check(self) -> None:
        if self.failed is not None:
            raise Stopped

    def recorder_finished(self) -> None:
        with self._condition:
            self.recorder_done = True
            self._condition.notify_all()

    # the scorer's side -------------------------------------------------------------------------------------------
    def wait_for(self, stop: int, length: Callable[[], int] | None = None) -> None:
        """Return once rollout steps ``..stop-1`` are written; :class:`Stopped` if the recorder failed.
        ``length()``: the store's length now, for a game that may end early (``max_episodes``, a store the recorder
        truncates): then the wait ends once its last step is written."""
        started = time.perf_counter()
        with self._condition:
            self.needed = max(self.needed, stop)
            self._condition.notify_all()
            while (
                self.failed is None
                and self.recorded < (stop if length is None else min(stop, length()))
                and not self.recorder_done
            ):
                self._condition.wait()
            if self.failed is not None:
                raise Stopped
            if length is not None:
                stop = min(stop, length())
            if self.recorded < stop:  # the recorder ended without these steps: never waits forever
                raise EngineError(
                    f"the recording ended after step {self.recorded} but scoring needs the steps up to {stop}"
                )
        self.waited_s += time.perf_counter() - started

    def scorer_finished(self) -> None:
        with self._condition:
            self.needed = float("inf")
            self._condition.notify_all()

    # either side -------------------------------------------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        """A worker raised ``exc``: the other stops at its next check (the first failure is the one kept)."""
        with self._condition:
            if self.failed is None:
                self.failed = exc
            self._condition.notify_all()


def run_overlapped(recording: Recording, scoring: Scoring, lead: int | None = None) -> Overlapped:
    """Run ``recording`` (in a thread) and ``scoring`` (here) at once over one rollout store (module docstring);
    ``scoring`` must score the store ``recording`` writes (:func:`engine.jobs.score.open_scoring` with
    ``recording=True``); ``lead``: :data:`LEAD` by default. The first exception of either is raised here, after
    both stopped."""
    hand = HandOff(recording.rstore.bounds, recording.first, lead)
    try:
        sstore, rollout_s, score_s, wall_s = overlapped(recording.run, lambda: scoring.run(wait=hand.wait_for), hand)
    finally:
        recording.close()  # closed by its run already, unless the recorder never started
    return Overlapped(
        recording.rstore, sstore, rollout_s, score_s - hand.waited_s, hand.waited_s, wall_s, hand.max_lead
    )


def overlapped(record: Callable[..., object], score: Callable[[], T], hand: HandOff) -> tuple[T, float, float, float]:
    """``record(before_chunk=, after_chunk=, each_step=)`` in a thread and ``score()`` here, at once, tied by
    ``hand`` (``score`` waits with ``hand.wait_for``): ``(what score returned, the recorder's seconds, the
    scorer's seconds (its waits included), the seconds of both)``. The first exception of either is raised here, after both stopped."""
    times = {"rollout": 0.0}

    def recorder_work() -> None:
        started = time.perf_counter()
        try:
            record(before_chunk=hand.may_record, after_chunk=hand.written, each_step=hand.check)
        except Stopped:
            pass
        except BaseException as exc:  # raised again in the caller's thread
            hand.fail(exc)
        finally:
            times["rollout"] = time.perf_counter() - started
            hand.recorder_finished()

    started = time.perf_counter()
    recorder = threading.Thread(target=recorder_work, name="record", daemon=True)
    recorder.start()
    result: T | None = None
    scored = False
    try:
        result, scored = score(), True
    except Stopped:
        pass
    except BaseException as exc:  # an error, or KeyboardInterrupt: the recorder stops at its next step
        hand.fail(exc)
    finally:
        score_s = time.perf_counter() - started
        hand.scorer_finished()
        while recorder.is_alive():
            try:
                recorder.join()
            except BaseException as exc:  # KeyboardInterrupt while waiting: the recorder stops at its next step
                hand.fail(exc)
    if hand.failed is not None:
        raise hand.failed
    if not scored:  # the scorer stopped only because the recorder failed, which was raised above
        raise RuntimeError("the scorer stopped without an error of either worker")
    return cast(T, result), times["rollout"], score_s, time.perf_counter() - started
