"""Reads: job lists and lookups scoped to the user, for views, the API and the admin."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings
from django.db import connection
from django.db.models import F, Q, QuerySet, Value
from django.db.models.functions import Concat
from django.utils import timezone
from django_celery_results.models import TaskResult

from .aggregation import WATERMARK, Summary
from .infra import broker, counters
from .models import ApiToken, Job, JobError, JobHourRollup, JobMinuteRollup, RollupWatermark, Worker
from .services import admission
from .services.admission import Snapshot


def job_list(*, user, status: str | None = None, kind: str | None = None) -> QuerySet[Job]:
    """The user's jobs (staff: everyone's), newest first, optionally filtered."""
    qs = Job.objects.visible_to(user).select_related("owner")
    if status:
        qs = qs.filter(status=status)
    if kind:
        qs = qs.filter(kind=kind)
    return qs.order_by("-created_at", "-id")


def job_get(*, user, job_id) -> Job | None:
    """One job if the user may see it; None otherwise (another user's job does not exist for them)."""
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        return None
    return Job.objects.visible_to(user).select_related("owner").filter(pk=pk).first()


def job_result(*, job: Job) -> TaskResult | None:
    return TaskResult.objects.filter(task_id=str(job.id)).first()


def job_result_value(*, job: Job):
    """The stored result of a job, decoded from its TaskResult; None when there is none."""
    result = job_result(job=job)
    if result is None or result.result is None:
        return None
    return broker.decode_result(result)


def api_tokens_of(*, user) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user)


# --- The dashboard --------------------------------------------------------------------

DASHBOARD_PAGE_SIZE = 50
# Counts per status stop here: exact counts of a million rows cost a scan on every page.
STATUS_COUNT_CAP = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


# What a row of the job list shows: the other columns (parameters above all) are not read.
JOB_ROW_FIELDS = ("id", "kind", "status", "owner__username", "progress_done", "progress_total", "error",
                  "created_at", "attempts", "attempt_limit")


@dataclass(frozen=True)
class JobPage:
    """One page of a job list, with keyset cursors to its neighbours (None at either end)."""

    jobs: list[Job]
    older: str | None
    newer: str | None


