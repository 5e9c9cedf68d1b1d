"""Housekeeping writes: republish jobs whose message was lost, release jobs whose worker is gone, retention."""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from ..infra import counters
from ..infra.broker import held_message_ids
from ..models import Job, JobMinuteRollup
from .runs import job_run_failed
from .submit import job_republish

logger = logging.getLogger(__name__)


def recover_jobs(*, stale_after: float | None = None, now=None) -> dict[str, int]:
    """Republish queued jobs whose message is gone; retry or fail running jobs whose worker is gone."""
    now = now or timezone.now()
    stale_after = settings.JOBS_RECOVERY_AFTER_SECONDS if stale_after is None else stale_after
    counts = {"republished": 0, "stuck_released": 0, "stuck_retried": 0, "stuck_failed": 0}
    stale = list(Job.objects.stale_queued(now - timedelta(seconds=stale_after)).order_by("published_at")[:5000])
    if stale:
        present = held_message_ids(sorted({j.queue for j in stale}))
        for job in stale:
            # Where the broker cannot be read (RabbitMQ), every stale job is republished: duplicates drop at claim.
            if present is None or str(job.id) not in present:
                counts["republished"] += job_republish(job=job)
    for job in Job.objects.running_past_lease(now)[:1000]:
        outcome = job_run_failed(job_id=str(job.id), token=None, retryable=True,
                                 error="worker lost: the job ran past its time limit without finishing")
        if outcome is None:
            continue
        counts["stuck_released"] += 1
        if outcome.retry_in is None:
            counts["stuck_failed"] += 1
        else:
            # The dead worker's message comes back only after the visibility timeout: send a new
            # one now. Whichever arrives second is dropped at claim.
            job.refresh_from_db()
            job_republish(job=job)
            counts["stuck_retried"] += 1
    if any(counts.values()):
        logger.warning("recovery republished=%(republished)s stuck_retried=%(stuck_retried)s "
                       "stuck_failed=%(stuck_failed)s", counts)
        for event in ("republished", "stuck_retried", "stuck_failed"):
            counters.count_event(event, counts[event])
    return counts


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
