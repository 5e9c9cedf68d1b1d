"""Beat jobs: scheduled and user-scheduled jobs, aggregation, lost-job recovery, retention; and their schedules."""
from __future__ import annotations

import json
import logging
from datetime import timedelta

import redis
from celery import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from . import aggregation, services
from .backpressure import BrokerUnavailable, broker_list_names, gauge
from .models import Job, JobMinuteRollup
from .registry import get_kind

logger = logging.getLogger(__name__)

# Periodic tasks jump the queue (Redis serves priority 0 first) and expire rather than pile up
# while no worker is there to run them.
PERIODIC_OPTIONS = {"priority": 0}
# The task a user schedule runs: it submits one job of the kind named in its kwargs.
SCHEDULED_JOB_TASK = "jobs.periodic.submit_scheduled_job"
# Redis hashes of what the periodic work did: events, and refused runs per schedule.
COUNTERS_KEY = "jobs:periodic"
REFUSED_BY_SCHEDULE_KEY = "jobs:schedules:refused"


def count_event(event: str, n: int = 1, *, schedule: str | None = None) -> None:
    """Add to the periodic counters; a counter lost with Redis is only a number, the log keeps the line."""
    if not n:
        return
    try:
        pipe = gauge.redis.pipeline(transaction=False)
        pipe.hincrby(COUNTERS_KEY, event, n)
        if schedule is not None:
            pipe.hincrby(REFUSED_BY_SCHEDULE_KEY, schedule, n)
        pipe.execute()
    except redis.RedisError:
        logger.warning("could not count periodic event %s", event)


@shared_task(name="jobs.periodic.publish_due_jobs", ignore_result=True)
def publish_due_jobs() -> int:
    """Publish jobs whose run_at has come (scheduled runs live in the database, not as ETA messages)."""
    count = services.jobs_publish_due()
    if count:
        logger.info("published due jobs count=%s", count)
    return count


def submit_for_schedule(*, schedule_name: str, kind: str, params: dict | None, owner: str | None,
                        run_id: str | None) -> str:
    """Submit one run of a user schedule through the submit service, unless back pressure refuses it.

    A refused or invalid run is logged and counted, never dropped silently. `run_id` (the
    beat message's id) is the idempotency key, so that a redelivered message is one job.
    """
    job_kind = get_kind(kind)
    if job_kind is None:
        logger.error("scheduled run skipped: unknown job kind schedule=%r kind=%r", schedule_name, kind)
        count_event("schedule_invalid")
        return "invalid"
    user = None
    if owner:
        user = get_user_model().objects.filter(username=owner, is_active=True).first()
        if user is None:
            logger.error("scheduled run skipped: owner %r is not an active user schedule=%r", owner, schedule_name)
            count_event("schedule_invalid")
            return "invalid"
    if not job_kind.inline:
        try:
            refusal = gauge.snapshot().refusal_for(job_kind.queue)
            reason = None if refusal is None else (
                f"queue {refusal.name} full: depth {refusal.depth}, limit {refusal.limit}")
        except BrokerUnavailable as exc:
            reason = f"broker unavailable: {exc}"
        if reason is not None:
            logger.warning("scheduled run refused schedule=%r kind=%s reason=%r", schedule_name, kind, reason)
            count_event("schedule_refused", schedule=schedule_name or kind)
            return "refused"
    try:
        outcome = services.job_submit(
            user=user, kind=kind, params=params or {}, schedule_name=schedule_name[:200],
            idempotency_key=f"schedule:{run_id}" if run_id else None,
        )
    except services.JobInputError as exc:
        logger.error("scheduled run skipped: invalid parameters schedule=%r kind=%s error=%s", schedule_name, kind,
                     exc)
        count_event("schedule_invalid")
        return "invalid"
    count_event("schedule_submitted")
    return f"submitted {outcome.job.id}"


@shared_task(name=SCHEDULED_JOB_TASK, bind=True, ignore_result=True)
def submit_scheduled_job(self, kind: str, params: dict | None = None, owner: str | None = None) -> str:
    # django-celery-beat names the schedule in a header of every message it sends; a worker puts
    # message headers on the request, an eager apply() keeps them under `headers`.
    schedule_name = (getattr(self.request, "periodic_task_name", None)
                     or (self.request.headers or {}).get("periodic_task_name") or "")
    return submit_for_schedule(schedule_name=schedule_name, kind=kind, params=params, owner=owner,
                               run_id=self.request.id)


@shared_task(name="jobs.periodic.aggregate_job_stats", ignore_result=True)
def aggregate_job_stats() -> int:
    return aggregation.aggregate_jobs().jobs


def broker_message_ids(queues: list[str]) -> set[str] | None:
    """Ids of the task messages the broker holds (ready or delivered but unacknowledged).

    None when the broker cannot be read this way (RabbitMQ): every stale job is then
    republished, and the duplicates are dropped at claim.
    """
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://", "redis+socket://")):
        return None
    client = gauge.broker_redis
    pipe = client.pipeline(transaction=False)
    for q in queues:
        for name in broker_list_names(q):
            pipe.lrange(name, 0, -1)
    pipe.hvals("unacked")
    replies = pipe.execute()
    ids = set()
    for raw in [m for reply in replies[:-1] for m in reply]:
        ids.add(_message_id(raw))
    for raw in replies[-1]:
        try:
            ids.add(_message_id(json.dumps(json.loads(raw)[0])))
        except (ValueError, IndexError, TypeError):
            continue
    ids.discard(None)
    return ids