def job_cursor(job: Job) -> str:
    """A position in the (created_at, id) order, exact to the microsecond."""
    micros = (job.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{job.id.hex}"


def _parse_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    micros, _, hex_id = cursor.partition(".")
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(hex=hex_id)
    except (ValueError, OverflowError):
        return None


# Fewer digits than this match a sixteenth of the table or more: too many to be a search.
SEARCH_MIN_DIGITS = 4


def job_id_prefix_range(text: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The ids starting with `text` (hex digits, dashes ignored) as an index-friendly range."""
    digits = text.strip().lower().replace("-", "")
    if not SEARCH_MIN_DIGITS <= len(digits) <= 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return uuid.UUID(hex=digits.ljust(32, "0")), uuid.UUID(hex=digits.ljust(32, "f"))


def job_page(*, user, status: str | None = None, kind: str | None = None, id_prefix: str | None = None,
             older_than: str | None = None, newer_than: str | None = None,
             size: int = DASHBOARD_PAGE_SIZE) -> JobPage:
    """A page of the user's jobs, newest first, by keyset on (created_at, id): no OFFSET, no COUNT.

    A search (an id prefix of SEARCH_MIN_DIGITS hex digits or more) gives one page of matches.
    """
    if id_prefix:
        return JobPage(_job_search(user=user, status=status, kind=kind, id_prefix=id_prefix, size=size), None, None)
    qs = job_list(user=user, status=status, kind=kind).only(*JOB_ROW_FIELDS)
    after, before = _parse_cursor(older_than), _parse_cursor(newer_than)
    if before is not None and after is None:
        at, pk = before
        # `created_at >= at` alone is a range the index serves; the OR only settles ties.
        rows = list(qs.filter(Q(created_at__gte=at), Q(created_at__gt=at) | Q(id__gt=pk))
                    .order_by("created_at", "id")[: size + 1])
        has_newer = len(rows) > size
        jobs = rows[:size][::-1]
        return JobPage(jobs, job_cursor(jobs[-1]) if jobs else None,
                       job_cursor(jobs[0]) if jobs and has_newer else None)
    if after is not None:
        at, pk = after
        qs = qs.filter(Q(created_at__lte=at), Q(created_at__lt=at) | Q(id__lt=pk))
    rows = list(qs[: size + 1])
    jobs = rows[:size]
    return JobPage(jobs, job_cursor(jobs[-1]) if len(rows) > size else None,
                   job_cursor(jobs[0]) if jobs and after is not None else None)


def _job_search(*, user, status, kind, id_prefix: str, size: int) -> list[Job]:
    bounds = job_id_prefix_range(id_prefix)
    if bounds is None:
        return []
    # The id range must drive this query. Without table statistics SQLite would rather walk the
    # owner's or the status's whole index range, so those filters are put to it as expressions
    # (`owner_id + 0`), which no index serves. The rule is JobQuerySet.visible_to's.
    qs = Job.objects.select_related("owner").only(*JOB_ROW_FIELDS).filter(id__range=bounds).alias(
        owner_key=F("owner_id") + 0, status_key=Concat("status", Value("")), kind_key=Concat("kind", Value(""))
    )
    if not user.is_staff:
        qs = qs.filter(owner_key=user.pk)
    if status:
        qs = qs.filter(status_key=status)
    if kind:
        qs = qs.filter(kind_key=kind)
    return list(qs.order_by("-created_at", "-id")[:size])


def job_status_counts_capped(*, user, cap: int = STATUS_COUNT_CAP) -> dict[str, int]:
    """Jobs per status, each counted up to cap + 1 (shown as "1000+").

    One range of the (owner, status) or (status) index per status, read no further than
    cap + 1 entries and without touching the table.
    """
    qs = Job.objects.visible_to(user).order_by().values("status")
    parts, params = [], []
    for i, status in enumerate(Job.Status.values):
        sql, sub_params = qs.filter(status=status)[: cap + 1].query.sql_with_params()
        parts.append(f"SELECT %s, COUNT(*) FROM ({sql}) AS capped_{i}")
        params += [status, *sub_params]
    # One statement for all six: each is a short index range, so the round trips would dominate.
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        counts = dict(cursor.fetchall())
    return {status: counts.get(status, 0) for status in Job.Status.values}


def job_errors(*, job: Job) -> list[JobError]:
    """The job's failed runs, oldest first."""
    return list(job.errors.all())


def api_token_get(*, user, token_id: int) -> ApiToken | None:
    return api_tokens_of(user=user).filter(pk=token_id).first()


@dataclass(frozen=True)
class QueueOverview:
    """The queues as the dashboard, the API and /metrics show them."""

    snapshot: Snapshot | None  # None when the broker does not answer
    broker_error: str
    workers: list[Worker]  # online: their heartbeat is recent

    def workers_per_queue(self) -> dict[str, int]:
        per_queue: dict[str, int] = {}
        for worker in self.workers:
            for queue in worker.queues:
                per_queue[queue] = per_queue.get(queue, 0) + 1
        return per_queue


def workers_online() -> list[Worker]:
    """Workers whose heartbeat came within the lease: the registry, not a broadcast (one indexed read)."""
    return list(Worker.objects.alive(within=settings.JOBS_LEASE_SECONDS).order_by("name"))


def queue_overview(*, max_age: float | None = None, workers: bool = True) -> QueueOverview:
    """Depths, limits and gates of every queue, and the workers online."""
    try:
        snap, error = admission.queue_snapshot(max_age=max_age), ""
    except admission.BrokerUnavailable as exc:
        snap, error = None, str(exc)
    return QueueOverview(snap, error, workers_online() if workers else [])


def submission_counts() -> dict[str, int]:
    return admission.submission_counts()


# --- Statistics, read from the rollups ------------------------------------------------


@dataclass(frozen=True)
class TimingStats:
    mean: float | None
    p50: float | None
    p95: float | None
    max: float | None


@dataclass(frozen=True)
class KindStats:
    kind: str
    succeeded: int
    failed: int
    cancelled: int
    finished: int
    success_rate: float | None  # succeeded / (succeeded + failed)
    wait: TimingStats
    run: TimingStats
    series: list[int]  # jobs finished per period, oldest first


@dataclass(frozen=True)
class JobStats:
    window: str
    step_seconds: int
    periods: list[datetime]  # the start of each period, oldest first
    kinds: list[KindStats]
    overall: KindStats
    counted_through: datetime | None  # every job finished up to here is counted


STATS_WINDOWS = {"hour": ("minute", 60), "day": ("hour", 24)}


def _timing_stats(timing, started: int) -> TimingStats:
    if not started:
        return TimingStats(None, None, None, None)
    return TimingStats(timing.total / started, timing.quantile(0.5), timing.quantile(0.95), timing.max)


def _kind_stats(kind: str, summary, series: list[int]) -> KindStats:
    return KindStats(kind, summary.succeeded, summary.failed, summary.cancelled, summary.finished,
                     summary.success_rate, _timing_stats(summary.wait, summary.started),
                     _timing_stats(summary.run, summary.started), series)


def job_stats(*, window: str = "hour", now: datetime | None = None) -> JobStats:
    """Finished jobs per kind over the last hour (per minute) or day (per hour), from the rollups only."""
    unit, count = STATS_WINDOWS[window]
    model = JobMinuteRollup if unit == "minute" else JobHourRollup
    step = timedelta(minutes=1) if unit == "minute" else timedelta(hours=1)
    now = now or timezone.now()
    current = now.replace(second=0, microsecond=0) if unit == "minute" else now.replace(minute=0, second=0,
                                                                                       microsecond=0)
    periods = [current - step * (count - 1 - i) for i in range(count)]
    index = {start: i for i, start in enumerate(periods)}
    summaries: dict[str, Summary] = {}
    series: dict[str, list[int]] = {}
    overall = Summary()
    for rollup in model.objects.filter(period_start__gte=periods[0], period_start__lte=periods[-1]):
        summary = Summary.of_rollup(rollup)
        summaries.setdefault(rollup.kind, Summary()).merge(summary)
        overall.merge(summary)
        series.setdefault(rollup.kind, [0] * count)[index[rollup.period_start]] += rollup.finished
    totals = [sum(column) for column in zip(*series.values())] if series else [0] * count
    watermark = RollupWatermark.objects.filter(name=WATERMARK).values_list("finished_at", flat=True).first()
    return JobStats(
        window=window,
        step_seconds=int(step.total_seconds()),
        periods=periods,
        kinds=[_kind_stats(kind, summaries[kind], series[kind]) for kind in sorted(summaries)],
        overall=_kind_stats("all", overall, totals),
        counted_through=watermark,
    )


def periodic_counters() -> dict[str, dict[str, int]]:
    """What recovery and user schedules did since Redis started: events, and refused runs per schedule."""
    return counters.event_counts()
