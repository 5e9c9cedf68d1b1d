"""Reads: job lists and lookups scoped to the user, for views, the API and the admin."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import F, Q, QuerySet, TextField, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Concat
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_results.models import TaskResult

from .aggregation import WATERMARK, Summary
from .infra import broker, counters
from .models import (ApiToken, Follow, Job, JobError, JobHourRollup, JobMinuteRollup, RollupWatermark, TimelineEntry,
                     Worker)
from .models import AuditEntry, QueuePause
from .services import admission, schedules
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


def job_by_id(*, job_id) -> Job | None:
    """Any job by its id, with its failed attempts (for Django's TaskResult, which has no owner to check)."""
    try:
        return Job.objects.prefetch_related("errors").filter(pk=job_id).first()
    except (ValueError, ValidationError):
        return None


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
    # A search by parameter or error text read the jobs down to here, and "older" continues below (None: it
    # read to the end, or it was no such search).
    searched_to: datetime | None = None


def job_cursor(job: Job) -> str:
    """A position in the (created_at, id) order, exact to the microsecond."""
    return _cursor(job.created_at, job.id)


def _cursor(at: datetime, pk: uuid.UUID) -> str:
    return f"{(at - _EPOCH) // timedelta(microseconds=1)}.{pk.hex}"


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


# A search by parameter or error text reads at most this many of the newest jobs (under the page's other filters)
# for each page: no index finds a substring, and this bounds what a page costs at any table size (bench_dashboard).
# When fewer matches than a page turn up, "older" carries the search on below the jobs it read.
SEARCH_SCAN_ROWS = 10_000


def job_text_filter(*, param: str | None = None, error: str | None = None) -> Q | None:
    """The jobs whose parameters match `param` ("key=value": that key's value, exactly; anything else: a
    substring of the parameters' JSON, any case) and whose error holds `error` (any case); None for neither."""
    condition = Q()
    if param:
        key, sep, value = param.partition("=")
        if sep and key.strip():
            condition &= Q(param_value=value.strip())
        else:
            # JSON text escapes what is not ASCII (SQLite stores it so): look for either spelling.
            escaped = json.dumps(param)[1:-1]
            condition &= Q(params_text__icontains=param) | Q(params_text__icontains=escaped)
    if error:
        condition &= Q(error__icontains=error)
    return condition if condition else None


def _with_text_fields(qs: QuerySet, param: str | None) -> QuerySet:
    """The annotations job_text_filter's conditions name."""
    key, sep, _ = (param or "").partition("=")
    if sep and key.strip():
        # One key, taken whole (a key holding "__" is not a path), compared as text: 5000 and "5000" alike.
        return qs.alias(param_value=Cast(KeyTextTransform(key.strip(), "params"), output_field=TextField()))
    return qs.alias(params_text=Cast("params", output_field=TextField())) if param else qs


def job_page(*, user, status: str | None = None, kind: str | None = None, id_prefix: str | None = None,
             param: str | None = None, error: str | None = None,
             older_than: str | None = None, newer_than: str | None = None,
             size: int = DASHBOARD_PAGE_SIZE) -> JobPage:
    """A page of the user's jobs, newest first, by keyset on (created_at, id): no OFFSET, no COUNT.

    A search (an id prefix of SEARCH_MIN_DIGITS hex digits or more) gives one page of matches. A search by
    parameter or error text reads SEARCH_SCAN_ROWS jobs at most, and says how far it read.
    """
    text = job_text_filter(param=param, error=error)
    if id_prefix:
        return JobPage(_job_search(user=user, status=status, kind=kind, id_prefix=id_prefix, size=size, text=text,
                                   param=param), None, None)
    qs = job_list(user=user, status=status, kind=kind).only(*JOB_ROW_FIELDS)
    if text is not None:
        return _job_text_search(qs, text=text, param=param, older_than=older_than, size=size)
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


def _job_text_search(qs: QuerySet, *, text: Q, param: str | None, older_than: str | None, size: int) -> JobPage:
    """Matches among the next SEARCH_SCAN_ROWS jobs of `qs` below the cursor, as a range of created_at that the
    page's index serves: each page reads that many rows at most, however rare the matches."""
    after = _parse_cursor(older_than)
    window = qs
    if after is not None:
        at, pk = after
        window = window.filter(Q(created_at__lte=at), Q(created_at__lt=at) | Q(id__lt=pk))
    # Only created_at: the index holds it, so finding the window's end reads no row of the table.
    edge = list(window.order_by("-created_at").values_list("created_at", flat=True)[SEARCH_SCAN_ROWS - 1:
                                                                                    SEARCH_SCAN_ROWS])
    scan = window.filter(created_at__gte=edge[0]) if edge else window
    rows = list(_with_text_fields(scan, param).filter(text)[: size + 1])
    jobs = rows[:size]
    if len(rows) > size:
        return JobPage(jobs, job_cursor(jobs[-1]), None)
    if not edge:
        return JobPage(jobs, None, None)
    # The window is read, down to its oldest instant and all of that instant's jobs: the next page starts below it
    # (the instant's smallest id puts every job of the instant above the cursor).
    smallest = window.filter(created_at=edge[0]).order_by("id").values_list("id", flat=True).first()
    return JobPage(jobs, _cursor(edge[0], smallest), None, searched_to=edge[0])


def _job_search(*, user, status, kind, id_prefix: str, size: int, text: Q | None = None,
                param: str | None = None) -> list[Job]:
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
    if text is not None:
        qs = _with_text_fields(qs, param).filter(text)
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
    broker: str = ""  # which broker: "redis", "rabbitmq" or "sqs" (whose depths are approximate)
    pauses: tuple[QueuePause, ...] = ()  # the paused queues, with who paused them and when

    @property
    def paused(self) -> dict[str, QueuePause]:
        return {pause.queue: pause for pause in self.pauses}

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
    """Depths, limits and gates of every queue from the broker; with `workers`, what the database says besides:
    the workers online and the paused queues."""
    try:
        snap, error = admission.queue_snapshot(max_age=max_age), ""
    except admission.BrokerUnavailable as exc:
        snap, error = None, str(exc)
    return QueueOverview(snap, error, workers_online() if workers else [], broker.broker_kind(),
                         tuple(queue_pauses().values()) if workers else ())


def queue_pauses() -> dict[str, QueuePause]:
    """The paused queues by name, with who paused them."""
    return {pause.queue: pause for pause in QueuePause.objects.select_related("paused_by")}


# --- Operations ----------------------------------------------------------------------------

# What each operator's action needs (Django permissions: given to users directly or through groups).
OPERATOR_PERMISSIONS = {"pause": "jobs.pause_queue", "bulk_retry": "jobs.bulk_retry",
                        "bulk_cancel": "jobs.bulk_cancel", "view_audit": "jobs.view_audit"}


def operator_permissions(*, user) -> dict[str, bool]:
    """Which operators' actions the user may take (two queries at most, then kept on the user for the request)."""
    return {name: user.has_perm(permission) for name, permission in OPERATOR_PERMISSIONS.items()}


def audit_entries(*, action: str | None = None, actor: str | None = None, target: str | None = None,
                  ) -> QuerySet[AuditEntry]:
    """The audit log, newest first, optionally of one action, one actor (by username) or one target."""
    entries = AuditEntry.objects.all()
    if action:
        entries = entries.filter(action=action)
    if actor:
        entries = entries.filter(actor_name=actor)
    if target:
        entries = entries.filter(target=target)
    return entries.order_by("-at", "-id")


AUDIT_PAGE_SIZE = 50


def audit_page(*, action: str | None = None, actor: str | None = None, target: str | None = None,
               before: int | None = None, size: int = AUDIT_PAGE_SIZE) -> tuple[list[AuditEntry], int | None]:
    """A page of the audit log (entries older than the entry `before`, by id), and the cursor to the next page."""
    entries = audit_entries(action=action, actor=actor, target=target).order_by("-id")
    if before is not None:
        entries = entries.filter(id__lt=before)
    rows = list(entries[: size + 1])
    return rows[:size], rows[size - 1].id if len(rows) > size else None


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


# --- User schedules -------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleInfo:
    """A user schedule as the schedules page and the API show it."""

    task: PeriodicTask
    kind: str
    params: dict
    owner: str | None  # who its jobs run as
    catch_up: str
    every_seconds: float | None  # an interval schedule's period
    crontab: str | None  # a crontab schedule's five fields
    crontab_timezone: str | None  # the time zone its crontab is read in
    last_run_at: datetime | None
    next_run_at: datetime | None
    missed_runs: int
    refused_runs: int
    may_manage: bool

    @property
    def id(self) -> int:
        return self.task.pk

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def enabled(self) -> bool:
        return self.task.enabled

    @property
    def overdue(self) -> bool:
        """Due a while ago and not sent: no beat is running (or it cannot reach the database)."""
        return self.next_run_at is not None and timezone.now() - self.next_run_at > SCHEDULE_OVERDUE_AFTER


# Beat looks at the schedules at least every few seconds: a run later than this has not been sent.
SCHEDULE_OVERDUE_AFTER = timedelta(seconds=30)


def _schedule_rows(*, user, pk: int | None = None) -> list[tuple[PeriodicTask, schedules.ScheduledJob]]:
    qs = PeriodicTask.objects.filter(task=schedules.SCHEDULED_JOB_TASK).select_related(
        "interval", "crontab", "clocked", "solar").order_by("name")
    if pk is not None:
        qs = qs.filter(pk=pk)
    if not user.is_staff:
        # kwargs is JSON text: narrow in the database, decide on the decoded value.
        qs = qs.filter(kwargs__contains=json.dumps(user.get_username()))
    rows = []
    for task in qs:
        job = schedules.scheduled_job(task)
        if job is not None and schedules.may_see_schedule(user, task, job):
            rows.append((task, job))
    return rows


def _schedule_info(task: PeriodicTask, job, counts: dict, user, now: datetime) -> ScheduleInfo:
    last = schedules.beat_last_run(task, counts.get("sent"))
    if last is None and counts.get("sent") is not None:
        last = datetime.fromtimestamp(counts["sent"], dt_timezone.utc)  # paused since: the last send is still news
    crontab = task.crontab if task.crontab_id else None
    every = (timedelta(**{task.interval.period: task.interval.every}).total_seconds() if task.interval_id else None)
    return ScheduleInfo(
        task=task, kind=job.kind, params=job.params, owner=job.owner, catch_up=job.catch_up, every_seconds=every,
        crontab=" ".join(getattr(crontab, f) for f in schedules.CRONTAB_FIELDS) if crontab else None,
        crontab_timezone=str(crontab.timezone) if crontab else None,
        last_run_at=last,
        next_run_at=schedules.next_run_at(task, last_run=schedules.beat_last_run(task, counts.get("sent")), now=now),
        missed_runs=counts.get("missed", 0), refused_runs=counts.get("refused", 0),
        may_manage=schedules.may_manage_schedule(user, task, job),
    )


def schedule_list(*, user, now: datetime | None = None) -> list[ScheduleInfo]:
    """The user's schedules (staff: every user schedule), by name, with their last and next runs."""
    rows = _schedule_rows(user=user)
    counts = counters.schedule_counts([task.name for task, _ in rows])
    now = now or timezone.now()
    return [_schedule_info(task, job, counts[task.name], user, now) for task, job in rows]


def schedule_get(*, user, schedule_id) -> ScheduleInfo | None:
    """One schedule if the user may see it; None otherwise (another user's schedule does not exist for them)."""
    try:
        pk = int(schedule_id)
    except (TypeError, ValueError):
        return None
    rows = _schedule_rows(user=user, pk=pk) if 0 < pk < 2**63 else []
    if not rows:
        return None
    task, job = rows[0]
    return _schedule_info(task, job, counters.schedule_counts([task.name])[task.name], user, timezone.now())


@dataclass(frozen=True)
class ScheduleRuns:
    """A schedule's recent runs: the jobs it submitted, and the runs that made no job."""

    jobs: list[Job]  # newest first
    refused: list[dict]  # {at, reason}: back pressure refused the run
    invalid: list[dict]  # {at, reason}: its kind, parameters or owner no longer fit
    missed: list[dict]  # {at, missed, since, until, policy}: no beat ran at its times


SCHEDULE_RUNS_SHOWN = 50
SCHEDULE_RUN_FIELDS = ("id", "kind", "status", "owner_id", "idempotency_key", "error", "created_at", "started_at",
                       "finished_at", "attempts", "attempt_limit", "progress_done", "progress_total")


def schedule_runs(*, user, schedule: ScheduleInfo, limit: int = SCHEDULE_RUNS_SHOWN) -> ScheduleRuns:
    """The jobs the schedule submitted (by its name), newest first, and its refused, invalid and missed runs."""
    jobs = Job.objects.filter(schedule_name=schedule.name[:200]).only(*SCHEDULE_RUN_FIELDS)
    if not user.is_staff:
        # JobQuerySet.visible_to's rule, put to SQLite as an expression (`owner_id + 0`) that no index serves, so
        # that the schedule's name drives the query rather than the owner's (maybe half a million) jobs.
        jobs = jobs.alias(owner_key=F("owner_id") + 0).filter(owner_key=user.pk)
    log = counters.schedule_log(schedule.name)

    def when(event: dict, *keys: str) -> dict:
        return {**event, **{k: datetime.fromtimestamp(event[k], dt_timezone.utc) for k in keys if k in event}}

    return ScheduleRuns(
        jobs=list(jobs.order_by("-created_at", "-id")[:limit]),
        refused=[when(e, "at") for e in log if e.get("event") == "refused"],
        invalid=[when(e, "at") for e in log if e.get("event") == "invalid"],
        missed=[when(e, "at", "since", "until") for e in log if e.get("event") == "missed"],
    )


def schedule_run_trigger(job: Job) -> str:
    """"beat" for a run beat sent, "run now" for one a person asked for."""
    return "beat" if (job.idempotency_key or "").startswith("schedule:") else "run now"


# --- Timelines (the fan-out kind) ------------------------------------------------------

TIMELINE_SHOWN = 50
FOLLOWERS_SHOWN = 20


def timeline_entries(*, reader_id: int, limit: int = TIMELINE_SHOWN) -> list[TimelineEntry]:
    """What one reader's timeline shows, newest first."""
    return list(TimelineEntry.objects.filter(reader_id=reader_id).order_by("-created_at", "-id")[:limit])


def may_read_timeline(*, user, reader_id: int) -> bool:
    """Your own timeline, your followers' (where your posts go), and anyone's for staff."""
    return (user.is_staff or reader_id == user.pk
            or Follow.objects.filter(author_id=user.pk, follower_id=reader_id).exists())


@dataclass(frozen=True)
class Followers:
    count: int
    first: list[int]  # the first FOLLOWERS_SHOWN follower ids


def followers_of(*, author_id: int, limit: int = FOLLOWERS_SHOWN) -> Followers:
    follows = Follow.objects.filter(author_id=author_id)
    return Followers(follows.count(), list(follows.order_by("follower_id").values_list("follower_id", flat=True)[:limit]))


@dataclass(frozen=True)
class PostDelivery:
    """How far a post's fan-out has gone: followers' timelines written, of how many."""

    job: Job
    author_id: int
    delivered: int
    followers: int

    @property
    def percent(self) -> int:
        if self.job.status == Job.Status.SUCCEEDED:
            return 100
        return min(100, int(100 * self.delivered / self.followers)) if self.followers else 0


def post_delivery(*, user, post_id) -> PostDelivery | None:
    """A fan-out post's delivery, for the user who posted it, its author, or staff; None otherwise.

    Read from the job's progress (written by each batch, at most once a second): counting the timeline rows of
    one post would read the whole timeline table, which no index orders by post."""
    try:
        pk = uuid.UUID(str(post_id))
    except ValueError:
        return None
    job = Job.objects.filter(pk=pk, kind="fan_out").first()
    if job is None:
        return None
    author_id = job.params.get("author_id")
    if not (user.is_staff or job.owner_id == user.pk or author_id == user.pk):
        return None
    followers = job.progress_total or Follow.objects.filter(author_id=author_id).count()
    return PostDelivery(job, author_id, job.progress_done, followers)


def latest_post_of(*, user):
    """The id of the newest post the user wrote (on their own timeline), or None."""
    return (TimelineEntry.objects.filter(reader_id=user.pk, author_id=user.pk).order_by("-created_at", "-id")
            .values_list("post_id", flat=True).first())


def active_users() -> QuerySet:
    User = get_user_model()
    return User.objects.filter(is_active=True).order_by(User.USERNAME_FIELD)


def active_usernames() -> list[str]:
    return [user.get_username() for user in active_users()]


def usernames(ids) -> dict[int, str]:
    """The usernames of those of `ids` that are users (a demo follower need not be)."""
    ids = [i for i in ids if 0 < i < 2**63]
    return {user.pk: user.get_username() for user in get_user_model().objects.filter(pk__in=ids)} if ids else {}
