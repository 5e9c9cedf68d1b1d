"""Cluster-wide numbers kept in the platform's Redis: the drain rate, submission outcomes, housekeeping events,
and the gates' closed flags. All of them are advice: a number lost with Redis is only a number."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import redis

from .redis import REDIS_DOWN, client

logger = logging.getLogger(__name__)

DRAIN_KEY = "jobs:drained:{queue}:{second}"  # claims per queue per second; queue "*" counts every queue
DRAIN_WINDOW = 10  # seconds of claims the drain rate is averaged over
GATE_KEY = "jobs:gate:{queue}"
SUBMISSIONS_KEY = "jobs:submissions"
EVENTS_KEY = "jobs:periodic"
REFUSED_BY_SCHEDULE_KEY = "jobs:schedules:refused"
COUNTS_FLUSH_SECONDS = 0.25


def drain_keys(queues: list[str], now: float | None = None) -> list[str]:
    """The per-second claim counters the drain rates are read from: the last DRAIN_WINDOW seconds of each queue
    in `queues`, queue by queue."""
    second = int(now if now is not None else time.time())
    return [DRAIN_KEY.format(queue=q, second=s) for q in queues for s in range(second - DRAIN_WINDOW, second)]


def drain_rates(queues: list[str], values: list) -> dict[str, float]:
    """Claims per second of each queue, from the values of drain_keys(queues)."""
    return {q: sum(int(x or 0) for x in values[i * DRAIN_WINDOW:(i + 1) * DRAIN_WINDOW]) / DRAIN_WINDOW
            for i, q in enumerate(queues)}


def record_drained(queue: str, count: int = 1) -> None:
    """Workers count the jobs they claim, per queue and in all: the drain rates Retry-After is computed from."""
    second = int(time.time())
    try:
        pipe = client().pipeline(transaction=False)
        for name in (queue, "*"):
            key = DRAIN_KEY.format(queue=name, second=second)
            pipe.incrby(key, count)
            pipe.expire(key, DRAIN_WINDOW * 3)
        pipe.execute()
    except REDIS_DOWN:
        pass  # a miss only makes Retry-After rounder


def gate_key(queue: str) -> str:
    return GATE_KEY.format(queue=queue)


def set_gate(queue: str, closed: bool) -> None:
    try:
        if closed:
            # Expires by itself, so that a gate left closed by a vanished process reopens.
            client().set(gate_key(queue), "1", ex=3600)
        else:
            client().delete(gate_key(queue))
    except REDIS_DOWN:
        logger.warning("could not record the gate state of queue %s", queue)


class SubmissionCounts:
    """Accepted and refused submissions, added up in the process and sent in batches.

    A round trip per submission would cost as much as the refusal itself; a batch goes at most
    every COUNTS_FLUSH_SECONDS, before the totals are read, and when a web process exits.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._sent_at = float("-inf")

    def add(self, outcome: str) -> None:
        with self._lock:
            self._pending[outcome] += 1
            due = time.monotonic() - self._sent_at >= COUNTS_FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        """Send what this process holds; kept for the next try if Redis does not answer."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
            self._sent_at = time.monotonic()
        if not pending:
            return
        try:
            # No retries: a batch sent twice would be counted twice.
            pipe = client(retries=False).pipeline(transaction=False)
            for outcome, n in pending.items():
                pipe.hincrby(SUBMISSIONS_KEY, outcome, n)
            pipe.execute()
        except redis.TimeoutError:
            pass  # it may have been counted: sending it again could count it twice
        except REDIS_DOWN:
            with self._lock:
                self._pending.update(pending)

    def totals(self) -> dict[str, int]:
        self.flush()
        try:
            return {k.decode(): int(v) for k, v in client().hgetall(SUBMISSIONS_KEY).items()}
        except REDIS_DOWN:
            return {}

    def reset(self) -> None:
        with self._lock:
            self._pending = Counter()
            self._sent_at = float("-inf")


submissions = SubmissionCounts()


def count_event(event: str, n: int = 1, *, schedule: str | None = None) -> None:
    """Add to the housekeeping counters (recovery, schedules); the log keeps the line if Redis does not."""
    if not n:
        return
    try:
        pipe = client().pipeline(transaction=False)
        pipe.hincrby(EVENTS_KEY, event, n)
        if schedule is not None:
            pipe.hincrby(REFUSED_BY_SCHEDULE_KEY, schedule, n)
        pipe.execute()
    except REDIS_DOWN:
        logger.warning("could not count event %s", event)


def event_counts() -> dict[str, dict[str, int]]:
    """What recovery and user schedules did since Redis started: events, and refused runs per schedule."""
    try:
        pipe = client().pipeline(transaction=False)
        pipe.hgetall(EVENTS_KEY)
        pipe.hgetall(REFUSED_BY_SCHEDULE_KEY)
        events, refused = pipe.execute()
    except REDIS_DOWN:
        return {"events": {}, "refused_by_schedule": {}}
    return {"events": {k.decode(): int(v) for k, v in events.items()},
            "refused_by_schedule": {k.decode(): int(v) for k, v in refused.items()}}
