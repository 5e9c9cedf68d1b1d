"""Submitting, cancelling and retrying jobs, and (re)publishing their messages: the only place that publishes."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django_celery_results.models import TaskResult
from pydantic import ValidationError

from ..infra import broker, counters, metrics
from ..infra.events import emit
from ..models import Job
from ..registry import JobKind, get_kind
from . import admission, statements, tracking
from .audit import Action, audit_record
from .errors import BrokerUnavailable, IdempotencyConflict, JobInputError, JobStateError, QueueFull
from .runs import run_inline

logger = logging.getLogger(__name__)
S = Job.Status
# The states each action takes a job from (one transition each, for one job or many).
CANCELLABLE = (S.QUEUED, S.RETRYING, S.RUNNING)
RETRYABLE = (S.FAILED, S.CANCELLED)


@dataclass(frozen=True)
class SubmitResult:
    job: Job
    created: bool


def validate_params(kind: JobKind, params) -> dict:
    """Return the kind's parameters as plain JSON, defaults filled in, or raise JobInputError."""
    if not isinstance(params, dict):
        raise JobInputError([{"loc": ["params"], "msg": "must be an object", "type": "type"}])
    try:
        model = kind.params_model.model_validate(params)
    except ValidationError as exc:
        raise JobInputError([{"loc": ["params", *(str(p) for p in e.get("loc", ()))], "msg": e["msg"],
                              "type": e["type"]} for e in exc.errors()]) from None
    return model.model_dump(mode="json")