def _message_id(raw) -> str | None:
    try:
        return json.loads(raw).get("headers", {}).get("id")
    except (ValueError, AttributeError):
        return None


def recover_jobs(*, stale_after: float | None = None, now=None) -> dict[str, int]:
    """Republish queued jobs whose message is gone; retry or fail running jobs whose worker is gone."""
    now = now or timezone.now()
    stale_after = settings.JOBS_RECOVERY_AFTER_SECONDS if stale_after is None else stale_after
    counts = {"republished": 0, "stuck_released": 0, "stuck_retried": 0, "stuck_failed": 0}
    stale = list(Job.objects.stale_queued(now - timedelta(seconds=stale_after)).order_by("published_at")[:5000])
    if stale:
        present = broker_message_ids(sorted({j.queue for j in stale}))
        for job in stale:
            if present is None or str(job.id) not in present:
                counts["republished"] += services.job_republish(job=job)
    for job in Job.objects.running_past_lease(now)[:1000]:
        outcome = services.job_fail_stuck(
            job=job, error="worker lost: the job ran past its time limit without finishing")
        if outcome is None:
            continue
        counts["stuck_released"] += 1
        if outcome.retry_in is None:
            counts["stuck_failed"] += 1
        else:
            # The dead worker's message comes back only after the visibility timeout: send a new
            # one now. Whichever arrives second is dropped at claim.
            services.job_republish(job=job)
            counts["stuck_retried"] += 1
    if any(counts.values()):
        logger.warning("recovery republished=%(republished)s stuck_retried=%(stuck_retried)s "
                       "stuck_failed=%(stuck_failed)s", counts)
        for event in ("republished", "stuck_retried", "stuck_failed"):
            count_event(event, counts[event])
    return counts


@shared_task(name="jobs.periodic.recover_lost_jobs", ignore_result=True)
def recover_lost_jobs() -> dict[str, int]:
    return recover_jobs()


def delete_expired(*, days: int | None = None, batch_size: int = 1000) -> int:
    """Delete finished jobs (and their results) older than the retention, batch by batch.

    Hourly rollups are kept: they are what remains of the deleted jobs.
    """
    days = settings.JOBS_RETENTION_DAYS if days is None else days
    cutoff = timezone.now() - timedelta(days=days)
    deleted = 0
    while True:
        ids = list(Job.objects.finished().filter(finished_at__lt=cutoff).values_list("id", flat=True)[:batch_size])
        if not ids:
            break
        with transaction.atomic():
            TaskResult.objects.filter(task_id__in=[str(i) for i in ids]).delete()
            Job.objects.filter(id__in=ids).delete()
        deleted += len(ids)
    TaskResult.objects.filter(date_done__lt=cutoff).delete()  # results of non-job tasks
    JobMinuteRollup.objects.filter(period_start__lt=cutoff).delete()
    if deleted:
        logger.info("retention deleted=%s older_than_days=%s", deleted, days)
    return deleted


@shared_task(name="jobs.periodic.apply_retention", ignore_result=True)
def apply_retention() -> int:
    return delete_expired()


# name -> (task, every N seconds or a crontab dict, why this period)
PLATFORM_SCHEDULES = {
    "Publish due scheduled jobs": (
        "jobs.periodic.publish_due_jobs", {"every": 2},
        "run_at is honoured within about two seconds; each run is one indexed query when nothing is due",
    ),
    "Aggregate job statistics": (
        "jobs.periodic.aggregate_job_stats", {"every": 30},
        "the stats are per minute and settle 30 seconds behind the clock anyway; a run with nothing new "
        "is two indexed reads",
    ),
    "Recover lost jobs": (
        "jobs.periodic.recover_lost_jobs", {"every": 30},
        "a lost message is found within a minute of going stale, at the cost of one broker scan per run",
    ),
    "Apply retention": (
        "jobs.periodic.apply_retention", {"crontab": {"minute": "17", "hour": "3"}},
        "once a day, at a quiet hour: retention is measured in days",
    ),
    "Celery backend cleanup": (
        "celery.backend_cleanup", {"crontab": {"minute": "27", "hour": "3"}},
        "Celery's own expired-result cleanup, daily as Celery intends",
    ),
}


def install_schedules() -> list[tuple[str, bool]]:
    """Create the platform's periodic tasks that do not exist yet; run by `make run`, safe to run again."""
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

    installed = []
    for name, (task, when, why) in PLATFORM_SCHEDULES.items():
        defaults = {"task": task, "description": f"Platform schedule. Period: {why}.", **PERIODIC_OPTIONS}
        if "every" in when:
            interval, _ = IntervalSchedule.objects.get_or_create(every=when["every"], period=IntervalSchedule.SECONDS)
            defaults.update(interval=interval, crontab=None, expire_seconds=max(10, when["every"] * 5))
        else:
            crontab, _ = CrontabSchedule.objects.get_or_create(
                **when["crontab"], day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
            )
            defaults.update(crontab=crontab, interval=None)
        # Created once: what staff later change in the admin (period, enabled) is theirs to keep.
        _, created = PeriodicTask.objects.get_or_create(name=name, defaults=defaults)
        installed.append((name, created))
    return installed
