"""Back pressure: the broker's queue depth, the gate that refuses submissions over the limit, and its middleware.

Cost: one Redis round trip (a pipeline) per check at most, no database access. A reading is
trusted for JOBS_QUEUE_DEPTH_CACHE_SECONDS in each process, unless the submissions that process
accepted since could have filled a queue (then it reads again). So the queue can overshoot its
limit by at most what the other web processes accept in that TTL: with the defaults (0.1 s) and
2 gunicorn workers at 500 submissions/s each, 50 messages.

While submissions keep coming, a thread of the process reads the depth again every half TTL, so
that the reading a submission finds is fresh and the round trip is not on the submission's path:
a refusal is then answered from memory. The thread stops when submissions stop (REFRESH_IDLE_SECONDS)
and is started again by the next one, which reads for itself meanwhile; a submission that finds
no fresh reading (the thread late, Redis down) reads for itself as before.

The cluster-wide counters of accepted and refused submissions are written in batches: each
process adds up its own and sends them at most every COUNTS_FLUSH_SECONDS (from that thread while
it runs, else with a submission), before it reads them, and when its gunicorn worker exits, so
that counting is not a round trip on every submission.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import metrics
from .registry import get_kind

logger = logging.getLogger(__name__)

DRAIN_KEY = "jobs:drained:{second}"
GATE_KEY = "jobs:gate:{queue}"
COUNTERS_KEY = "jobs:submissions"
DRAIN_WINDOW = 10  # seconds of claims the drain rate is averaged over
COUNTS_FLUSH_SECONDS = 0.25
REFRESH_IDLE_SECONDS = 2.0  # the background reading stops this long after the last submission


class BrokerUnavailable(Exception):
    """The broker did not answer the depth check."""


@dataclass(frozen=True)
class QueueState:
    name: str
    depth: int
    limit: int
    low_mark: int
    closed: bool  # refusing submissions until the depth falls below the low mark


@dataclass(frozen=True)
class Snapshot:
    queues: dict[str, QueueState]
    total_depth: int
    total_limit: int
    total_closed: bool
    drain_rate: float  # jobs claimed per second over the last DRAIN_WINDOW seconds
    taken_at: float = field(default_factory=time.monotonic)

    def refusal_for(self, queue: str | None) -> QueueState | None:
        """The queue state that refuses a submission to `queue`, or None when it is accepted."""
        if self.total_closed:
            return QueueState("*", self.total_depth, self.total_limit, low_mark(self.total_limit), True)
        state = self.queues.get(queue) if queue else None
        return state if state is not None and state.closed else None

    def retry_after(self, state: QueueState) -> int:
        """Seconds until the depth is likely below the low mark again, from the recent drain rate."""
        longest = settings.JOBS_RETRY_AFTER_MAX
        if self.drain_rate <= 0:
            return max(1, longest)  # nothing drains: no estimate, so the longest wait
        excess = max(1, state.depth - state.low_mark)
        return max(1, min(longest, math.ceil(excess / self.drain_rate)))


def low_mark(limit: int) -> int:
    return int(limit * settings.JOBS_QUEUE_LOW_WATERMARK)


def queue_limit(queue: str) -> int:
    return settings.JOBS_QUEUE_LIMITS.get(queue, settings.JOBS_QUEUE_LIMIT)


def broker_list_names(queue: str) -> list[str]:
    """The Redis lists kombu keeps for one queue: one per priority step."""
    sep = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("sep", ":")
    return [f"{queue}{sep}{p}" if p else queue for p in settings.JOBS_PRIORITY_STEPS]


def _redis_url_for_redis_py(url: str) -> str:
    return "unix://" + url.removeprefix("redis+socket://") if url.startswith("redis+socket://") else url


class QueueGauge:
    """Reads queue depths from the broker, with a short per-process cache (kept fresh in the background while
    submissions come)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._redis: redis.Redis | None = None
        self._broker_redis: redis.Redis | None = None
        self._counts_redis: redis.Redis | None = None
        self._pending_counts: Counter[str] = Counter()
        self._counts_sent_at = float("-inf")
        # This process's acceptances, ever, and their value when the kept reading was sent: the
        # difference is what the reading cannot have seen.
        self._accepted: Counter[str] = Counter()
        self._accepted_at_read: Counter[str] = Counter()
        self._reads_sent = 0  # reads overlap (the thread's and a submission's): the last one sent is kept
        self._read_kept = 0
        self._refresher: _Refresher | None = None

    def reset(self) -> None:
        self.stop_refresher()
        with self._lock:
            self._snapshot = None
            self._redis = None
            self._broker_redis = None
            self._counts_redis = None
            self._pending_counts = Counter()
            self._counts_sent_at = float("-inf")
            self._accepted = Counter()
            self._accepted_at_read = Counter()
            self._reads_sent = self._read_kept = 0

    def stop_refresher(self, timeout: float = 2.0) -> None:
        """Stop this process's background reading and wait for it (its read is bounded by the socket timeout)."""
        with self._lock:
            refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.stop(timeout)

    @property
    def redis(self) -> redis.Redis:
        """The platform's Redis (REDIS_URL): drain counters, gate state, submission counters."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
            )
        return self._redis

    @property
    def counts_redis(self) -> redis.Redis:
        """The platform's Redis without retries, for the counters: adding a batch twice would count it twice."""
        if self._counts_redis is None:
            self._counts_redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5,
                                                      socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        return self._counts_redis

    def _broker_is_redis(self) -> bool:
        return settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://", "redis+socket://"))

    @property
    def broker_redis(self) -> redis.Redis:
        if self._broker_redis is None:
            url = _redis_url_for_redis_py(settings.CELERY_BROKER_URL)
            if url == settings.REDIS_URL:
                self._broker_redis = self.redis
            else:
                self._broker_redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return self._broker_redis

    def snapshot(self, *, max_age: float | None = None, keep_fresh: bool = False) -> Snapshot:
        """The current depths; raises BrokerUnavailable when the broker does not answer.

        A cached reading is not trusted once this process's own submissions since then could
        have filled a queue: it reads again, so that the overshoot comes from the other processes only.
        `keep_fresh` (submissions): keep a reading fresh in the background while such calls come.
        """
        ttl = settings.JOBS_QUEUE_DEPTH_CACHE_SECONDS if max_age is None else max_age
        if keep_fresh and ttl > 0:
            self._keep_fresh(ttl)
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap.taken_at < ttl and not self._may_be_full(snap):
            return snap
        return self._read_and_keep()

    def _read_and_keep(self, stopped: threading.Event | None = None) -> Snapshot:
        """Read, and keep the reading unless a later-sent one was kept meanwhile, or `stopped` (a reset).

        The reading is dated when it was sent, and this process's acceptances from then on count
        as unseen by it: an acceptance noted while the read was under way is not forgotten.
        """
        with self._lock:
            self._reads_sent += 1
            sequence, accepted, sent_at = self._reads_sent, self._accepted.copy(), time.monotonic()
        snap = dataclasses.replace(self._read(), taken_at=sent_at)
        with self._lock:
            if (stopped is None or not stopped.is_set()) and sequence > self._read_kept:
                self._snapshot, self._accepted_at_read, self._read_kept = snap, accepted, sequence
        return snap

    def _keep_fresh(self, ttl: float) -> None:
        """Note a submission; start this process's background reading if it is not running."""
        with self._lock:
            refresher = self._refresher
            if refresher is None or not refresher.alive():
                refresher = _Refresher(self, interval=ttl / 2)
                try:
                    refresher.start()
                except RuntimeError:  # no thread to be had (a limit, shutdown): submissions read for themselves
                    logger.warning("queue depth refresher could not start", exc_info=True)
                    return
                self._refresher = refresher
            refresher.demanded()

    def _refresher_running(self) -> bool:
        refresher = self._refresher
        return refresher is not None and refresher.alive()

    def _read(self) -> Snapshot:
        queues = settings.JOBS_QUEUES
        now = int(time.time())
        drain_keys = [DRAIN_KEY.format(second=s) for s in range(now - DRAIN_WINDOW, now)]
        gate_keys = [GATE_KEY.format(queue=q) for q in [*queues, "*"]]
        try:
            if self._broker_is_redis():
                pipe = self.broker_redis.pipeline(transaction=False)
                for q in queues:
                    for name in broker_list_names(q):
                        pipe.llen(name)
                if self.broker_redis is self.redis:
                    pipe.mget(drain_keys)
                    pipe.mget(gate_keys)
                replies = pipe.execute()
                n = len(settings.JOBS_PRIORITY_STEPS)
                depths = {q: sum(replies[i * n:(i + 1) * n]) for i, q in enumerate(queues)}
                if self.broker_redis is self.redis:
                    drained, gates = replies[-2], replies[-1]
                else:
                    drained, gates = self._platform_state(drain_keys, gate_keys)
            else:
                depths = amqp_depths(queues)
                drained, gates = self._platform_state(drain_keys, gate_keys)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc
        drain_rate = sum(int(x or 0) for x in drained) / DRAIN_WINDOW
        closed_before = {key: bool(val) for key, val in zip([*queues, "*"], gates)}
        states = {}
        for q in queues:
            states[q] = self._gate(q, depths[q], queue_limit(q), closed_before[q])
        total = sum(depths.values())
        total_state = self._gate("*", total, settings.JOBS_QUEUE_LIMIT, closed_before["*"])
        return Snapshot(states, total, settings.JOBS_QUEUE_LIMIT, total_state.closed, drain_rate)

    def _platform_state(self, drain_keys, gate_keys):
        pipe = self.redis.pipeline(transaction=False)
        pipe.mget(drain_keys)
        pipe.mget(gate_keys)
        return pipe.execute()

    def _gate(self, queue: str, depth: int, limit: int, was_closed: bool) -> QueueState:
        """Close at the limit, open again below the low mark: the gate does not flap around the limit."""
        low = low_mark(limit)
        closed = depth >= limit or (was_closed and depth >= low)
        if closed != was_closed:
            key = GATE_KEY.format(queue=queue)
            try:
                if closed:
                    # Expires by itself, so that a gate left closed by a vanished process reopens.
                    self.redis.set(key, "1", ex=3600)
                else:
                    self.redis.delete(key)
            except redis.RedisError:
                logger.warning("could not record the gate state of queue %s", queue)
            logger.info("queue_gate queue=%s state=%s depth=%s limit=%s", queue, "closed" if closed else "open",
                        depth, limit)
        return QueueState(queue, depth, limit, low, closed)

    def note_accepted(self, queue: str) -> None:
        """A submission to `queue` was accepted (readings sent from now on include it)."""
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

    def count_submission(self, outcome: str) -> None:
        metrics.submission_outcome(outcome)  # this host's Prometheus counter; the Redis hash is cluster-wide
        with self._lock:
            self._pending_counts[outcome] += 1
        if self._counts_due() and not self._refresher_running():
            self.flush_counts()

    def _counts_due(self) -> bool:
        return time.monotonic() - self._counts_sent_at >= COUNTS_FLUSH_SECONDS

    def flush_counts(self) -> None:
        """Add this process's counts to the cluster-wide ones; kept for the next try if Redis fails."""
        with self._lock:
            pending, self._pending_counts = self._pending_counts, Counter()
            self._counts_sent_at = time.monotonic()
        if not pending:
            return
        try:
            pipe = self.counts_redis.pipeline(transaction=False)
            for outcome, n in pending.items():
                pipe.hincrby(COUNTERS_KEY, outcome, n)
            pipe.execute()
        except redis.TimeoutError:
            pass  # it may have been counted: sending it again could count it twice
        except (redis.RedisError, OSError):
            with self._lock:
                self._pending_counts.update(pending)

    def submission_counts(self) -> dict[str, int]:
        self.flush_counts()
        try:
            return {k.decode(): int(v) for k, v in self.redis.hgetall(COUNTERS_KEY).items()}
        except redis.RedisError:
            return {}

    def record_drained(self, count: int = 1) -> None:
        """Called by workers as they claim jobs: feeds the drain rate that Retry-After is computed from."""
        key = DRAIN_KEY.format(second=int(time.time()))
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incrby(key, count)
            pipe.expire(key, DRAIN_WINDOW * 3)
            pipe.execute()
        except redis.RedisError:
            pass  # the drain rate is advice for Retry-After; a miss only makes it rounder