def job_submit(
    *,
    user,
    kind: str,
    params: dict | None = None,
    idempotency_key: str | None = None,
    priority: int | None = None,
    run_at: datetime | None = None,
    schedule_name: str = "",
    queue: str | None = None,
) -> SubmitResult:
    """Validate, admit (back pressure), record a job and publish it after commit; an inline kind runs now (one
    scheduled for later is queued like any job, and a worker runs it when it is due).

    Raises JobInputError, QueueFull or BrokerUnavailable, with nothing written.
    """
    job_kind = get_kind(kind)
    if job_kind is None:
        raise JobInputError([{"loc": ["kind"], "msg": f"unknown job kind {kind!r}", "type": "unknown_kind"}])
    clean_params = validate_params(job_kind, params or {})
    if priority is not None and not 0 <= priority <= 9:
        raise JobInputError([{"loc": ["priority"], "msg": "must be 0-9", "type": "range"}])
    if run_at is not None:
        try:
            run_at = run_at.astimezone(dt_timezone.utc)  # 0001-01-01T00:00+14:00 is before any UTC time
        except (OverflowError, ValueError):
            raise JobInputError([{"loc": ["run_at"], "msg": "is out of range once in UTC", "type": "range"}]) from None
    queue = queue or job_kind.queue
    if queue not in settings.JOBS_QUEUES:
        raise JobInputError([{"loc": ["queue"], "msg": f"must be one of {settings.JOBS_QUEUES}", "type": "queue"}])
    if idempotency_key is not None:
        existing = Job.objects.filter(owner=user, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _same_submission(existing, kind=job_kind.name, params=clean_params)
    now = timezone.now()
    due = run_at is None or run_at <= now
    inline = job_kind.inline and due
    admission.admit(queue=queue, inline=inline)

    job = Job(
        id=uuid.uuid4(), kind=job_kind.name, params=clean_params, owner=user, queue=queue,
        priority=job_kind.priority if priority is None else priority, idempotency_key=idempotency_key,
        schedule_name=schedule_name, attempt_limit=job_kind.max_attempts, created_at=now, run_at=run_at or now,
        published_at=now if due and not inline else None,
    )
    insert = statements.Insert(job)  # prepared before BEGIN: on SQLite the write lock is taken there
    try:
        with transaction.atomic():
            insert.run()
            if job_kind.on_submit is not None:
                job_kind.on_submit(job, clean_params)
            if due and not inline:
                transaction.on_commit(lambda: _publish(job))
            emit("submitted", job_id=job.id, kind=job.kind, queue=job.queue, attempt=job.attempts,
                 run_at=job.run_at.isoformat())
    except IntegrityError:
        # Two requests raced with the same idempotency key: the other one's job is the job.
        if idempotency_key is None:
            raise
        return _same_submission(Job.objects.get(owner=user, idempotency_key=idempotency_key), kind=job_kind.name,
                                params=clean_params)
    admission.accepted(queue=queue, inline=inline)
    if inline:
        run_inline(job=job, kind=job_kind)
    return SubmitResult(job, created=True)


def _same_submission(job: Job, *, kind: str, params: dict) -> SubmitResult:
    """The job an idempotency key already names, if it was submitted as this one is; else IdempotencyConflict."""
    mismatch = [name for name, same in (("kind", job.kind == kind), ("params", job.params == params)) if not same]
    if mismatch:
        raise IdempotencyConflict(job_id=job.id, mismatch=mismatch)
    return SubmitResult(job, created=False)


def broker_priority(priority: int) -> int:
    """Our 0-9 has 9 the most urgent; Redis serves its priority 0 first."""
    return 9 - priority


def _publish(job: Job, *, ahead: bool = False) -> None:
    """Send the job's message (`ahead`: before every other waiting message of its queue). A failure leaves the
    job queued for recovery to republish."""
    kind = get_kind(job.kind)
    try:
        broker.publish(task_name=kind.task_name if kind else f"jobs.{job.kind}", args=(str(job.id), job.params),
                       task_id=str(job.id), queue=job.queue, priority=broker_priority(9 if ahead else job.priority),
                       headers=metrics.publish_headers())
    except Exception as exc:  # noqa: BLE001 - the database keeps the job; recovery republishes it
        logger.warning("publish failed job=%s kind=%s error=%r; left for recovery", job.id, job.kind, exc)


def jobs_publish_due(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Publish the jobs that wait for a message: queued ones whose run_at has come, retrying ones whose run was
    lost. Safe to run concurrently: each job is marked once."""
    now = now or timezone.now()
    published = 0
    # A paused queue's jobs wait in the database for its resume (its consumers take nothing meanwhile).
    due = list(Job.objects.due(now).not_paused().order_by("run_at")[:limit])
    # Each publish retries a while before it gives up: with the broker down, leave them all due instead.
    if not due or not broker.answers():
        return 0
    for job in due:
        with transaction.atomic():
            marked = Job.objects.filter(pk=job.pk, status__in=S.claimable(), published_at__isnull=True).update(
                published_at=now)
            if marked:
                # A run that was lost or handed back goes ahead of the queue: it had waited its turn already.
                ahead = job.status == S.RETRYING
                transaction.on_commit(lambda job=job, ahead=ahead: _publish(job, ahead=ahead))
                published += 1
    return published


def job_republish(*, job: Job) -> bool:
    """Publish a claimable job's message again (its first was lost). A duplicate is dropped at claim."""
    marked = Job.objects.filter(pk=job.pk, status__in=S.claimable()).update(published_at=timezone.now())
    if marked:
        _publish(job)
        emit("republished", job_id=job.id, kind=job.kind, queue=job.queue, attempt=job.attempts)
    return bool(marked)


@transaction.atomic
def job_cancel(*, job: Job, actor=None) -> Job:
    """Cancel a job that has not finished: a queued one never starts, a running one stops at its next check.

    `actor`: the user who asked, recorded in the audit log (None: the platform itself, not recorded)."""
    if job.tracked:
        job = tracking.tracked_task_cancel(job=job)
    else:
        now = timezone.now()
        was_running = job.status == S.RUNNING
        if not _cancel_update(Job.objects.filter(pk=job.pk), now=now):
            job.refresh_from_db()
            raise JobStateError(f"a {job.status} job cannot be cancelled")
        _after_cancel(job, was_running=was_running)
        job.refresh_from_db()
    if actor is not None:
        audit_record(actor=actor, action=Action.JOB_CANCEL, target=f"job:{job.id}", count=1)
    return job


def jobs_cancel_locked(*, jobs: list[Job]) -> list[Job]:
    """Cancel many jobs as job_cancel does one, in one UPDATE: those whose rows the caller's transaction locked
    and read in a cancellable state. Returns the jobs cancelled."""
    jobs = [job for job in jobs if job.status in CANCELLABLE and not job.tracked]
    if jobs and not _cancel_update(Job.objects.filter(pk__in=[job.pk for job in jobs]), now=timezone.now()):
        return []
    for job in jobs:
        _after_cancel(job, was_running=job.status == S.RUNNING)
    return jobs


def _cancel_update(jobs, *, now: datetime) -> int:
    """The cancel transition, on those of `jobs` still cancellable."""
    return jobs.filter(status__in=CANCELLABLE).update(status=S.CANCELLED, cancelled_at=now, finished_at=now,
                                                      claim_token=None, updated_at=now)


def _after_cancel(job: Job, *, was_running: bool) -> None:
    kind = get_kind(job.kind)
    if was_running and kind is not None and kind.terminable:
        transaction.on_commit(lambda: _stop_run(job))
    emit("cancelled", job_id=job.id, kind=job.kind, queue=job.queue, attempt=job.attempts)


def _stop_run(job: Job) -> None:
    """Ask the worker to stop a cancelled job's run now; without a broker it stops at its next check."""
    try:
        broker.revoke(str(job.id))
    except Exception as exc:  # noqa: BLE001 - the cancel is recorded either way
        logger.warning("could not ask the worker to stop job=%s error=%r; it stops at its next check", job.id, exc)


@transaction.atomic
def job_retry(*, job: Job, actor=None) -> Job:
    """Run a failed or cancelled job again with its original parameters and a fresh attempt budget.

    `actor`: the user who asked, recorded in the audit log (None: the platform itself, not recorded)."""
    if job.tracked:
        job = tracking.tracked_task_retry(job=job)
    else:
        kind = get_kind(job.kind)
        if kind is None:
            raise JobStateError(f"job kind {job.kind!r} no longer exists")
        if not _retry_update(Job.objects.filter(pk=job.pk), kind=kind, now=timezone.now()):
            job.refresh_from_db()
            raise JobStateError(f"a {job.status} job cannot be retried")
        job.refresh_from_db()
        _after_retry([job])
    if actor is not None:
        audit_record(actor=actor, action=Action.JOB_RETRY, target=f"job:{job.id}", count=1)
    return job


def jobs_retry_locked(*, jobs: list[Job]) -> list[Job]:
    """Retry many jobs as job_retry does one, one UPDATE per kind: those whose rows the caller's transaction
    locked and read failed or cancelled (of a kind that still exists). Returns the jobs retried."""
    now = timezone.now()
    retried = []
    by_kind: dict[str, list[Job]] = {}
    for job in jobs:
        if job.status in RETRYABLE and not job.tracked:
            by_kind.setdefault(job.kind, []).append(job)
    for name, of_kind in by_kind.items():
        kind = get_kind(name)
        if kind is not None and _retry_update(Job.objects.filter(pk__in=[job.pk for job in of_kind]), kind=kind,
                                              now=now):
            retried += of_kind
    for job in retried:
        job.status = S.QUEUED
    _after_retry(retried)
    return retried


def _retry_update(jobs, *, kind: JobKind, now: datetime) -> int:
    """The retry transition, on those of `jobs` still failed or cancelled."""
    return jobs.filter(status__in=RETRYABLE).update(
        status=S.QUEUED, attempt_limit=F("attempts") + kind.max_attempts, claim_token=None, error="",
        progress_done=0, progress_total=0, progress_message="", run_at=now, published_at=now, started_at=None,
        finished_at=None, cancelled_at=None, next_attempt_at=None, updated_at=now,
    )


def _after_retry(jobs: list[Job]) -> None:
    if not jobs:
        return
    # A job's one result is the result of its latest run.
    TaskResult.objects.filter(task_id__in=[str(job.id) for job in jobs]).delete()
    transaction.on_commit(lambda: [_publish(job) for job in jobs])
    for job in jobs:
        emit("retried", job_id=job.id, kind=job.kind, queue=job.queue, attempt=job.attempts)


def job_submit_scheduled(*, schedule_name: str, kind: str, params: dict | None, owner: str | None,
                         run_id: str | None) -> str:
    """Submit one run of a user schedule, unless its kind or owner is gone or back pressure refuses it.

    A refused or invalid run is logged and counted, never dropped silently. `run_id` (the beat
    message's id) is the idempotency key, so that a redelivered message is one job.
    """
    user = None
    if owner:
        user = get_user_model().objects.filter(username=owner, is_active=True).first()
        if user is None:
            logger.error("scheduled run skipped: owner %r is not an active user schedule=%r", owner, schedule_name)
            counters.count_event("schedule_invalid")
            _log_unsubmitted_run(schedule_name, "invalid", f"its owner {owner!r} is not an active user")
            return "invalid"
    try:
        outcome = job_submit(user=user, kind=kind, params=params or {}, schedule_name=schedule_name[:200],
                             idempotency_key=f"schedule:{run_id}" if run_id else None)
    except JobInputError as exc:
        logger.error("scheduled run skipped: invalid schedule=%r kind=%r error=%s", schedule_name, kind, exc)
        counters.count_event("schedule_invalid")
        _log_unsubmitted_run(schedule_name, "invalid", str(exc))
        return "invalid"
    except (QueueFull, BrokerUnavailable) as exc:
        logger.warning("scheduled run refused schedule=%r kind=%s reason=%r", schedule_name, kind, str(exc))
        counters.count_event("schedule_refused", schedule=schedule_name or kind)
        _log_unsubmitted_run(schedule_name, "refused", str(exc))
        return "refused"
    counters.count_event("schedule_submitted")
    return f"submitted {outcome.job.id}"


def _log_unsubmitted_run(schedule_name: str, event: str, reason: str) -> None:
    """A run that made no job, in its schedule's run history."""
    if schedule_name:
        counters.record_schedule_event(schedule_name, {"event": event, "at": timezone.now().timestamp(),
                                                       "reason": reason[:500]})
