"""Beat jobs: publishing scheduled jobs, recovering lost ones, retention; and installing their schedules."""
from __future__ import annotations

import json
import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from . import services
from .backpressure import broker_list_names, gauge
from .models import Job

logger = logging.getLogger(__name__)

# Periodic tasks jump the queue (Redis serves priority 0 first) and expire rather than pile up
# while no worker is there to run them.
PERIODIC_OPTIONS = {"priority": 0}


@shared_task(name="jobs.periodic.publish_due_jobs", ignore_result=True)
def publish_due_jobs() -> int:
    """Publish jobs whose run_at has come (scheduled runs live in the database, not as ETA messages)."""
    count = services.jobs_publish_due()
    if count:
        logger.info("published due jobs count=%s", count)
    return count


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
    counts = {"republished": 0, "stuck_released": 0}
    stale = list(Job.objects.stale_queued(now - timedelta(seconds=stale_after)).order_by("published_at")[:5000])
    if stale:
        present = broker_message_ids(sorted({j.queue for j in stale}))
        for job in stale:
            if present is None or str(job.id) not in present:
                counts["republished"] += services.job_republish(job=job)
    for job in Job.objects.running_past_lease(now)[:1000]:
        if services.job_fail_stuck(job=job, error="worker lost: the job ran past its time limit without finishing"):
            counts["stuck_released"] += 1
    if any(counts.values()):
        logger.warning("recovery republished=%(republished)s stuck_released=%(stuck_released)s", counts)
    return counts


@shared_task(name="jobs.periodic.recover_lost_jobs", ignore_result=True)
def recover_lost_jobs() -> dict[str, int]:
    return recover_jobs()


def delete_expired(*, days: int | None = None, batch_size: int = 1000) -> int:
    """Delete finished jobs (and their results) older than the retention, batch by batch."""
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