class _Refresher:
    """A daemon thread that reads the depth every `interval` while submissions come, and sends the counts.

    One per process (a forked child starts its own: threads do not survive a fork). It ends by
    itself REFRESH_IDLE_SECONDS after the last submission, or at once on reset.
    """

    def __init__(self, gauge: QueueGauge, *, interval: float):
        self.gauge = gauge
        self.interval = interval
        self.pid = os.getpid()
        self.last_demand = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-depth-refresher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def demanded(self) -> None:
        self.last_demand = time.monotonic()

    def alive(self) -> bool:
        return self.pid == os.getpid() and self._thread.is_alive() and not self._stopped.is_set()

    def stop(self, timeout: float) -> None:
        self._stopped.set()
        if self.pid == os.getpid() and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        # The submission that started the thread has just read for itself: the first reading is due later.
        while not self._stopped.wait(self.interval):
            if time.monotonic() - self.last_demand >= REFRESH_IDLE_SECONDS:
                break
            try:
                self.gauge._read_and_keep(stopped=self._stopped)
            except BrokerUnavailable:
                pass  # submissions find the reading stale and read for themselves: they say the broker is down
            except Exception:  # noqa: BLE001 - the thread must not die of a bad moment; submissions read meanwhile
                logger.exception("queue depth refresh failed")
            if self.gauge._counts_due() and not self._stopped.is_set():
                self.gauge.flush_counts()
        if not self._stopped.is_set():  # idle: what is left goes now; once stopped, the stopper sends it
            self._stopped.set()
            self.gauge.flush_counts()


