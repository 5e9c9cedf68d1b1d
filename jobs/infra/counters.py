"""Cluster-wide numbers kept in the platform's Redis: the drain rate, submission outcomes, housekeeping events,
the gates' closed flags, and user schedules' last sends and runs that made no job. All of them are advice: a
number lost with Redis is only a number."""
from __future__ import annotations

import json
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


# --- User schedules: when beat last sent each one, and what happened to runs that made no job --------

SCHEDULE_SENT_KEY = "jobs:schedules:sent"  # schedule name -> when beat last sent it (epoch seconds)
MISSED_BY_SCHEDULE_KEY = "jobs:schedules:missed"  # schedule name -> runs missed while no beat ran
SCHEDULE_LOG_KEY = "jobs:schedules:log:{name}"  # a schedule's refused, invalid and missed runs, newest first
SCHEDULE_LOG_LENGTH = 200


def record_schedule_sent(name: str, at: float) -> None:
    """Beat sent a schedule's message: kept so that the next beat starts from it (the database's last_run_at is
    written only every sync_every seconds)."""
    try:
        client().hset(SCHEDULE_SENT_KEY, name, repr(at))
    except REDIS_DOWN:
        pass  # the database's last_run_at is the fallback


def schedules_sent(names: list[str]) -> dict[str, float]:
    """When beat last sent each of `names` (those it never sent, or all when Redis is down, are left out)."""
    if not names:
        return {}
    try:
        values = client().hmget(SCHEDULE_SENT_KEY, names)
    except REDIS_DOWN:
        return {}
    return {name: float(value) for name, value in zip(names, values) if value is not None}


def record_schedule_event(name: str, event: dict, *, missed: int = 0) -> None:
    """Add one entry to a schedule's log of runs that made no job (refused, invalid, missed), and count missed
    runs per schedule."""
    try:
        pipe = client().pipeline(transaction=False)
        key = SCHEDULE_LOG_KEY.format(name=name)
        pipe.lpush(key, json.dumps(event))
        pipe.ltrim(key, 0, SCHEDULE_LOG_LENGTH - 1)
        if missed:
            pipe.hincrby(MISSED_BY_SCHEDULE_KEY, name, missed)
        pipe.execute()
    except REDIS_DOWN:
        logger.warning("could not record schedule event %s of %r", event.get("event"), name)


def schedule_log(name: str, limit: int = SCHEDULE_LOG_LENGTH) -> list[dict]:
    """A schedule's refused, invalid and missed runs, newest first."""
    try:
        raw = client().lrange(SCHEDULE_LOG_KEY.format(name=name), 0, max(0, limit - 1))
    except REDIS_DOWN:
        return []
    return [json.loads(item) for item in raw]


def schedule_counts(names: list[str]) -> dict[str, dict]:
    """Per schedule: when beat last sent it, and its missed and refused runs since Redis started."""
    if not names:
        return {}
    try:
        pipe = client().pipeline(transaction=False)
        pipe.hmget(SCHEDULE_SENT_KEY, names)
        pipe.hmget(MISSED_BY_SCHEDULE_KEY, names)
        pipe.hmget(REFUSED_BY_SCHEDULE_KEY, names)
        sent, missed, refused = pipe.execute()
    except REDIS_DOWN:
        sent = missed = refused = [None] * len(names)
    return {name: {"sent": float(s) if s is not None else None, "missed": int(m or 0), "refused": int(r or 0)}
            for name, s, m, r in zip(names, sent, missed, refused)}
