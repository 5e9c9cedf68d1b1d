"""Housekeeping writes: republish jobs whose message was lost, retention."""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from ..infra import counters
from ..infra.broker import broker_kind, broker_started_at, read_depths, ready_message_ids
from ..models import Job, JobMinuteRollup
from .submit import job_republish
from .workers import held_by_live_workers

logger = logging.getLogger(__name__)


def recover_jobs(*, stale_after: float | None = None, now=None) -> dict[str, int]:
    """Republish waiting jobs that no message will wake. (Running jobs whose worker is gone are taken back by the
    live workers' heartbeats: jobs_reclaim_lapsed.)

    A waiting job (queued or retrying, published more than `stale_after` seconds ago, or before
    Redis last started) still has its message when the message is ready in its queue, or held by a
    worker whose heartbeat says so. A message delivered to a worker that died sits in the broker's unacknowledged set until the
    visibility timeout: it does not count, and the job gets a new one (the old, if it comes back,
    is dropped at claim). SQS cannot list its messages: see _lost_on_sqs.
    """
    now = now or timezone.now()
    stale_after = settings.JOBS_RECOVERY_AFTER_SECONDS if stale_after is None else stale_after
    counts = {"republished": 0}
    older_than = now - timedelta(seconds=stale_after)
    restarted_at = broker_started_at()
    if restarted_at is not None and restarted_at > older_than:
        # Redis restarted since: a message sent before then is there only if Redis kept it, which is checked below.
        older_than = restarted_at
    # A paused queue's messages wait in the broker by design (and RabbitMQ's or SQS's cannot be listed).
    stale = list(Job.objects.stale_queued(older_than).not_paused().order_by("published_at")[:5000])
    if stale and broker_kind() == "sqs":
        for job in _lost_on_sqs(stale, now=now, stale_after=stale_after):
            counts["republished"] += job_republish(job=job)
    elif stale:
        ready = ready_message_ids(sorted({j.queue for j in stale}))
        present = None if ready is None else ready | held_by_live_workers(now)
        for job in stale:
            # Where the broker cannot be read (RabbitMQ), every stale job is republished: duplicates drop at claim.
            if present is None or str(job.id) not in present:
                counts["republished"] += job_republish(job=job)
    if counts["republished"]:
        logger.warning("recovery republished=%s", counts["republished"])
        counters.count_event("republished", counts["republished"])
    return counts


def _lost_on_sqs(stale: list[Job], *, now, stale_after: float) -> list[Job]:
    """Of the stale waiting jobs, those whose message SQS may no longer hold. SQS keeps messages, but cannot list
    them: the Job table, the workers' heartbeats and the queues' depths decide.

    A job that a live worker holds has its message. Otherwise, a job whose queue has no message waiting has
    lost it: deleted (a purge, a deleted queue), expired past the queue's retention period, never sent (a
    failed publish), or received by a worker that died (that copy comes back after the visibility timeout,
    and is dropped at claim). A queue with messages waiting may still hold the job's: the job is published
    again only once it has waited a visibility timeout besides, so that a backlog is copied at most once per
    visibility timeout (and a lost message under a backlog that never drains is found all the same).
    """
    held = held_by_live_workers(now)
    depths, _ = read_depths(sorted({job.queue for job in stale}), keys=[])
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", settings.JOBS_VISIBILITY_TIMEOUT)
    long_ago = now - timedelta(seconds=visibility + stale_after)
    return [job for job in stale
            if str(job.id) not in held and (depths[job.queue] == 0 or job.published_at < long_ago)]


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