def amqp_depths(queues: list[str]) -> dict[str, int]:
    """Ready messages per queue on RabbitMQ, from a passive declare (which does not create the queue)."""
    from celery import current_app

    depths = {}
    try:
        with current_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=1)
            channel = conn.default_channel
            for q in queues:
                try:
                    depths[q] = channel.queue_declare(queue=q, passive=True).message_count
                except Exception as exc:  # noqa: BLE001 - a queue nobody declared yet holds nothing
                    if "NOT_FOUND" not in str(exc):
                        raise
                    depths[q] = 0
                    channel = conn.channel()
    except Exception as exc:  # noqa: BLE001 - any connection failure means the broker is not answering
        raise BrokerUnavailable(str(exc)) from exc
    return depths


gauge = QueueGauge()


SUBMIT_PATHS = {"/api/jobs": "api", "/jobs/new": "form"}


def _submitted_kind(request: HttpRequest) -> str | None:
    """The kind named by a submission, read without the view (a bad body is the view's to refuse)."""
    if request.content_type == "application/json":
        try:
            body = json.loads(request.body or b"{}")
        except (ValueError, RecursionError):
            return None
        except Exception:  # noqa: BLE001 - a body over the size limit is the view's to refuse
            return None
        return body.get("kind") if isinstance(body, dict) and isinstance(body.get("kind"), str) else None
    try:
        return request.POST.get("kind")
    except Exception:  # noqa: BLE001
        return None


