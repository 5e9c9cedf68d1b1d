"""Admission (back pressure): whether a submission may enter its queue. Every way in (API, form, schedules)
goes through job_submit, which asks admit(); the web middleware is only its HTTP face.

Cost: no database access, and one Redis round trip (a pipeline) at most. A reading is trusted
for JOBS_QUEUE_DEPTH_CACHE_SECONDS in each process, unless the submissions that process accepted
since could have filled a queue (then it reads again). So the queue can overshoot its limit by at
most what the other web processes accept in that TTL: with the defaults (0.1 s) and 2 gunicorn
workers at 500 submissions/s each, 50 messages.

A background thread that kept the reading fresh, so that no submission waited on the round trip,
was measured against this plain form in one run (bench/README.md, "Complexity that pays"): the
refusal's p99 in the server was 4.6 / 4.0 ms with it and 4.7 / 4.0 ms without, so it went."""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings

from ..infra import counters, metrics
from ..infra.broker import read_depths
from .errors import BrokerUnavailable, QueueFull

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class QueueState:
    name: str
    depth: int
    limit: int
    low_mark: int
    closed: bool  # refusing submissions until the depth falls below the low mark
    drain_rate: float = 0.0  # jobs of this queue claimed per second over the last DRAIN_WINDOW seconds


@dataclass(frozen=True)
class Snapshot:
    queues: dict[str, QueueState]
    total_depth: int
    total_limit: int
    total_closed: bool
    drain_rate: float  # jobs claimed per second over the last DRAIN_WINDOW seconds, all queues
    taken_at: float = field(default_factory=time.monotonic)

    @property
    def accepting(self) -> bool:
        return not self.total_closed and not any(q.closed for q in self.queues.values())

    def refusal_for(self, queue: str | None) -> QueueState | None:
        """The queue state that refuses a submission to `queue`, or None when it is accepted."""
        if self.total_closed:
            return QueueState("*", self.total_depth, self.total_limit, low_mark(self.total_limit), True,
                              self.drain_rate)
        state = self.queues.get(queue) if queue else None
        return state if state is not None and state.closed else None


def retry_after(state: QueueState) -> int:
    """Seconds until the refusing queue's depth is likely below its low mark again, from that queue's own
    recent drain rate (another queue draining fast says nothing of this one)."""
    longest = settings.JOBS_RETRY_AFTER_MAX
    if state.drain_rate <= 0:
        return max(1, longest)  # nothing drains: no estimate, so the longest wait
    excess = max(1, state.depth - state.low_mark)
    return max(1, min(longest, math.ceil(excess / state.drain_rate)))


def low_mark(limit: int) -> int:
    return int(limit * settings.JOBS_QUEUE_LOW_WATERMARK)


def queue_limit(queue: str) -> int:
    return settings.JOBS_QUEUE_LIMITS.get(queue, settings.JOBS_QUEUE_LIMIT)


class _Gauge:
    """This process's reading of the queue depths, with what it accepted since."""

    def __init__(self):
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        # This process's acceptances, ever, and their value when the kept reading was sent: the
        # difference is what the reading cannot have seen.
        self._accepted: Counter[str] = Counter()
        self._accepted_at_read: Counter[str] = Counter()

    def reset(self) -> None:
        with self._lock:
            self._snapshot = None
            self._accepted, self._accepted_at_read = Counter(), Counter()

    def snapshot(self, *, max_age: float | None = None) -> Snapshot:
        ttl = settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS if max_age is None else max_age
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap.taken_at < ttl and not self._may_be_full(snap):
            return snap
        with self._lock:
            accepted, sent_at = self._accepted.copy(), time.monotonic()
        snap = dataclasses.replace(_read(), taken_at=sent_at)
        with self._lock:
            # Of two reads that overlapped (threaded servers), the one sent last is kept.
            if self._snapshot is None or sent_at >= self._snapshot.taken_at:
                self._snapshot, self._accepted_at_read = snap, accepted
        return snap

    def note_accepted(self, queue: str) -> None:
        with self._lock:
            self._accepted[queue] += 1
            self._accepted["*"] += 1

    def _may_be_full(self, snap: Snapshot) -> bool:
        with self._lock:
            mine = self._accepted - self._accepted_at_read
        if not mine:
            return False
        if snap.total_depth + mine["*"] >= snap.total_limit:
            return True
        return any(state.depth + mine[name] >= state.limit for name, state in snap.queues.items() if mine[name])


def _read() -> Snapshot:
    queues = settings.JOBS_QUEUES
    gate_names = [*queues, "*"]
    drain_keys = counters.drain_keys(gate_names)
    depths, values = read_depths(queues, keys=[*drain_keys, *map(counters.gate_key, gate_names)])
    drains = counters.drain_rates(gate_names, values[:len(drain_keys)])
    closed_before = {name: bool(value) for name, value in zip(gate_names, values[len(drain_keys):])}
    states = {q: _gate(q, depths[q], queue_limit(q), closed_before[q], drains[q]) for q in queues}
    total = sum(depths.values())
    total_state = _gate("*", total, settings.JOBS_QUEUE_LIMIT, closed_before["*"], drains["*"])
    return Snapshot(states, total, settings.JOBS_QUEUE_LIMIT, total_state.closed, drains["*"])


def _gate(queue: str, depth: int, limit: int, was_closed: bool, drain_rate: float) -> QueueState:
    """Close at the limit, open again below the low mark: the gate does not flap around the limit."""
    low = low_mark(limit)
    closed = depth >= limit or (was_closed and depth >= low)
    if closed != was_closed:
        counters.set_gate(queue, closed)
        logger.info("queue_gate queue=%s state=%s depth=%s limit=%s", queue, "closed" if closed else "open",
                    depth, limit)
    return QueueState(queue, depth, limit, low, closed, drain_rate)


_gauge = _Gauge()


# --- The service ---------------------------------------------------------------------


def admit(*, queue: str, inline: bool = False) -> None:
    """Raise QueueFull or BrokerUnavailable when a job may not be queued on `queue` now; a job run inline (in the
    request) always may: it never touches the queue."""
    if inline:
        return
    try:
        snap = _gauge.snapshot()
    except BrokerUnavailable:
        refused("broker_down")
        raise
    state = snap.refusal_for(queue)
    if state is not None:
        refused("queue_full")
        raise QueueFull(queue=state.name, depth=state.depth, limit=state.limit, retry_after=retry_after(state))


def accepted(*, queue: str, inline: bool = False) -> None:
    """A job was queued on `queue`: count it, and let this process's reading know (inline runs are not gated)."""
    if inline:
        return
    _gauge.note_accepted(queue)
    _count("accepted")


def refused(reason: str) -> None:
    metrics.refused(reason)
    _count(f"refused_{reason}")


def _count(outcome: str) -> None:
    counters.submissions.add(outcome)


def queue_snapshot(*, max_age: float | None = None) -> Snapshot:
    """The queues as this process last read them (fresh: max_age=0); raises BrokerUnavailable."""
    return _gauge.snapshot(max_age=max_age)


def submission_counts() -> dict[str, int]:
    """Accepted and refused submissions, cluster-wide, since Redis started."""
    return counters.submissions.totals()


def reset() -> None:
    """Forget this process's reading and counts (tests; a forked process starts its own)."""
    _gauge.reset()
    counters.submissions.reset()


def stop() -> None:
    """A web process exits: send the counts it has not sent yet."""
    counters.submissions.flush()
