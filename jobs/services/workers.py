"""The worker registry and the leases it keeps: a worker's heartbeat, its clean stop, and taking back the jobs
of workers that stopped beating."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from ..infra import counters
from ..models import Job, Worker
from .runs import job_run_lost
from .submit import jobs_publish_due

logger = logging.getLogger(__name__)


def worker_heartbeat(*, name: str, pid: int, queues: list[str], concurrency: int, running_ids: list[str],
                     held_ids: list[str]) -> int:
    """`name` is alive: renew the leases of the jobs it runs and record what it holds. Returns the leases renewed.

    Only runs this worker claimed are renewed: a duplicate message it holds for a job that another
    worker runs leaves that job's lease alone.
    """
    now = timezone.now()
    renewed = 0
    if running_ids:
        renewed = Job.objects.run_by(name, running_ids).update(
            lease_expires_at=now + timedelta(seconds=settings.JOBS_LEASE_SECONDS))
    state = dict(queues=sorted(queues), concurrency=concurrency, running=len(running_ids),
                 holding=list(held_ids)[:1000], last_seen_at=now, stopped_at=None)
    # One UPDATE per beat; a new process under the same name starts a new row's life.
    if not Worker.objects.filter(name=name, pid=pid).update(**state):
        Worker.objects.update_or_create(name=name, defaults=dict(pid=pid, started_at=now, **state))
    return renewed


def worker_beat(*, name: str, pid: int, queues: list[str], concurrency: int, running_ids: list[str],
                held_ids: list[str], reclaim: bool) -> None:
    """One heartbeat of a worker: renew its leases, then, like every live worker, take back the jobs of dead ones
    (`reclaim`: once this worker has reached the database for a whole lease) and publish a batch of the
    jobs waiting for a message, so that neither waits for beat."""
    worker_heartbeat(name=name, pid=pid, queues=queues, concurrency=concurrency, running_ids=running_ids,
                     held_ids=held_ids)
    if reclaim:
        jobs_reclaim_lapsed()
    jobs_publish_due(limit=100)


def worker_stopped(*, name: str, pid: int) -> None:
    """A clean shutdown: the worker is no longer online (its runs ended or were handed back before this)."""
    Worker.objects.filter(name=name, pid=pid).update(stopped_at=timezone.now(), running=0, holding=[])


def held_by_live_workers(now: datetime | None = None) -> set[str]:
    """Ids of the task messages that workers alive now said they hold."""
    held: set[str] = set()
    for ids in Worker.objects.alive(now, within=settings.JOBS_LEASE_SECONDS).values_list("holding", flat=True):
        held.update(ids or [])
    return held


def jobs_reclaim_lapsed(*, now: datetime | None = None, limit: int = 1000) -> dict[str, int]:
    """Take back running jobs whose lease lapsed (their worker stopped beating): retry them at once, or fail them
    with no attempt left. Safe to run in every worker at once: each job is taken back once."""
    now = now or timezone.now()
    counts = {"stuck_retried": 0, "stuck_failed": 0}
    for job_id, worker in Job.objects.running_past_lease(now).values_list("pk", "worker")[:limit]:
        outcome = job_run_lost(job_id=str(job_id), lapsed_before=now,
                               error=f"worker lost: {worker or 'its worker'} stopped renewing the lease")
        if outcome is not None:
            counts["stuck_retried" if outcome.retry_in is not None else "stuck_failed"] += 1
    if any(counts.values()):
        logger.warning("reclaimed jobs whose lease lapsed retried=%(stuck_retried)s failed=%(stuck_failed)s", counts)
        for event, n in counts.items():
            counters.count_event(event, n)
    return counts