class BackPressureMiddleware:
    """Refuses job submissions with 503 and Retry-After while the broker queue is over its limit.

    Only POSTs to the submit endpoints are gated; reads, the admin, login, health and metrics
    never are. Inline kinds are not gated: they never touch the queue. This class gates every
    submit endpoint; each subclass gates one, so that each can sit where its refusal is cheapest
    (see MIDDLEWARE in settings).
    """

    channels: tuple[str, ...] = ("api", "form")

    def __init__(self, get_response):
        self.get_response = get_response
        self.paths = {path: channel for path, channel in SUBMIT_PATHS.items() if channel in self.channels}

    def __call__(self, request: HttpRequest) -> HttpResponse:
        channel = self.paths.get(request.path_info.rstrip("/") or "/")
        if channel is None or request.method != "POST":
            return self.get_response(request)
        kind = get_kind(_submitted_kind(request) or "")
        if kind is not None and kind.inline:
            return self.get_response(request)
        try:
            snap = gauge.snapshot(keep_fresh=True)
        except BrokerUnavailable as exc:
            logger.warning("submission refused: broker unavailable (%s)", exc)
            gauge.count_submission("refused_broker_down")
            return self._refuse(request, channel, {"error": "broker_unavailable",
                                                   "detail": "the message broker is not answering",
                                                   "retry_after": 5}, 5)
        state = snap.refusal_for(kind.queue if kind else None)
        if state is not None:
            retry_after = snap.retry_after(state)
            gauge.count_submission("refused_queue_full")
            return self._refuse(request, channel, {
                "error": "queue_full", "queue": state.name, "depth": state.depth, "limit": state.limit,
                "retry_after": retry_after,
            }, retry_after)
        response = self.get_response(request)
        if response.status_code in (200, 201, 202, 302):
            gauge.count_submission("accepted")
            if kind is not None:
                gauge.note_accepted(kind.queue)
        return response

    def _refuse(self, request, channel: str, body: dict, retry_after: int) -> HttpResponse:
        if channel == "api":
            response = JsonResponse(body, status=503)
        else:
            response = HttpResponse(render_to_string("503.html", {"refusal": body}, request=request), status=503)
        response["Retry-After"] = str(retry_after)
        # A full queue is the gate doing its work, not a server error: without this mark Django's
        # handler logs every refusal at ERROR ("Service Unavailable"), thousands of lines a minute
        # under overload, written while the refusal is answered. Refusals are counted instead
        # (metrics, GET /api/queue), and a process logs the gate's closing and opening when it sees them.
        response._has_been_logged = True
        return response


class ApiBackPressureMiddleware(BackPressureMiddleware):
    """POST /api/jobs. Its refusal is JSON and needs no session, user or CSRF token: it goes first."""

    channels = ("api",)


class FormBackPressureMiddleware(BackPressureMiddleware):
    """The dashboard's submit form. Its refusal is a page with the user's menu and a CSRF token: it goes last."""

    channels = ("form",)
